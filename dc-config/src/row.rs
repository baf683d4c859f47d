//! One row of the generic events table (`events_local`): the mapping from a
//! validated event to the columns every datacenter stores, in one place.

use crate::event::ValidEvent;

/// Where in a host's spool an event was read from: with `dc` and `host`,
/// it identifies an event uniquely, so `count() = uniqExact(dc, host,
/// spool_segment, spool_offset)` proves there are no duplicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolPosition {
    /// Segment sequence number.
    pub segment: u64,
    /// Byte offset of the event's frame within the segment.
    pub offset: u64,
}

/// The columns of `events_local`, in table order.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// Event type name.
    pub event: String,
    /// Day of `time` (UTC), in days since 1970-01-01 (ClickHouse's `Date`).
    pub date: u16,
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
            date: u16::try_from(secs / 86_400).expect("validated event times end before 2106"),
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

/// The column list of `events_local`, in the order [`EventRow::write_row_binary`] writes.
pub const EVENT_COLUMNS: &str =
    "event, date, time, time_ms, dc, host, attr_names, attr_values, spool_segment, spool_offset";

impl EventRow {
    /// Appends the row in ClickHouse's RowBinary format (columns as
    /// [`EVENT_COLUMNS`]). The same row always gives the same bytes, which a
    /// replayed insert block relies on to be deduplicated.
    pub fn write_row_binary(&self, out: &mut Vec<u8>) {
        put_str(out, &self.event);
        out.extend_from_slice(&self.date.to_le_bytes());
        out.extend_from_slice(&self.time.to_le_bytes());
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        put_str(out, &self.dc);
        put_str(out, &self.host);
        put_varint(out, self.attr_names.len() as u64);
        for n in &self.attr_names {
            put_str(out, n);
        }
        put_varint(out, self.attr_values.len() as u64);
        for v in &self.attr_values {
            put_str(out, v);
        }
        out.extend_from_slice(&self.spool_segment.to_le_bytes());
        out.extend_from_slice(&self.spool_offset.to_le_bytes());
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_binary_layout() {
        let row = EventRow {
            event: "vote".into(),
            date: 3,
            time: 0x0102_0304,
            time_ms: 5,
            dc: "dc1".into(),
            host: "h".into(),
            attr_names: vec!["a".into()],
            attr_values: vec!["x".repeat(200)],
            spool_segment: 7,
            spool_offset: 8,
        };
        let mut b = Vec::new();
        row.write_row_binary(&mut b);
        let mut want = vec![4];
        want.extend_from_slice(b"vote");
        want.extend_from_slice(&[3, 0, 4, 3, 2, 1, 5, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[3, b'd', b'c', b'1', 1, b'h', 1, 1, b'a', 1, 200, 1]);
        want.extend_from_slice(&[b'x'; 200]);
        want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b, want);
    }
}
