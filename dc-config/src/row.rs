//! One row of the generic events table (`events_local`): the mapping from a
//! validated event to the columns every datacenter stores, in one place.

use crate::event::{ValidEvent, ValueRef};

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

impl EventRow {
    /// Appends the row in ClickHouse's RowBinary format (columns as
    /// [`EVENT_COLUMNS`](crate::schema::column::EVENT_COLUMNS)); the same bytes as [`write_row_binary`] gives for
    /// the event it was made from.
    pub fn write_row_binary(&self, out: &mut Vec<u8>) {
        let attrs = self
            .attr_names
            .iter()
            .zip(&self.attr_values)
            .map(|(n, v)| (n.as_str(), ValueRef::Str(v)));
        let pos = SpoolPosition {
            segment: self.spool_segment,
            offset: self.spool_offset,
        };
        write_row_binary(
            out,
            &self.event,
            self.time_ms,
            &self.dc,
            &self.host,
            attrs,
            pos,
        );
    }
}

/// Appends one `events_local` row in ClickHouse's RowBinary format (columns
/// as [`EVENT_COLUMNS`](crate::schema::column::EVENT_COLUMNS)) straight from an event's parts. The same event
/// always gives the same bytes, which a replayed insert block relies on to
/// be deduplicated.
pub fn write_row_binary<'v>(
    out: &mut Vec<u8>,
    event: &str,
    time_ms: u64,
    dc: &str,
    host: &str,
    attrs: impl ExactSizeIterator<Item = (&'v str, ValueRef<'v>)> + Clone,
    pos: SpoolPosition,
) {
    let secs = time_ms / 1000;
    put_str(out, event);
    out.extend_from_slice(&((secs / 86_400) as u16).to_le_bytes());
    out.extend_from_slice(&(secs as u32).to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    put_str(out, dc);
    put_str(out, host);
    let n = attrs.len() as u64;
    put_varint(out, n);
    for (name, _) in attrs.clone() {
        put_str(out, name);
    }
    put_varint(out, n);
    for (_, v) in attrs {
        v.with_text(|t| put_str(out, t));
    }
    out.extend_from_slice(&pos.segment.to_le_bytes());
    out.extend_from_slice(&pos.offset.to_le_bytes());
}

/// `YYYY-MM-DD` of a day number since 1970-01-01, as ClickHouse prints a
/// `Date` (proleptic Gregorian; Howard Hinnant's `civil_from_days`).
pub fn date_text(days: u16) -> String {
    let z = i64::from(days) + 719_468;
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

    proptest::proptest! {
        /// The shipper's path (record bytes straight to RowBinary) gives the
        /// bytes of the owned path (event, row, RowBinary).
        #[test]
        fn record_view_and_event_row_agree(
            attrs in proptest::collection::vec(("[a-z]{1,8}", proptest::prelude::any::<u64>(), ".{0,12}", proptest::prelude::any::<bool>()), 0..6),
            time_ms in 0u64..4_291_747_199_999,
            segment in proptest::prelude::any::<u64>(),
            offset in proptest::prelude::any::<u64>(),
        ) {
            use crate::event::Value;
            let mut ev_attrs = Vec::new();
            for (i, (name, n, text, b)) in attrs.into_iter().enumerate() {
                let v = match i % 4 {
                    0 => Value::UInt(n),
                    1 => Value::Int(n as i64),
                    2 => Value::Str(text),
                    _ => Value::Bool(b),
                };
                ev_attrs.push((name, v));
            }
            let event = ValidEvent { event: "e".into(), time_ms, attrs: ev_attrs };
            let pos = SpoolPosition { segment, offset };
            let mut owned = Vec::new();
            EventRow::new(&event, "dc1", "h", pos).write_row_binary(&mut owned);
            let bytes = crate::record::Record { event: event.clone(), inbox: None }.encode().unwrap();
            let view = crate::record::RecordView::parse(&bytes).unwrap();
            let mut direct = Vec::new();
            write_row_binary(&mut direct, view.event, view.time_ms, "dc1", "h", view.checked_attrs(), pos);
            proptest::prop_assert_eq!(owned, direct);
        }
    }

    #[test]
    fn date_texts() {
        assert_eq!(date_text(0), "1970-01-01");
        assert_eq!(date_text(11_016), "2000-02-29");
        assert_eq!(date_text(20_417), "2025-11-25");
        assert_eq!(date_text(49_672), "2105-12-31");
    }

    #[test]
    fn row_binary_layout() {
        let row = EventRow {
            event: "vote".into(),
            date: 195,
            time: 0x0102_0304,
            time_ms: 0x0102_0304 * 1000 + 5,
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
        want.extend_from_slice(&[195, 0, 4, 3, 2, 1]);
        want.extend_from_slice(&(0x0102_0304u64 * 1000 + 5).to_le_bytes());
        want.extend_from_slice(&[3, b'd', b'c', b'1', 1, b'h', 1, 1, b'a', 1, 200, 1]);
        want.extend_from_slice(&[b'x'; 200]);
        want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b, want);
    }
}
