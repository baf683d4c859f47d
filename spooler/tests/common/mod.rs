//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use spooler::{Compression, Config, Durability, Frame, Reader};

/// A config small enough that rotation happens within a test, with sealing
/// driven explicitly so tests are deterministic.
pub fn small_config(durability: Durability, compression: Compression) -> Config {
    Config {
        durability,
        segment_bytes: 4096,
        segment_age_ms: 0,
        compression,
        background_seal: false,
        quota_bytes: 1 << 30,
    }
}

/// Reads everything the reader can see now, in bounded calls.
pub fn drain(r: &mut Reader) -> Vec<Frame> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let b = r.next(97, 1 << 20).unwrap();
        if b.is_empty() {
            return out;
        }
        out.extend(b);
    }
    panic!("reader did not catch up within 10 000 calls");
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

pub fn active_segment(dir: &Path) -> PathBuf {
    segment_files(dir)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "open"))
        .expect("an active segment")
}

pub fn payload(i: usize) -> Vec<u8> {
    format!(
        "{{\"event\":\"e\",\"i\":{i},\"pad\":\"{}\"}}",
        "x".repeat(i % 50)
    )
    .into_bytes()
}
