//! Frame decoding over arbitrary bytes: the scanner, the segment header and
//! the checkpoint decoder must never panic, and the scanner's items must tile
//! the buffer with only CRC-valid frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spooler::format::{
    decode_checkpoint, encode_frame, frame_len, Scanned, Scanner, SegmentHeader,
    FRAME_PAYLOAD_MAX,
};

fuzz_target!(|data: &[u8]| {
    let _ = SegmentHeader::decode(data);
    let _ = decode_checkpoint(data);
    let start = data.first().map_or(0, |b| *b as usize % 40);
    let mut at = start.min(data.len());
    let mut items = 0usize;
    let mut last_corrupt = false;
    for item in Scanner::new(data, start) {
        items += 1;
        assert!(items <= data.len() + 1, "scanner must make progress");
        match item {
            Scanned::Frame { offset, payload } => {
                assert_eq!(offset, at);
                assert!(payload.len() <= FRAME_PAYLOAD_MAX);
                let mut re = Vec::new();
                encode_frame(&mut re, payload);
                assert_eq!(&data[offset..offset + frame_len(payload.len())], &re[..]);
                at = offset + re.len();
                last_corrupt = false;
            }
            Scanned::Corrupt { offset, len } => {
                assert_eq!(offset, at);
                assert!(len > 0 && !last_corrupt, "damage is followed by a frame");
                at = offset + len;
                last_corrupt = true;
            }
            Scanned::Tail { offset } => {
                assert_eq!(offset, at);
                at = data.len();
            }
        }
    }
    assert!(!last_corrupt, "a corrupt run always ends at a valid frame");
    assert_eq!(at, data.len(), "items tile the buffer");
});
