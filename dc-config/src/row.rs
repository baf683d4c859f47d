//! One row of the generic events table (`events_local`): the mapping from a
//! validated event to the columns every datacenter stores, in one place.

use serde::{Deserialize, Serialize};

use crate::event::ValidEvent;

/// Where in a host's spool an event was read from: with `dc` and `host`,
/// it identifies an event uniquely, so `count() = uniqExact(dc, host,
/// spool_segment, spool_offset)` proves there are no duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SpoolPosition {
    /// Segment sequence number.
    pub segment: u64,
    /// Byte offset of the event's frame within the segment.
    pub offset: u64,
}

/// The columns of `events_local`, in table order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRow {
    /// Event type name.
    pub event: String,
    /// Day of `time` (UTC), `YYYY-MM-DD`.
    pub date: String,
    /// Event time in whole seconds since the epoch.
    pub time: u32,
    /// Event time in milliseconds since the epoch.
    pub time_ms: u64,
    /// Datacenter that collected it.
    pub dc: String,
    /// Host that collected it.
    pub host: String,
    /// Attribute names, in registry order.
    pub attr_names: Vec<String>,
    /// Attribute values as canonical text, parallel to `attr_names`.
    pub attr_values: Vec<String>,
    /// Spool segment of the event.
    pub spool_segment: u64,
    /// Spool offset of the event.
    pub spool_offset: u64,
}

impl EventRow {
    /// The row for `event`, collected in `dc` by `host` at `pos`.
    pub fn new(event: &ValidEvent, dc: &str, host: &str, pos: SpoolPosition) -> Self {
        let secs = event.time_ms / 1000;
        Self {
            event: event.event.clone(),
            date: civil_date(secs / 86_400),
            time: u32::try_from(secs).expect("validated event times fit ClickHouse's DateTime"),
            time_ms: event.time_ms,
            dc: dc.to_string(),
            host: host.to_string(),
            attr_names: event.attrs.iter().map(|(n, _)| n.clone()).collect(),
            attr_values: event
                .attrs
                .iter()
                .map(|(_, v)| v.to_column_text())
                .collect(),
            spool_segment: pos.segment,
            spool_offset: pos.offset,
        }
    }
}

/// `YYYY-MM-DD` of a day number since 1970-01-01 (proleptic Gregorian,
/// Howard Hinnant's `civil_from_days`).
pub fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_417), "2025-11-25");
        assert_eq!(civil_date(49_672), "2105-12-31");
    }
}
