//! ClickHouse as the query service reads it: this DC's servers in order (the
//! first that answers), as the read-only user, with a timeout; global reads
//! skip unavailable shards and report which datacenters did not answer.
//!
//! ClickHouse skips only shards it cannot connect to: a datacenter that
//! accepts connections but answers slowly (a congested link, an overloaded
//! server) would hold a global read until the query timeout and turn it
//! into an error. So a global read gets [`GLOBAL_SHARE`] of the timeout;
//! if it has no answer by then, the rest goes to the same read over this
//! datacenter alone, answered `partial` with every other DC `missing`.

use std::time::Duration;

use dc_config::schema::table;
use dc_config::schema::user::{QUERY_USER, SQL_USER};
use dc_config::services::{QueryConfig, QueryDatacenter};

use crate::error::{Error, Result};

/// Which datacenters a global read covered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Coverage {
    /// Datacenters none of whose shards answered.
    pub missing: Vec<String>,
    /// True when any shard of any datacenter did not answer.
    pub partial: bool,
}

impl Coverage {
    /// The coverage of an answer built from two reads: a DC missing from
    /// either is missing from the answer.
    pub fn either(a: Coverage, b: Coverage) -> Coverage {
        let mut missing = a.missing;
        for dc in b.missing {
            if !missing.contains(&dc) {
                missing.push(dc);
            }
        }
        Coverage {
            missing,
            partial: a.partial || b.partial,
        }
    }
}

/// Why one server gave no answer.
enum Attempt {
    /// ClickHouse raised an exception for the statement.
    Exception { code: u32, message: String },
    /// No answer: connection, timeout, or an unreadable reply.
    Failed(String),
}

/// The code of a ClickHouse exception text (`Code: 62, e.displayText() = …`).
fn exception_code(text: &str) -> Option<u32> {
    let rest = text.trim_start().strip_prefix("Code: ")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// The message of a ClickHouse exception text, without the code and the
/// `e.what()` suffix 18.16 appends.
fn exception_message(text: &str) -> String {
    let t = text.trim();
    let t = t.split_once("e.displayText() = ").map_or(t, |(_, m)| m);
    let t = t.strip_prefix("DB::Exception: ").unwrap_or(t);
    let t = t.rsplit_once(", e.what() = ").map_or(t, |(m, _)| m);
    t.trim().to_string()
}

/// Exception codes of a limit a statement went over: 158 rows to read,
/// 159 time, 160 too slow, 307 bytes, 396 result rows or bytes, 241 memory.
fn is_limit(code: u32) -> bool {
    matches!(code, 158 | 159 | 160 | 241 | 307 | 396)
}

/// Exception codes that say a server or shard could not be reached, not
/// that the statement is wrong: 209 socket timeout, 210 network error,
/// 279 all connection tries failed.
fn is_unavailable(code: u32) -> bool {
    matches!(code, 209 | 210 | 279)
}

/// Share of the query timeout (numerator, denominator) a global read may
/// take before this DC's own read replaces it: a local read takes tens of
/// milliseconds, so a third of the timeout is plenty for it.
pub const GLOBAL_SHARE: (u32, u32) = (2, 3);

/// This DC's ClickHouse servers, for reads.
pub struct ClickHouse {
    dc: String,
    servers: Vec<(String, clickhouse::Client)>,
    /// The same servers as the analysts' user ([`SQL_USER`]).
    analyst: Vec<(String, clickhouse::Client)>,
    database: String,
    datacenters: Vec<QueryDatacenter>,
    timeout: Duration,
}

impl ClickHouse {
    /// Clients for the servers of `config`, each request bounded by
    /// `timeout`, logged in with the passwords of the config's files.
    pub fn new(
        config: &QueryConfig,
        timeout: Duration,
    ) -> std::result::Result<Self, dc_config::credentials::CredentialError> {
        use dc_config::credentials::read_password;
        let query_password = read_password(&config.clickhouse_password_file)?;
        let sql_password = read_password(&config.sql_password_file)?;
        let clients = |user: &str, password: &str| {
            config
                .clickhouse
                .iter()
                .map(|url| {
                    let client = clickhouse::Client::default()
                        .with_url(url)
                        .with_user(user)
                        .with_password(password)
                        .with_validation(false)
                        .with_compression(clickhouse::Compression::None);
                    (url.clone(), client)
                })
                .collect()
        };
        Ok(Self {
            dc: config.dc.clone(),
            servers: clients(QUERY_USER, &query_password),
            analyst: clients(SQL_USER, &sql_password),
            database: config.database.clone(),
            datacenters: config.datacenters.clone(),
            timeout,
        })
    }

    /// This DC's name.
    pub fn dc(&self) -> &str {
        &self.dc
    }

    /// Every datacenter's name, in the config's order.
    pub fn datacenter_names(&self) -> impl Iterator<Item = &str> {
        self.datacenters.iter().map(|d| d.name.as_str())
    }

    /// The database holding Spoolhouse's tables.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Runs `sql` on the first server that answers; the raw body.
    pub async fn fetch(&self, sql: &str, settings: &[(&str, &str)]) -> Result<Vec<u8>> {
        self.fetch_within(sql, settings, self.timeout).await
    }

    /// [`ClickHouse::fetch`], each server given `timeout`.
    async fn fetch_within(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let mut last = String::from("no ClickHouse server configured");
        for (url, client) in &self.servers {
            match self.fetch_one(client, sql, settings, "TSV", timeout).await {
                Ok(body) => return Ok(body),
                Err(Attempt::Exception { code, message }) => {
                    last = format!("{url}: code {code}: {message}")
                }
                Err(Attempt::Failed(e)) => last = format!("{url}: {e}"),
            }
        }
        Err(Error::ClickHouse(last))
    }

    /// Runs a statement whose text the caller does not control (an
    /// analyst's SELECT) as the analysts' user ([`SQL_USER`], whose profile
    /// holds the limits) on the first server that answers, in `format`,
    /// within `timeout`. An exception
    /// ClickHouse raises for the statement is the caller's to fix and ends
    /// the attempt: [`Error::SqlLimit`] for a limit, [`Error::SqlFailed`]
    /// otherwise; only an unreachable server moves on to the next.
    pub async fn fetch_statement(
        &self,
        sql: &str,
        settings: &[(&str, &str)],
        format: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let mut last = String::from("no ClickHouse server configured");
        for (url, client) in &self.analyst {
            match self.fetch_one(client, sql, settings, format, timeout).await {
                Ok(body) => return Ok(body),
                Err(Attempt::Exception { code, message }) if !is_unavailable(code) => {
                    return Err(if is_limit(code) {
                        Error::SqlLimit { code, message }
                    } else {
                        Error::SqlFailed { code, message }
                    })
                }
                Err(Attempt::Exception { code, message }) => {
                    last = format!("{url}: code {code}: {message}")
                }
                Err(Attempt::Failed(e)) => last = format!("{url}: {e}"),
            }
        }
        Err(Error::ClickHouse(last))
    }

    /// One server's answer. The text goes as it is (`query_raw`): the
    /// client's `?` bind placeholders would otherwise rewrite `??` and
    /// refuse a lone `?` inside quoted values.
    async fn fetch_one(
        &self,
        client: &clickhouse::Client,
        sql: &str,
        settings: &[(&str, &str)],
        format: &str,
        timeout: Duration,
    ) -> std::result::Result<Vec<u8>, Attempt> {
        let mut q = client.query_raw(sql);
        for (k, v) in settings {
            q = q.with_setting(*k, *v);
        }
        let run = async {
            let mut cursor = q.fetch_bytes(format)?;
            cursor.collect().await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(Ok(body)) => Ok(body.to_vec()),
            Ok(Err(clickhouse::error::Error::BadResponse(text))) => match exception_code(&text) {
                Some(code) => Err(Attempt::Exception {
                    code,
                    message: exception_message(&text),
                }),
                None => Err(Attempt::Failed(text)),
            },
            Ok(Err(e)) => Err(Attempt::Failed(e.to_string())),
            Err(_) => Err(Attempt::Failed(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    /// A global read: `global_sql` with unavailable shards skipped, and
    /// beside it the coverage of that moment from the DC markers. When that
    /// gives no answer within [`GLOBAL_SHARE`] of the timeout, `local_sql`
    /// (the same read over this DC's tables) answers instead, with every
    /// other datacenter missing.
    pub async fn fetch_global(
        &self,
        global_sql: &str,
        local_sql: &str,
    ) -> Result<(Vec<u8>, Coverage)> {
        let budget = self.timeout * GLOBAL_SHARE.0 / GLOBAL_SHARE.1;
        match self.fetch_all_dcs(global_sql, budget).await {
            Err(Error::ClickHouse(why)) => {
                tracing::warn!(
                    error = %why,
                    budget_ms = budget.as_millis() as u64,
                    "global read unanswered; answering from this datacenter alone"
                );
                let body = self
                    .fetch_within(local_sql, &[], self.timeout - budget)
                    .await?;
                let missing = self
                    .datacenters
                    .iter()
                    .filter(|d| d.name != self.dc)
                    .map(|d| d.name.clone())
                    .collect();
                Ok((
                    body,
                    Coverage {
                        missing,
                        partial: true,
                    },
                ))
            }
            other => other,
        }
    }

    /// `sql` over every DC with unavailable shards skipped, and its
    /// coverage, within `timeout`.
    async fn fetch_all_dcs(&self, sql: &str, timeout: Duration) -> Result<(Vec<u8>, Coverage)> {
        let settings = [("skip_unavailable_shards", "1")];
        let marker_sql = format!(
            "SELECT dc, count() FROM {}.{} GROUP BY dc FORMAT TSV",
            self.database,
            table::DC_MARKER_ALL
        );
        // At the same time: each read costs round trips to every remote DC,
        // and one after the other would pay them twice.
        // One bound for the whole read: trying this DC's next server after
        // a slow remote DC held the first would only wait for it again.
        let both = async {
            tokio::try_join!(
                self.fetch_within(sql, &settings, timeout),
                self.fetch_within(&marker_sql, &settings, timeout)
            )
        };
        let (body, markers) = tokio::time::timeout(timeout, both).await.map_err(|_| {
            Error::ClickHouse(format!("no answer within {} ms", timeout.as_millis()))
        })??;
        let text = String::from_utf8_lossy(&markers);
        let answered = |dc: &str| -> usize {
            text.lines()
                .filter_map(|l| l.split_once('\t'))
                .find(|(d, _)| *d == dc)
                .and_then(|(_, n)| n.trim().parse().ok())
                .unwrap_or(0)
        };
        let mut coverage = Coverage::default();
        for dc in &self.datacenters {
            let n = answered(&dc.name);
            if n == 0 {
                coverage.missing.push(dc.name.clone());
            }
            if n < dc.shards {
                coverage.partial = true;
            }
        }
        Ok((body, coverage))
    }
}
