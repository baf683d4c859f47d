//! Recovery over arbitrary segment bytes: the input becomes the active
//! segment (first byte even) or a compressed sealed segment followed by an
//! empty active one (first byte odd); opening the spool and reading it must
//! neither panic nor fail, and every frame handed out must be intact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spooler::format::{encode_frame, SegmentHeader};
use spooler::{Compression, Config, Durability, Spool};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let segs = dir.path().join("segments");
    std::fs::create_dir_all(&segs).unwrap();
    // Half the inputs get a valid header so the fuzzer reaches the frames.
    let mut bytes = Vec::new();
    if mode & 2 == 0 {
        bytes.extend_from_slice(&SegmentHeader { seq: 1, created_unix_ms: 0 }.encode());
    }
    bytes.extend_from_slice(body);
    if mode & 1 == 0 {
        std::fs::write(segs.join("00000000000000000001.open"), &bytes).unwrap();
    } else {
        std::fs::write(segs.join("00000000000000000001.seg.zst"), &bytes).unwrap();
    }
    let config = Config {
        durability: Durability::Always,
        compression: Compression::Off,
        background_seal: false,
        segment_age_ms: 0,
        ..Config::default()
    };
    let spool = Spool::open(dir.path(), config).expect("recovery never fails on bad bytes");
    let mut reader = spool.reader("fuzz").unwrap();
    for _ in 0..1000 {
        let batch = reader.next(1000, 1 << 24).unwrap();
        if batch.is_empty() {
            break;
        }
        for r in batch {
            let mut re = Vec::new();
            encode_frame(&mut re, &r.payload);
            assert_eq!(r.next.offset - r.position.offset, re.len() as u64);
        }
    }
    spool.append(&[b"after".as_slice()]).expect("appends work after recovery");
});
