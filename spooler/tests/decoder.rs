//! The decoder recovery and readers share, hammered with arbitrary and with
//! damaged-but-structured bytes (the same checks as the cargo-fuzz target
//! `scan`, for machines without nightly).

use proptest::prelude::*;
use spooler::format::{
    decode_checkpoint, encode_frame, frame_len, Scanned, Scanner, SegmentHeader, FRAME_PAYLOAD_MAX,
};

/// Checks the scanner's items tile `data` from `start` with only valid
/// frames; returns the frames' (offset, payload).
fn scan_checked(data: &[u8], start: usize) -> Result<Vec<(usize, Vec<u8>)>, TestCaseError> {
    let mut at = start.min(data.len());
    let mut frames = Vec::new();
    let mut last_corrupt = false;
    for (n, item) in Scanner::new(data, start).enumerate() {
        prop_assert!(n <= data.len(), "scanner must make progress");
        match item {
            Scanned::Frame { offset, payload } => {
                prop_assert_eq!(offset, at);
                prop_assert!(payload.len() <= FRAME_PAYLOAD_MAX);
                let mut re = Vec::new();
                encode_frame(&mut re, payload);
                prop_assert_eq!(&data[offset..offset + frame_len(payload.len())], &re[..]);
                at = offset + re.len();
                frames.push((offset, payload.to_vec()));
                last_corrupt = false;
            }
            Scanned::Corrupt { offset, len } => {
                prop_assert_eq!(offset, at);
                prop_assert!(len > 0 && !last_corrupt);
                at = offset + len;
                last_corrupt = true;
            }
            Scanned::Tail { offset } => {
                prop_assert_eq!(offset, at);
                at = data.len();
            }
        }
    }
    prop_assert!(!last_corrupt);
    prop_assert_eq!(at, data.len());
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_and_tile(data in prop::collection::vec(any::<u8>(), 0..4096), start in 0usize..64) {
        let _ = SegmentHeader::decode(&data);
        let _ = decode_checkpoint(&data);
        scan_checked(&data, start)?;
    }

    #[test]
    fn damage_loses_only_the_frames_it_touches(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..30),
        hits in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 0..4),
    ) {
        let mut data = Vec::new();
        let mut spans = Vec::new();
        for p in &payloads {
            let s = data.len();
            encode_frame(&mut data, p);
            spans.push((s, data.len()));
        }
        let orig = data.clone();
        for (idx, xor) in &hits {
            let b = idx.index(data.len());
            data[b] ^= xor;
        }
        // Two hits on one byte can cancel out: compare with the original.
        let touched: Vec<bool> = spans.iter().map(|(s, e)| data[*s..*e] != orig[*s..*e]).collect();
        let got = scan_checked(&data, 0)?;
        let want: Vec<(usize, Vec<u8>)> = spans
            .iter()
            .zip(&payloads)
            .zip(&touched)
            .filter(|(_, t)| !**t)
            .map(|(((s, _), p), _)| (*s, p.clone()))
            .collect();
        prop_assert_eq!(got, want);
    }
}
