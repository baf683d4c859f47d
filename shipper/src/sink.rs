//! Inserting batches into this datacenter's ClickHouse: the choice of shard,
//! replica failover, the two guards against duplicates, and the sorting of
//! errors into "try again" and "blocked".
//!
//! Guard 1, block deduplication: each batch is inserted as one RowBinary
//! block into `events_local` (ReplicatedMergeTree) on one replica; the same
//! block sent again is dropped by ClickHouse, for the last
//! `replicated_deduplication_window` blocks (100 on 18.16).
//! Guard 2, position check: before a batch is sent again (a replay after a
//! restart, or a retry after an answer that never came), the shipper asks
//! the replicas the batch may have reached which of its spool positions they
//! already hold and sends only the others — this one needs no window. It is
//! exact only if no earlier attempt can still land after the question, and a
//! killed shipper's insert can: ClickHouse finishes it (18.16 even commits a
//! body cut short at a row boundary), possibly after the answer. So rows go
//! through `events_ingest`, whose view drops rows of an epoch below the
//! host's fence; before the question the shipper raises the fence on those
//! replicas and waits until none of its inserts runs there
//! (docs/adr/0009-fenced-inserts.md).

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use dc_config::schema::column::{EVENT_COLUMNS, INGEST_COLUMNS};
use dc_config::schema::table;
use dc_config::services::{InsertCompression, ShipperConfig};
use dc_config::sql::quote_str;

use crate::error::{Error, Result};
use crate::wire::BatchRange;

/// Whose earlier inserts a position check waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// This sink's host's: a direct shipper is the only writer of its rows.
    Host,
    /// Every writer of the DC (shippers and relays): a relay's takeover,
    /// since any relay may have written the host's rows (docs/adr/0017).
    Dc,
}

/// ClickHouse error codes that retrying the same request cannot fix: the
/// schema is missing or different, the data was refused, or the user may
/// not write. A batch hitting one is *blocked*: retried slowly, never skipped.
const BLOCKING_CODES: &[(u32, &str)] = &[
    (16, "schema"),    // NO_SUCH_COLUMN_IN_TABLE
    (60, "schema"),    // UNKNOWN_TABLE
    (81, "schema"),    // UNKNOWN_DATABASE
    (53, "rejected"),  // TYPE_MISMATCH
    (27, "rejected"),  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    (62, "rejected"),  // SYNTAX_ERROR
    (117, "rejected"), // INCORRECT_DATA
    (115, "rejected"), // UNKNOWN_SETTING
    (164, "auth"),     // READONLY
    (192, "auth"),     // UNKNOWN_USER
    (193, "auth"),     // WRONG_PASSWORD
    (497, "auth"),     // ACCESS_DENIED
    (516, "auth"),     // AUTHENTICATION_FAILED
];

/// The ClickHouse error code in an error text (`Code: 60, …`).
pub fn error_code(text: &str) -> Option<u32> {
    let at = text.find("Code: ")? + 6;
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Sorts a client error into retriable or blocking, with a metric label.
fn classify(url: &str, e: clickhouse::error::Error) -> Error {
    use clickhouse::error::Error as E;
    let message = e.to_string();
    let unsent = matches!(&e, E::Network(inner) if refused(inner.as_ref()));
    let (retriable, kind) = match &e {
        E::Network(_) => (true, "network"),
        E::TimedOut => (true, "timeout"),
        E::BadResponse(text) => match error_code(text)
            .and_then(|c| BLOCKING_CODES.iter().find(|(code, _)| *code == c))
        {
            Some((_, kind)) => (false, *kind),
            None => (true, "server"),
        },
        _ => (true, "client"),
    };
    Error::ClickHouse {
        url: url.to_string(),
        message,
        retriable,
        kind,
        unsent,
    }
}

/// Whether a network error is a refused connection: the request never
/// reached a server, so it cannot land later.
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

struct Shard {
    weight: u32,
    replicas: Vec<(String, clickhouse::Client)>,
}

/// The first ClickHouse release with the `insert_deduplication_token` setting.
pub const DEDUP_TOKEN_SINCE: (u32, u32) = (22, 2);

/// `(major, minor)` of a `SELECT version()` answer such as `18.16.1`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The deduplication token of a batch body: its spool range and a checksum
/// (`rows_crc`, CRC32 of the rows' `events_local` bytes, epochs left out) of
/// the exact rows sent, so a replay of the same rows is dropped and a replay
/// of fewer rows (after the position check) is not.
pub fn dedup_token(
    dc: &str,
    host: &str,
    start: spooler::Position,
    end: spooler::Position,
    rows_crc: u32,
) -> String {
    format!(
        "{dc}/{host}/{}:{}-{}:{}/{:08x}",
        start.segment, start.offset, end.segment, end.offset, rows_crc
    )
}

/// What one insert sends.
pub struct IngestBody {
    /// The batch's spool range.
    pub range: (spooler::Position, spooler::Position),
    /// The epoch after every row.
    pub epoch: u64,
    /// RowBinary rows in [`INGEST_COLUMNS`].
    pub rows: Bytes,
    /// CRC32 of the rows without their epochs (the deduplication token's).
    pub rows_crc: u32,
}

/// Where a sink writes, and as which writer: an app host's shipper (its
/// host) or a relay (its name, docs/adr/0017).
#[derive(Debug, Clone, Copy)]
pub struct SinkTarget<'a> {
    /// Datacenter.
    pub dc: &'a str,
    /// The writer: its inserts' `query_id` prefix is `spoolhouse/insert/DC/WRITER/`.
    pub writer: &'a str,
    /// ClickHouse database.
    pub database: &'a str,
    /// The DC's shards.
    pub shards: &'a [dc_config::services::ShardTarget],
    /// Compression of insert bodies.
    pub compression: InsertCompression,
    /// Timeout of one request.
    pub timeout_ms: u64,
}

impl<'a> SinkTarget<'a> {
    /// A shipper's target: its host writes.
    pub fn of(config: &'a ShipperConfig) -> Self {
        Self {
            dc: &config.dc,
            writer: &config.host,
            database: &config.database,
            shards: &config.shards,
            compression: config.compression,
            timeout_ms: config.limits.clickhouse_timeout_ms,
        }
    }
}

/// This datacenter's shards, as the shipper writes to them.
pub struct Sink {
    shards: Vec<Shard>,
    total_weight: u64,
    database: String,
    dc: String,
    host: String,
    timeout: Duration,
    /// Per (shard, replica): whether the server knows `insert_deduplication_token`.
    token_support: std::sync::Mutex<std::collections::HashMap<(usize, usize), bool>>,
    /// Per (shard, replica): `events_local`'s path in ZooKeeper for that
    /// replica (`system.replicas.replica_path`).
    replica_paths: std::sync::Mutex<std::collections::HashMap<(usize, usize), String>>,
}

/// A stable 64-bit mix (SplitMix64's finaliser): the shard of a batch must
/// not depend on the process, the Rust version or a random seed.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Sink {
    /// A sink for the shards of `config`, logged in as ClickHouse's writer
    /// with the password in `config.clickhouse_password_file`.
    pub fn new(config: &ShipperConfig) -> Result<Self> {
        Self::open(SinkTarget::of(config), &config.clickhouse_password_file)
    }

    /// A sink for `target`, logged in as ClickHouse's writer with the
    /// password in `password_file`.
    pub fn open(target: SinkTarget<'_>, password_file: &std::path::Path) -> Result<Self> {
        let password = dc_config::credentials::read_password(password_file)
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Self::for_target(target, &password))
    }

    /// A sink for the shards of `config`, logged in as ClickHouse's writer
    /// with `password`.
    pub fn with_password(config: &ShipperConfig, password: &str) -> Self {
        Self::for_target(SinkTarget::of(config), password)
    }

    /// A sink for `target`, logged in as ClickHouse's writer with `password`.
    pub fn for_target(target: SinkTarget<'_>, password: &str) -> Self {
        let timeout = Duration::from_millis(target.timeout_ms);
        let shards: Vec<Shard> = target
            .shards
            .iter()
            .map(|s| Shard {
                weight: s.weight,
                replicas: s
                    .replicas
                    .iter()
                    .map(|url| {
                        // 18.16 knows neither RowBinaryWithNamesAndTypes nor the
                        // settings schema validation asks for: turn it off.
                        let client = clickhouse::Client::default()
                            .with_url(url)
                            .with_user(dc_config::schema::user::WRITER_USER)
                            .with_password(password)
                            .with_validation(false)
                            .with_compression(match target.compression {
                                InsertCompression::None => clickhouse::Compression::None,
                                InsertCompression::Lz4 => clickhouse::Compression::Lz4,
                            });
                        (url.clone(), client)
                    })
                    .collect(),
            })
            .collect();
        Self {
            total_weight: shards.iter().map(|s| u64::from(s.weight)).sum(),
            shards,
            database: target.database.to_string(),
            dc: target.dc.to_string(),
            host: target.writer.to_string(),
            timeout,
            token_support: std::sync::Mutex::new(std::collections::HashMap::new()),
            replica_paths: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Whether the replica knows `insert_deduplication_token` (asked once;
    /// an unanswered question counts as no: the 18.16 path, block hashes).
    async fn supports_token(&self, shard: usize, replica: usize) -> bool {
        if let Some(known) = self
            .token_support
            .lock()
            .expect("token lock")
            .get(&(shard, replica))
        {
            return *known;
        }
        let Ok(body) = self
            .query_text(shard, replica, "SELECT version() FORMAT TSV")
            .await
        else {
            return false;
        };
        let supported = parse_version(&body).is_some_and(|v| v >= DEDUP_TOKEN_SINCE);
        self.token_support
            .lock()
            .expect("token lock")
            .insert((shard, replica), supported);
        supported
    }

    async fn query_text(&self, shard: usize, replica: usize, sql: &str) -> Result<String> {
        let url = self.url(shard, replica).to_string();
        let fetch = async {
            let mut c = self.client(shard, replica).query(sql).fetch_bytes("TSV")?;
            c.collect().await
        };
        let body = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| classify(&url, clickhouse::error::Error::TimedOut))?
            .map_err(|e| classify(&url, e))?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// The shard a batch starting at `start` goes to: a weighted choice that
    /// is a pure function of the batch, so a replay goes where the original went.
    pub fn shard_for(&self, start: spooler::Position) -> usize {
        let h = mix(start.segment.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ start.offset);
        let mut pick = h % self.total_weight.max(1);
        for (i, s) in self.shards.iter().enumerate() {
            if pick < u64::from(s.weight) {
                return i;
            }
            pick -= u64::from(s.weight);
        }
        unreachable!("pick < total weight")
    }

    /// The replica of `shard` that attempt `attempt` of the batch starting
    /// at `start` goes to: the first attempts of batches spread over the
    /// replicas (a pure function of the batch, so a replay starts where the
    /// original did), the next ones go round the others.
    pub fn replica_for(&self, shard: usize, start: spooler::Position, attempt: u32) -> usize {
        let n = self.replicas(shard) as u64;
        let first = mix(mix(start.segment ^ start.offset.rotate_left(32)) ^ 0x5bd1_e995) % n;
        ((first + u64::from(attempt)) % n) as usize
    }

    /// The shards' weights, in order.
    pub fn weights(&self) -> Vec<u32> {
        self.shards.iter().map(|s| s.weight).collect()
    }

    /// Runs a statement that returns nothing (e.g. `INSERT … SELECT`) on one replica.
    pub async fn execute(&self, shard: usize, replica: usize, sql: &str) -> Result<()> {
        let url = self.url(shard, replica).to_string();
        tokio::time::timeout(
            self.timeout,
            self.client(shard, replica).query(sql).execute(),
        )
        .await
        .map_err(|_| classify(&url, clickhouse::error::Error::TimedOut))?
        .map_err(|e| classify(&url, e))
    }

    /// Runs a query returning one number on one replica.
    pub async fn query_u64(&self, shard: usize, replica: usize, sql: &str) -> Result<u64> {
        let body = self.query_text(shard, replica, sql).await?;
        body.trim().parse().map_err(|_| Error::ClickHouse {
            url: self.url(shard, replica).to_string(),
            message: format!("expected a number, got {body:?}"),
            retriable: true,
            kind: "server",
            unsent: false,
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Number of replicas of `shard`.
    pub fn replicas(&self, shard: usize) -> usize {
        self.shards[shard].replicas.len()
    }

    /// URL of replica `replica` of `shard`.
    pub fn url(&self, shard: usize, replica: usize) -> &str {
        &self.shards[shard].replicas[replica].0
    }

    fn client(&self, shard: usize, replica: usize) -> &clickhouse::Client {
        &self.shards[shard].replicas[replica].1
    }

    /// The `query_id` prefix of every insert of this shipper: what
    /// [`Sink::inserts_running`] looks for. `/` cannot occur in a DC or host
    /// name, so no other host's prefix starts with this one.
    fn insert_id_prefix(&self) -> String {
        format!("spoolhouse/insert/{}/{}/", self.dc, self.host)
    }

    /// Inserts RowBinary `rows` (columns as [`INGEST_COLUMNS`]: each row
    /// ends in the shipper's epoch) into `events_ingest` on one replica,
    /// whose view passes them on to `events_local` unless the host is fenced
    /// above `epoch`. `deduplicate` is on in service; tests turn it off to
    /// show the position check alone keeps replays single.
    pub async fn insert(
        &self,
        shard: usize,
        replica: usize,
        body: IngestBody,
        deduplicate: bool,
    ) -> Result<()> {
        let IngestBody {
            range,
            epoch,
            rows,
            rows_crc,
        } = body;
        let url = self.url(shard, replica).to_string();
        let sql = format!(
            "INSERT INTO {}.{} ({INGEST_COLUMNS}) FORMAT RowBinary",
            self.database,
            table::EVENTS_INGEST
        );
        let query_id = format!(
            "{}{epoch}/{}:{}",
            self.insert_id_prefix(),
            range.0.segment,
            range.0.offset
        );
        let mut insert = self
            .client(shard, replica)
            .insert_formatted_with(sql)
            .with_setting("query_id", query_id)
            .with_setting("insert_deduplicate", if deduplicate { "1" } else { "0" })
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        // Newer servers take an explicit token; 18.16 hashes the block. The
        // token covers the rows without their epoch, as the block the view
        // writes does.
        if deduplicate && self.supports_token(shard, replica).await {
            let token = dedup_token(&self.dc, &self.host, range.0, range.1, rows_crc);
            insert = insert.with_setting("insert_deduplication_token", token);
        }
        insert.send(rows).await.map_err(|e| classify(&url, e))?;
        insert.end().await.map_err(|e| classify(&url, e))
    }

    /// Raises `host`'s fence on one replica to `below`: from the moment
    /// this returns, an insert of `host`'s rows with an epoch under `below`
    /// that reaches the replica stores nothing. Returns the replica's fence
    /// for the host, which is above `below` only if some writer of the host
    /// used a higher epoch (state lost and the clock set back): the caller
    /// then raises its epoch above it. (A direct shipper fences its own host;
    /// a relay, the host of a session it takes over: docs/adr/0017.)
    pub async fn fence(&self, shard: usize, replica: usize, host: &str, below: u64) -> Result<u64> {
        let (dc, host) = (quote_str(&self.dc), quote_str(host));
        let db = &self.database;
        let fences = table::SHIPPER_FENCES;
        self.execute(
            shard,
            replica,
            &format!("INSERT INTO {db}.{fences} (dc, host, below) VALUES ({dc}, {host}, {below})"),
        )
        .await?;
        self.query_u64(
            shard,
            replica,
            &format!("SELECT max(below) FROM {db}.{fences} WHERE dc = {dc} AND host = {host}"),
        )
        .await
    }

    /// Step 1 of a position check (docs/adr/0009-fenced-inserts.md, 0017):
    /// raises `host`'s fence to `epoch` on each of `replicas` (shard,
    /// replica). Returns the highest fence any of them holds: above
    /// `epoch`, someone fenced the host higher, and the check needs a
    /// higher epoch.
    pub async fn fence_all(
        &self,
        replicas: &[(usize, usize)],
        host: &str,
        epoch: u64,
    ) -> Result<u64> {
        let mut above = 0;
        for &(s, r) in replicas {
            above = above.max(self.fence(s, r, host, epoch).await?);
        }
        Ok(above)
    }

    /// The `query_id`s of the `writers`' inserts (any epoch, from any run)
    /// the replica is executing right now.
    async fn running_inserts(
        &self,
        shard: usize,
        replica: usize,
        writers: Writers,
    ) -> Result<Vec<String>> {
        let prefix = match writers {
            Writers::Host => self.insert_id_prefix(),
            Writers::Dc => format!("spoolhouse/insert/{}/", self.dc),
        };
        let body = self
            .query_text(
                shard,
                replica,
                &format!(
                    "SELECT query_id FROM system.processes WHERE startsWith(query_id, {}) FORMAT TSV",
                    quote_str(&prefix)
                ),
            )
            .await?;
        Ok(body.lines().map(str::to_string).collect())
    }

    /// Steps 2 and 3 of a position check, on one replica, after the fence:
    /// waits until every insert of `writers` running now has ended (one
    /// that started before the fence has landed or failed; one that
    /// reaches the replica after it stores nothing), then reads which
    /// positions of `range` of `host` the replica holds. Gives up after
    /// `timeout`, or when `stopping`, with a retriable error.
    #[allow(clippy::too_many_arguments)]
    pub async fn held_after_earlier_inserts(
        &self,
        shard: usize,
        replica: usize,
        writers: Writers,
        host: &str,
        range: &BatchRange,
        timeout: Duration,
        stopping: &(dyn Fn() -> bool + Sync),
    ) -> Result<HashSet<(u64, u64)>> {
        let before: HashSet<String> = self
            .running_inserts(shard, replica, writers)
            .await?
            .into_iter()
            .collect();
        let since = std::time::Instant::now();
        while !before.is_empty() {
            let now = self.running_inserts(shard, replica, writers).await?;
            let left = now.iter().filter(|q| before.contains(*q)).count();
            if left == 0 {
                break;
            }
            if since.elapsed() > timeout || stopping() {
                return Err(Error::ClickHouse {
                    url: self.url(shard, replica).to_string(),
                    message: format!("{left} insert(s) running before the fence still run after {timeout:?}; the position check waits for them"),
                    retriable: true,
                    kind: "fence",
                    unsent: true,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if range.events.is_empty() || range.start >= range.end {
            return Ok(HashSet::new());
        }
        self.held_positions(shard, replica, host, range).await
    }

    /// `events_local`'s replica path in ZooKeeper on this replica.
    async fn replica_path(&self, shard: usize, replica: usize) -> Result<String> {
        if let Some(p) = self
            .replica_paths
            .lock()
            .expect("replica paths lock")
            .get(&(shard, replica))
        {
            return Ok(p.clone());
        }
        let sql = format!(
            "SELECT replica_path FROM system.replicas WHERE database = {} AND table = {} FORMAT TSV",
            quote_str(&self.database),
            quote_str(table::EVENTS_LOCAL)
        );
        let path = self
            .query_text(shard, replica, &sql)
            .await?
            .trim()
            .to_string();
        if path.is_empty() {
            return Err(Error::ClickHouse {
                url: self.url(shard, replica).to_string(),
                message: format!(
                    "{}.{} is not a replicated table here; apply the schema (spoolhouse config render, ddl/<dc>.sql)",
                    self.database,
                    table::EVENTS_LOCAL
                ),
                retriable: true,
                kind: "schema",
                unsent: false,
            });
        }
        self.replica_paths
            .lock()
            .expect("replica paths lock")
            .insert((shard, replica), path.clone());
        Ok(path)
    }

    /// Which spool positions in `[start, end)` of this DC's `host` the replica
    /// already holds, looking only at the given event types and time range
    /// (which the primary key `(event, time, …)` narrows down).
    ///
    /// Only rows of parts committed to ZooKeeper count. An insert that lost
    /// its ZooKeeper connection while committing ("Unknown status, client
    /// must retry", code 319) leaves its part visible on the replica while
    /// whether ZooKeeper took it is unknown; if it did not, the replica's
    /// part check later removes the part. Counting those rows as held lost
    /// them (a rolling restart of ZooKeeper, 200 rows). ZooKeeper's answer is
    /// final: the commit is one atomic multi-operation.
    async fn held_positions(
        &self,
        shard: usize,
        replica: usize,
        host: &str,
        range: &BatchRange,
    ) -> Result<HashSet<(u64, u64)>> {
        let (start, end, time_range) = (range.start, range.end, range.time_range);
        let url = self.url(shard, replica).to_string();
        let parts = format!("{}/parts", self.replica_path(shard, replica).await?);
        let events: Vec<String> = range.events.iter().map(|e| quote_str(e)).collect();
        let sql = format!(
            "SELECT spool_segment, spool_offset FROM {}.{} \
             WHERE dc = {} AND host = {} AND event IN ({}) AND time BETWEEN {} AND {} \
             AND spool_segment BETWEEN {} AND {} \
             AND _part IN (SELECT name FROM system.zookeeper WHERE path = {}) FORMAT TSV",
            self.database,
            table::EVENTS_LOCAL,
            quote_str(&self.dc),
            quote_str(host),
            events.join(", "),
            time_range.0,
            time_range.1,
            start.segment,
            end.segment,
            quote_str(&parts),
        );
        let fetch = async {
            let mut cursor = self.client(shard, replica).query(&sql).fetch_bytes("TSV")?;
            cursor.collect().await
        };
        let body = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| classify(&url, clickhouse::error::Error::TimedOut))?
            .map_err(|e| classify(&url, e))?;
        let text = String::from_utf8_lossy(&body);
        let mut held = HashSet::new();
        for line in text.lines() {
            let mut parts = line.split('\t');
            let (Some(s), Some(o)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(s), Ok(o)) = (s.parse::<u64>(), o.parse::<u64>()) else {
                continue;
            };
            let p = spooler::Position::new(s, o);
            if p >= start && p < end {
                held.insert((s, o));
            }
        }
        Ok(held)
    }

    /// Proves the insert path of every replica, not merely that a server
    /// answers: `events_ingest` exists with exactly the columns the shipper
    /// writes, in order, and so do its view into `events_local`, that table
    /// and the fence table (without the view an insert would succeed and
    /// store nothing). Returns the problems the replicas' answers show, and
    /// apart, the replicas that gave no answer (unreachable, timed out,
    /// refused): not a schema problem, a question to ask again.
    pub async fn check_schema(&self) -> SchemaCheck {
        let want_ingest: Vec<&str> = INGEST_COLUMNS.split(", ").collect();
        let want_local: Vec<&str> = EVENT_COLUMNS.split(", ").collect();
        let needed = [
            table::EVENTS_INGEST_MV,
            table::SHIPPER_FENCES,
            table::EVENTS_LOCAL,
        ];
        let sql = format!(
            "SELECT table, name FROM system.columns WHERE database = {db} AND table IN ({}, {}) \
             UNION ALL SELECT name, '' FROM system.tables WHERE database = {db} AND name IN ({}) FORMAT TSV",
            quote_str(table::EVENTS_INGEST),
            quote_str(table::EVENTS_LOCAL),
            needed.map(quote_str).join(", "),
            db = quote_str(&self.database),
        );
        let mut problems = Vec::new();
        let mut unanswered = Vec::new();
        for (s, shard) in self.shards.iter().enumerate() {
            for (url, client) in &shard.replicas {
                let got = async {
                    let mut c = client.query(&sql).fetch_bytes("TSV")?;
                    c.collect().await
                };
                let at = format!("shard {} replica {url}", s + 1);
                let body = match tokio::time::timeout(self.timeout, got).await {
                    Ok(Ok(body)) => body,
                    Ok(Err(e)) => {
                        unanswered.push(format!("{at}: {e}"));
                        continue;
                    }
                    Err(_) => {
                        unanswered.push(format!("{at}: no answer within {:?}", self.timeout));
                        continue;
                    }
                };
                problems.extend(schema_problems(
                    &at,
                    &self.database,
                    &String::from_utf8_lossy(&body),
                    &needed,
                    &[
                        (table::EVENTS_INGEST, &want_ingest),
                        (table::EVENTS_LOCAL, &want_local),
                    ],
                ));
            }
        }
        SchemaCheck {
            problems,
            unanswered,
        }
    }
}

/// What one [`Sink::check_schema`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaCheck {
    /// Problems in the answers: a table or column missing or different.
    pub problems: Vec<String>,
    /// Replicas that did not answer, and why.
    pub unanswered: Vec<String>,
}

impl SchemaCheck {
    /// Every replica answered and none showed a problem: nothing to check again.
    pub fn settled(&self) -> bool {
        self.problems.is_empty() && self.unanswered.is_empty()
    }
}

/// The problems in one replica's answer to the schema question: `(table,
/// column)` lines for the tables in `columns`, `(name, "")` for each table
/// of `needed` that exists.
fn schema_problems(
    at: &str,
    db: &str,
    answer: &str,
    needed: &[&str],
    columns: &[(&str, &[&str])],
) -> Vec<String> {
    let lines: Vec<(&str, &str)> = answer.lines().filter_map(|l| l.split_once('\t')).collect();
    let mut problems = Vec::new();
    for name in needed {
        if !lines.iter().any(|(t, c)| t == name && c.is_empty()) {
            problems.push(format!(
                "{at}: {db}.{name} is missing; apply the schema from `spoolhouse config render`"
            ));
        }
    }
    for (table, want) in columns {
        let got: Vec<&str> = lines
            .iter()
            .filter(|(t, c)| t == table && !c.is_empty())
            .map(|(_, c)| *c)
            .collect();
        if got != *want {
            problems.push(format!(
                "{at}: {db}.{table} has columns [{}], the shipper needs [{}]; apply the schema from `spoolhouse config render`",
                got.join(", "),
                want.join(", ")
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_tokens() {
        assert_eq!(parse_version("18.16.1\n"), Some((18, 16)));
        assert_eq!(parse_version("24.3.5.47"), Some((24, 3)));
        assert!(parse_version("18.16.1").unwrap() < DEDUP_TOKEN_SINCE);
        assert!(parse_version("22.2.1").unwrap() >= DEDUP_TOKEN_SINCE);
        assert_eq!(parse_version("x"), None);
        let (a, b) = (
            spooler::Position::new(3, 32),
            spooler::Position::new(3, 900),
        );
        let t = dedup_token("dc1", "h", a, b, 7);
        assert_eq!(t, dedup_token("dc1", "h", a, b, 7));
        assert_ne!(t, dedup_token("dc1", "h", a, b, 8));
        assert!(t.starts_with("dc1/h/3:32-3:900/"));
    }

    #[test]
    fn schema_answers_are_read() {
        let cols = [("t", &["a", "b"][..])];
        let ok = "t\ta\nt\tb\nmv\t\n";
        assert!(schema_problems("r", "db", ok, &["mv"], &cols).is_empty());
        let p = schema_problems("r", "db", "t\ta\n", &["mv"], &cols);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("db.mv is missing"), "{p:?}");
        assert!(
            p[1].contains("has columns [a], the shipper needs [a, b]"),
            "{p:?}"
        );
    }

    #[test]
    fn finds_error_codes() {
        assert_eq!(
            error_code(
                "bad response: Code: 60, e.displayText() = DB::Exception: Table x doesn't exist"
            ),
            Some(60)
        );
        assert_eq!(
            error_code("Code: 242, e.displayText() = Table is in readonly mode"),
            Some(242)
        );
        assert_eq!(error_code("connection refused"), None);
    }

    #[test]
    fn classifies_errors() {
        let e = classify("u", clickhouse::error::Error::BadResponse("Code: 60, e.displayText() = DB::Exception: Table spoolhouse.events_local doesn't exist".into()));
        assert!(!e.retriable());
        assert_eq!(e.kind(), "schema");
        let e = classify(
            "u",
            clickhouse::error::Error::BadResponse(
                "Code: 242, e.displayText() = DB::Exception: Table is in readonly mode".into(),
            ),
        );
        assert!(e.retriable());
        assert_eq!(e.kind(), "server");
        let e = classify("u", clickhouse::error::Error::TimedOut);
        assert!(e.retriable());
        assert_eq!(e.kind(), "timeout");
    }

    fn sink(weights: &[u32]) -> Sink {
        let mut cfg = ShipperConfig::for_dc(
            &dc_config::examples::declared().topology,
            &dc_config::examples::declared().topology.datacenter[0],
        );
        cfg.shards = weights
            .iter()
            .map(|&w| dc_config::services::ShardTarget {
                weight: w,
                replicas: vec!["http://127.0.0.1:1".into()],
            })
            .collect();
        Sink::with_password(&cfg, "unused")
    }

    #[test]
    fn first_attempts_spread_over_replicas() {
        let mut s = sink(&[1]);
        let twin = s.shards[0].replicas[0].clone();
        s.shards[0].replicas.push(twin);
        let mut firsts = [0u32; 2];
        for off in (32..64_000u64).step_by(320) {
            let p = spooler::Position::new(3, off);
            let r = s.replica_for(0, p, 0);
            assert_eq!(r, s.replica_for(0, p, 0));
            assert_ne!(r, s.replica_for(0, p, 1), "a retry tries the other replica");
            assert_eq!(r, s.replica_for(0, p, 2));
            firsts[r] += 1;
        }
        assert!(firsts[0] > 50 && firsts[1] > 50, "{firsts:?}");
    }

    #[test]
    fn shard_choice_is_stable_and_weighted() {
        let s = sink(&[1, 3]);
        let mut counts = [0u32; 2];
        for seg in 1..50u64 {
            for off in (32..32_000u64).step_by(320) {
                let p = spooler::Position::new(seg, off);
                let a = s.shard_for(p);
                assert_eq!(a, s.shard_for(p));
                counts[a] += 1;
            }
        }
        let share = f64::from(counts[1]) / f64::from(counts[0] + counts[1]);
        assert!((0.70..0.80).contains(&share), "weight 3 of 4 got {share}");
    }
}
