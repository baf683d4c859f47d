//! `/metrics` in Prometheus's text format (0.0.4), the one every service
//! serves. `prometheus_client` writes OpenMetrics, whose counter families
//! are named without `_total` while their samples carry it; Prometheus
//! reads that only when told the OpenMetrics content type, and its own
//! linter (`promtool check metrics`) and Grafana find no help text for such
//! counters. Written here as Prometheus text instead: the family lines of a
//! counter name its samples (`…_total`), `# UNIT` and `# EOF` are dropped.

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
}
