//! `/metrics` in Prometheus's text format (0.0.4), the one every service
//! serves. `prometheus_client` writes OpenMetrics, whose counter families
//! are named without `_total` while their samples carry it; Prometheus
//! reads that only when told the OpenMetrics content type, and its own
//! linter (`promtool check metrics`) and Grafana find no help text for such
//! counters. Written here as Prometheus text instead: the family lines of a
//! counter name its samples (`…_total`), `# UNIT` and `# EOF` are dropped.
//!
//! [`samples`] reads such text back: the one reader of another service's
//! `/metrics` (pipeline health, the demo, the benches, the tests).

use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric of `registry` in Prometheus's text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut open = String::new();
    prometheus_client::encoding::text::encode(&mut open, registry)?;
    Ok(from_openmetrics(&open))
}

/// OpenMetrics text as Prometheus text: for each counter family, its
/// `HELP` and `TYPE` lines name `<family>_total`, as its samples do.
pub fn from_openmetrics(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 64 * counters.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let family_line = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (*p, rest)));
        match family_line {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str("_total");
                }
                if !tail.is_empty() || rest.contains(' ') {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// One sample of a text exposition: `(name, labels, value)`, labels as
/// written between the braces.
pub type Sample<'a> = (&'a str, &'a str, f64);

/// The samples of a Prometheus text exposition. Comments, blank lines and
/// lines that do not parse are skipped (a scrape reads what it
/// understands; the text is another process's, so any text is read
/// without a panic).
pub fn samples(text: &str) -> Vec<Sample<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, rest) = if line.contains('{') {
                // Label values may hold spaces and braces inside quotes;
                // the set ends at the last `}` of the line.
                let close = line.rfind('}')?;
                (&line[..close + 1], &line[close + 1..])
            } else {
                line.split_once(' ')?
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}')?),
                None => (series, ""),
            };
            let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((name, labels, value))
        })
        .collect()
}

/// Sum of the samples called `name` whose labels contain `label` (a
/// `key="value"` pair; all of them when `label` is empty); `None` when
/// there is no such sample.
pub fn sum(samples: &[Sample<'_>], name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for (n, l, v) in samples {
        if *n == name && (label.is_empty() || l.split(',').any(|p| p == label)) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The value of label `key` in a sample's `labels` text, if present.
pub fn label_value<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels
        .split(',')
        .find_map(|p| p.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn counter_families_name_their_samples() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(3);
        let g: Gauge = Gauge::default();
        g.set(7);
        let sub = r.sub_registry_with_prefix("spoolhouse_x");
        sub.register("rows", "Rows inserted", c);
        sub.register("open", "Connections open", g);
        let text = encode(&r).unwrap();
        assert_eq!(
            text,
            "# HELP spoolhouse_x_rows_total Rows inserted.\n\
             # TYPE spoolhouse_x_rows_total counter\n\
             spoolhouse_x_rows_total 3\n\
             # HELP spoolhouse_x_open Connections open.\n\
             # TYPE spoolhouse_x_open gauge\n\
             spoolhouse_x_open 7\n"
        );
    }

    #[test]
    fn samples_read_names_labels_and_values() {
        let text = "# HELP x y\n# TYPE x counter\n\
            spoolhouse_collector_events_accepted_total{event=\"vote\",endpoint=\"unix\"} 10\n\
            spoolhouse_collector_events_accepted_total{event=\"a}b c\",endpoint=\"tcp\"} 5\n\
            spoolhouse_collector_spool_bytes 4096\n\
            spoolhouse_shipper_lag_seconds{sink=\"clickhouse\"} 0.25\n\
            spoolhouse_shipper_lag_seconds{sink=\"redis\"} 1.5\n\
            broken line\n# EOF\n";
        let s = samples(text);
        assert_eq!(s.len(), 5, "{s:?}");
        assert_eq!(
            sum(&s, "spoolhouse_collector_events_accepted_total", ""),
            Some(15.0)
        );
        assert_eq!(
            sum(&s, "spoolhouse_collector_spool_bytes", ""),
            Some(4096.0)
        );
        assert_eq!(
            sum(&s, "spoolhouse_shipper_lag_seconds", "sink=\"redis\""),
            Some(1.5)
        );
        assert_eq!(sum(&s, "spoolhouse_shipper_rows_total", ""), None);
        assert_eq!(label_value(s[0].1, "endpoint"), Some("unix"));
        assert_eq!(label_value(s[0].1, "event"), Some("vote"));
        assert_eq!(label_value(s[0].1, "sink"), None);
    }

    #[test]
    fn what_encode_writes_samples_reads() {
        let mut r = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(41);
        r.sub_registry_with_prefix("spoolhouse_x")
            .register("rows", "Rows inserted", c);
        let text = encode(&r).unwrap();
        assert_eq!(
            sum(&samples(&text), "spoolhouse_x_rows_total", ""),
            Some(41.0)
        );
    }

    proptest::proptest! {
        // Another service's answer is input from the network: any text is
        // read without a panic, and a well-formed sample always comes back.
        #[test]
        fn any_text_is_read_and_samples_come_back(
            noise in "\\PC{0,200}",
            name in "[a-z_]{1,20}",
            label in "[a-z]{1,8}=\"[^\"\\n]{0,12}\"",
            value in 0u32..1_000_000,
        ) {
            let _ = samples(&noise);
            let text = format!("{noise}\n{name}{{{label}}} {value}\n");
            let s = samples(&text);
            proptest::prop_assert_eq!(s.last(), Some(&(name.as_str(), label.as_str(), f64::from(value))));
        }
    }
}
