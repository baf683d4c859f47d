//! The wire protocol's responses (see `docs/protocol.md`).
//!
//! A client writes JSON lines, one event each, as fast as it likes; the
//! collector reads what has arrived, validates each line, appends the valid
//! ones as one spool batch and answers, in line order: one [`Response::Rejected`]
//! per bad line, then either [`Response::Ack`] (the batch is durable) or
//! [`Response::Refused`] (nothing of it was stored). Line numbers count from
//! 1 per connection; blank lines count but are otherwise ignored.

use serde::{Deserialize, Serialize};

/// Reason code of a line longer than `line_bytes_max`.
pub const RULE_LINE_TOO_LONG: &str = "line_too_long";

/// One response line from the collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    /// Line `line` was rejected and will never be stored; fix and resend it.
    Rejected {
        /// Line number (1-based, per connection).
        line: u64,
        /// The offending key (`event`, `time`, `attrs.NAME`), empty for the whole line.
        field: String,
        /// Stable reason code (`wrong_type`, `missing`, `line_too_long`, …).
        rule: String,
        /// Human-readable: line, field and rule.
        error: String,
    },
    /// Every line up to `ack` is settled: the `accepted` valid lines since
    /// the previous ack or refusal are durable in the spool.
    Ack {
        /// Last line covered.
        ack: u64,
        /// Valid lines stored by this batch.
        accepted: u64,
    },
    /// Lines `from..=through` were not stored (apart from rejected ones,
    /// which stay rejected); resend the valid ones later.
    Refused {
        /// Why, e.g. `spool full: N of M bytes, retry later`.
        refused: String,
        /// First line of the refused batch.
        from: u64,
        /// Last line of the refused batch.
        through: u64,
    },
    /// The collector is closing this connection (idle, shutting down, over
    /// the connection limit); lines after the last ack were not stored.
    Closing {
        /// Why.
        closing: String,
    },
}

impl Response {
    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("responses always serialise");
        v.push(b'\n');
        v
    }

    /// Parses one response line (without its newline).
    pub fn parse(line: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_round_trip_and_stay_distinct() {
        let all = [
            Response::Rejected {
                line: 3,
                field: "attrs.x".into(),
                rule: "unknown_field".into(),
                error: "line 3: `attrs.x` is not declared for this event type".into(),
            },
            Response::Ack {
                ack: 9,
                accepted: 8,
            },
            Response::Refused {
                refused: "spool full: 10 of 10 bytes, retry later".into(),
                from: 1,
                through: 9,
            },
            Response::Closing {
                closing: "idle".into(),
            },
        ];
        for r in all {
            let line = r.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(Response::parse(&line[..line.len() - 1]).unwrap(), r);
        }
        assert_eq!(
            String::from_utf8(
                Response::Ack {
                    ack: 2,
                    accepted: 1
                }
                .to_line()
            )
            .unwrap(),
            "{\"ack\":2,\"accepted\":1}\n"
        );
    }
}
