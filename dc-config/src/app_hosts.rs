//! A datacenter's app hosts: the fleet of machines that each run a collector
//! and a shipper over their own spool.
//!
//! A DC names its hosts in `hosts`, each entry a name or a range
//! (`dc1-app[001:400]`: 400 names, zero-padded as the first bound is);
//! the DC's `collector`, `spool` and `shipper` tables are every host's
//! defaults, and `[[datacenter.app_host]]` overrides any of their keys for
//! one host. `{host}` in a default path is that host's name, so hosts
//! sharing a machine (the local launcher's) get folders of their own.
//!
//! ```toml
//! hosts = ["dc1-app[001:400]", "dc1-batch1"]
//! collector = { tcp = "127.0.0.1:7101", socket = "/run/spoolhouse/collector.sock", inbox = "/var/lib/spoolhouse/inbox", admin = "0.0.0.0:7102" }
//! spool = { dir = "/var/lib/spoolhouse/spool", quota_bytes = 10737418240 }
//! shipper = { admin = "0.0.0.0:7103" }
//!
//! [[datacenter.app_host]]
//! name = "dc1-batch1"
//! spool = { quota_bytes = 107374182400 }
//! ```
//!
//! A topology of one host may still say `host = "dc1-app1"`, as before fleets.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::topology::{Collector, Datacenter, Shipper, Spool};

/// Most app hosts one range may name.
pub const MAX_RANGE_HOSTS: u64 = 10_000;
/// Most app hosts of one datacenter.
pub const MAX_APP_HOSTS: usize = 10_000;
/// The placeholder for the host's name in a default path.
pub const HOST_PLACEHOLDER: &str = "{host}";

/// Per-host overrides of the DC's defaults: any key of `collector`,
/// `spool` or `shipper`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostOverride {
    /// The app host (one of the names `hosts` gives).
    pub name: String,
    /// Keys of the collector table to replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<toml::Table>,
    /// Keys of the spool table to replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<toml::Table>,
    /// Keys of the shipper table to replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipper: Option<toml::Table>,
}

impl HostOverride {
    /// Whether this override sets `key` of `section` (`collector`, `spool`
    /// or `shipper`): where a rule broken by that value is located.
    pub fn sets(&self, section: &str, key: &str) -> bool {
        let table = match section {
            "collector" => &self.collector,
            "spool" => &self.spool,
            "shipper" => &self.shipper,
            _ => &None,
        };
        table.as_ref().is_some_and(|t| t.contains_key(key))
    }
}

/// One app host with its defaults and overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct AppHost {
    /// Host name: recorded in each event's `host` column and in the spool
    /// position of every event it ships.
    pub name: String,
    /// Where its collector listens.
    pub collector: Collector,
    /// Its spool.
    pub spool: Spool,
    /// Where its shipper serves its admin endpoints.
    pub shipper: Shipper,
    /// Index of its `[[datacenter.app_host]]` entry, if it has one.
    pub overridden: Option<usize>,
}

/// Why a `hosts` entry names no hosts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not `prefix[FIRST:LAST]suffix` with decimal bounds.
    #[error("a range is written `prefix[FIRST:LAST]suffix` with decimal bounds, e.g. `dc1-app[001:400]`")]
    Syntax,
    /// The last bound is below the first.
    #[error("the range ends before it starts ({0} > {1})")]
    Backwards(u64, u64),
    /// Too many names.
    #[error("a range names at most {MAX_RANGE_HOSTS} hosts; this one names {0}")]
    TooLong(u64),
}

/// The names one `hosts` entry stands for: itself, or each name of its
/// range. `dc1-app[001:003]` is `dc1-app001`, `dc1-app002`, `dc1-app003`;
/// `dc1-app[8:10]` is `dc1-app8`, `dc1-app9`, `dc1-app10`.
pub fn expand(entry: &str) -> Result<Vec<String>, RangeError> {
    let Some(open) = entry.find('[') else {
        return if entry.contains(']') {
            Err(RangeError::Syntax)
        } else {
            Ok(vec![entry.to_string()])
        };
    };
    let close = entry[open..]
        .find(']')
        .map(|c| open + c)
        .ok_or(RangeError::Syntax)?;
    let (prefix, suffix) = (&entry[..open], &entry[close + 1..]);
    if suffix.contains(['[', ']']) {
        return Err(RangeError::Syntax);
    }
    let (first, last) = entry[open + 1..close]
        .split_once(':')
        .ok_or(RangeError::Syntax)?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(first) || !digits(last) {
        return Err(RangeError::Syntax);
    }
    let (a, b): (u64, u64) = (first.parse().unwrap_or(0), last.parse().unwrap_or(0));
    if b < a {
        return Err(RangeError::Backwards(a, b));
    }
    if b - a + 1 > MAX_RANGE_HOSTS {
        return Err(RangeError::TooLong(b - a + 1));
    }
    // `001` pads to three digits; `1` does not pad.
    let width = if first.starts_with('0') {
        first.len()
    } else {
        0
    };
    Ok((a..=b)
        .map(|n| format!("{prefix}{n:0width$}{suffix}"))
        .collect())
}

/// True for a usable host name: letters, digits, `.`, `-` and `_`, 1 to
/// 255 bytes (it is a file name in rendered folders and a ZooKeeper node).
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A problem found while resolving a DC's hosts: where (`hosts[i]` or
/// `app_host[i]` and a key under it) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProblem {
    /// Path under the datacenter, e.g. `["app_host", "2", "spool"]`.
    pub at: Vec<String>,
    /// What is wrong and what to do.
    pub rule: String,
}

impl Datacenter {
    /// Every app host name, in declaration order, and the problems of
    /// entries that name none (a bad range, both `host` and `hosts`).
    pub fn host_names(&self) -> (Vec<String>, Vec<HostProblem>) {
        let mut names = Vec::new();
        let mut problems = Vec::new();
        if let Some(h) = &self.host {
            if !self.hosts.is_empty() {
                problems.push(HostProblem {
                    at: vec!["host".into()],
                    rule: "give either `host` (one app host) or `hosts` (a list), not both".into(),
                });
            }
            names.push(h.clone());
        }
        for (i, entry) in self.hosts.iter().enumerate() {
            match expand(entry) {
                Ok(n) => names.extend(n),
                Err(e) => problems.push(HostProblem {
                    at: vec!["hosts".into(), i.to_string()],
                    rule: e.to_string(),
                }),
            }
        }
        (names, problems)
    }

    /// Every app host with the DC's defaults and its overrides applied, and
    /// the problems found doing so (an override of an unknown host or key,
    /// a value of the wrong type). A checked topology has none.
    pub fn resolve_app_hosts(&self) -> (Vec<AppHost>, Vec<HostProblem>) {
        let (names, mut problems) = self.host_names();
        let mut by_name: std::collections::HashMap<&str, usize> = Default::default();
        for (i, o) in self.app_host.iter().enumerate() {
            if !names.contains(&o.name) {
                problems.push(HostProblem {
                    at: vec!["app_host".into(), i.to_string(), "name".into()],
                    rule: format!(
                        "no app host `{}` in this datacenter's `hosts`; add it there or remove this entry",
                        o.name
                    ),
                });
            } else if by_name.insert(&o.name, i).is_some() {
                problems.push(HostProblem {
                    at: vec!["app_host".into(), i.to_string(), "name".into()],
                    rule: format!("`{}` is overridden twice; merge the two entries", o.name),
                });
            }
        }
        let mut hosts = Vec::with_capacity(names.len());
        for name in names {
            let o = by_name.get(name.as_str()).copied();
            let over = o.map(|i| &self.app_host[i]);
            let mut fail = |key: &str, e: String| {
                problems.push(HostProblem {
                    at: vec!["app_host".into(), o.unwrap_or(0).to_string(), key.into()],
                    rule: e,
                })
            };
            let collector = merged(&self.collector, over.and_then(|o| o.collector.as_ref()))
                .map_err(|e| fail("collector", e));
            let spool = merged(&self.spool, over.and_then(|o| o.spool.as_ref()))
                .map_err(|e| fail("spool", e));
            let shipper = merged(&self.shipper, over.and_then(|o| o.shipper.as_ref()))
                .map_err(|e| fail("shipper", e));
            let (Ok(mut collector), Ok(mut spool), Ok(shipper)) = (collector, spool, shipper)
            else {
                continue;
            };
            collector.socket = for_host(&collector.socket, &name);
            collector.inbox = for_host(&collector.inbox, &name);
            spool.dir = for_host(&spool.dir, &name);
            hosts.push(AppHost {
                name,
                collector,
                spool,
                shipper,
                overridden: o,
            });
        }
        (hosts, problems)
    }

    /// What a host without overrides gets (paths still holding
    /// [`HOST_PLACEHOLDER`]), named `""`.
    pub fn host_defaults(&self) -> AppHost {
        AppHost {
            name: String::new(),
            collector: self.collector.clone(),
            spool: self.spool.clone(),
            shipper: self.shipper.clone(),
            overridden: None,
        }
    }

    /// Every app host, resolved. On a checked topology this is all of them.
    pub fn app_hosts(&self) -> Vec<AppHost> {
        self.resolve_app_hosts().0
    }

    /// The app host called `name`.
    pub fn app_host(&self, name: &str) -> Option<AppHost> {
        self.app_hosts().into_iter().find(|h| h.name == name)
    }

    /// The first app host: the one running the DC's query service unless
    /// `query.host` names another machine.
    pub fn first_app_host(&self) -> Option<AppHost> {
        self.app_hosts().into_iter().next()
    }
}

/// `defaults` with the keys of `over` replaced; a wrong key or type says so.
fn merged<T>(defaults: &T, over: Option<&toml::Table>) -> Result<T, String>
where
    T: Serialize + serde::de::DeserializeOwned + Clone,
{
    let Some(over) = over else {
        return Ok(defaults.clone());
    };
    let mut table = toml::Table::try_from(defaults).map_err(|e| e.to_string())?;
    for (k, v) in over {
        table.insert(k.clone(), v.clone());
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| e.message().to_string())
}

/// `path` with [`HOST_PLACEHOLDER`] replaced by `host`.
fn for_host(path: &std::path::Path, host: &str) -> PathBuf {
    match path.to_str() {
        Some(s) if s.contains(HOST_PLACEHOLDER) => PathBuf::from(s.replace(HOST_PLACEHOLDER, host)),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_expand_padded_as_written() {
        assert_eq!(expand("dc1-app1").unwrap(), ["dc1-app1"]);
        assert_eq!(
            expand("dc1-app[008:010]").unwrap(),
            ["dc1-app008", "dc1-app009", "dc1-app010"]
        );
        assert_eq!(
            expand("app[8:10].dc1").unwrap(),
            ["app8.dc1", "app9.dc1", "app10.dc1"]
        );
        assert_eq!(expand("dc1-app[001:400]").unwrap().len(), 400);
        assert_eq!(expand("a[3:3]").unwrap(), ["a3"]);
    }

    #[test]
    fn bad_ranges_say_why() {
        for bad in [
            "a[1-4]",
            "a[:4]",
            "a[1:x]",
            "a[1:2",
            "a]",
            "a[1:2][3:4]",
            "a[1:2]]",
        ] {
            assert_eq!(expand(bad), Err(RangeError::Syntax), "{bad}");
        }
        assert_eq!(expand("a[5:4]"), Err(RangeError::Backwards(5, 4)));
        assert_eq!(expand("a[1:20000]"), Err(RangeError::TooLong(20000)));
    }

    #[test]
    fn host_names() {
        assert!(is_host_name("dc1-app001.example_org"));
        for bad in ["", ".", "..", "a/b", "a b", "a{host}", &"x".repeat(256)] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }
}
