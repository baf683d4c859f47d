//! ClickHouse as the query service reads it: this DC's servers in order (the
//! first that answers), as the read-only user, with a timeout; global reads
//! skip unavailable shards and report which datacenters did not answer.

use std::time::Duration;

use dc_config::render::clickhouse::QUERY_USER;
use dc_config::render::ddl::table;
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

/// This DC's ClickHouse servers, for reads.
pub struct ClickHouse {
    servers: Vec<(String, clickhouse::Client)>,
    database: String,
    datacenters: Vec<QueryDatacenter>,
    timeout: Duration,
}

impl ClickHouse {
    /// Clients for the servers of `config`, each request bounded by `timeout`.
    pub fn new(config: &QueryConfig, timeout: Duration) -> Self {
        Self {
            servers: config
                .clickhouse
                .iter()
                .map(|url| {
                    let client = clickhouse::Client::default()
                        .with_url(url)
                        .with_user(QUERY_USER)
                        .with_validation(false)
                        .with_compression(clickhouse::Compression::None);
                    (url.clone(), client)
                })
                .collect(),
            database: config.database.clone(),
            datacenters: config.datacenters.clone(),
            timeout,
        }
    }

    /// The database holding Spoolhouse's tables.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Runs `sql` on the first server that answers; the raw body.
    pub async fn fetch(&self, sql: &str, settings: &[(&str, &str)]) -> Result<Vec<u8>> {
        let mut last = String::from("no ClickHouse server configured");
        for (url, client) in &self.servers {
            let mut q = client.query(sql);
            for (k, v) in settings {
                q = q.with_setting(*k, *v);
            }
            let run = async {
                let mut cursor = q.fetch_bytes("TSV")?;
                cursor.collect().await
            };
            match tokio::time::timeout(self.timeout, run).await {
                Ok(Ok(body)) => return Ok(body.to_vec()),
                Ok(Err(e)) => last = format!("{url}: {e}"),
                Err(_) => last = format!("{url}: no answer within {} ms", self.timeout.as_millis()),
            }
        }
        Err(Error::ClickHouse(last))
    }

    /// A global read: `sql` with unavailable shards skipped, then the
    /// coverage of that moment from the DC markers.
    pub async fn fetch_global(&self, sql: &str) -> Result<(Vec<u8>, Coverage)> {
        let settings = [("skip_unavailable_shards", "1")];
        let body = self.fetch(sql, &settings).await?;
        let markers = self
            .fetch(
                &format!(
                    "SELECT dc, count() FROM {}.{} GROUP BY dc FORMAT TSV",
                    self.database,
                    table::DC_MARKER_ALL
                ),
                &settings,
            )
            .await?;
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
