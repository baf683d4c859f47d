//! The on-disk spool: segment files of CRC-checked frames.
//!
//! It owns the frame and segment format, rotation and sealing, crash
//! recovery, named readers with durable checkpoints, retention and the disk
//! quota. It knows nothing of events: a frame is opaque bytes. The collector
//! appends and acknowledges; the shipper reads, ships and commits.
//!
//! Main types: [`Spool`] (the one writer of a directory), [`Reader`] (a named
//! consumer with a checkpoint), [`Config`], [`Error`], [`SpoolStats`], and
//! [`inspect::examine`] behind `spoolhouse spool inspect|verify`.
//!
//! ```
//! use spooler::{Config, Durability, Spool};
//! let dir = tempfile::tempdir().unwrap();
//! let config = Config { durability: Durability::Always, ..Config::default() };
//! let spool = Spool::open(dir.path(), config).unwrap();
//! spool.append(&[b"{\"event\":\"registration\"}".as_slice()]).unwrap();
//! let mut reader = spool.reader("shipper").unwrap();
//! let batch = reader.next(1000, 1 << 20).unwrap();
//! assert_eq!(batch.len(), 1);
//! reader.commit(batch[0].next).unwrap();
//! ```
//!
//! # Design
//!
//! ## Directory
//!
//! ```text
//! DIR/LOCK                          flock'ed by the one writer process
//! DIR/segments/NNNNNNNNNNNNNNNNNNNN.open     the active segment (20-digit seq)
//! DIR/segments/NNNNNNNNNNNNNNNNNNNN.seg      sealed, raw
//! DIR/segments/NNNNNNNNNNNNNNNNNNNN.seg.zst  sealed, compressed
//! DIR/readers/NAME.ckpt             a reader's checkpoint
//! DIR/quarantine/SEQ-OFFSET.bad     copies of damaged bytes (OFFSET = u64::MAX:
//!                                   a whole damaged .zst file)
//! ```
//!
//! ## Limits
//!
//! - [`FRAME_PAYLOAD_MAX`] = 16 MiB per frame payload.
//! - [`SEGMENT_BYTES_MAX`] = 1 GiB per segment, hard; [`Config::segment_bytes`]
//!   (default 64 MiB) is the rotation size. A batch never spans segments.
//! - [`Config::quota_bytes`] (default 10 GiB) bounds the segment files.
//!
//! ## Format (all integers little-endian)
//!
//! ```text
//! struct Segment {
//!     header: SegmentHeader,         // 32 bytes
//!     frames: [Frame],               // back to back, from offset 32
//! }
//! struct SegmentHeader {
//!     magic:           [u8; 8],      // "SPOOLSEG"
//!     version:         u32,          // 1
//!     seq:             u64,          // equals the file name
//!     created_unix_ms: u64,          // drives age rotation
//!     crc32:           u32,          // of the 28 bytes above
//! }
//! struct Frame {
//!     marker:  [u8; 4],              // F7 5E C9 1D: resync point; F7 never occurs in UTF-8
//!     len:     u32,                  // payload length <= FRAME_PAYLOAD_MAX
//!     crc32:   u32,                  // CRC32 (crc32fast) of len's 4 bytes, then payload
//!     payload: [u8; len],
//! }
//! struct Checkpoint {                // DIR/readers/NAME.ckpt, 32 bytes
//!     magic: [u8; 8], version: u32,  // "SPOOLCKP", 1
//!     segment: u64, offset: u64,     // next position to read
//!     crc32: u32,                    // of the 28 bytes above
//! }
//! ```
//!
//! A [`Position`] is (segment seq, byte offset in the *uncompressed* segment),
//! so positions stay valid across sealing and are stable identities for
//! downstream deduplication.
//!
//! ## Append and durability
//!
//! An append encodes its batch into one buffer and writes it with one
//! `pwrite` at the end of the active segment, under the writer lock. Then,
//! by [`Durability`]: `Always` fdatasyncs before returning; `Group` waits for
//! a group commit (one appender runs fdatasync for everything written so
//! far, the others wait for it; see `Spool::append`); `Interval` returns at
//! once and a background thread syncs every `interval_ms` (documented loss
//! window on power failure: the interval plus one sync). A write or fsync
//! error poisons the spool (fsync errors may drop dirty pages, so nothing
//! after it can be trusted) until it is reopened and recovered; a write error
//! first cuts the partial batch off so it cannot become mid-segment garbage.
//! Both go through [`SpoolIo`], which tests replace to inject the faults;
//! so do renames (sealing, compressed copies moved in, checkpoints put in
//! place), directory syncs and checkpoint writes, so a test can fail a
//! checkpoint's rename or a seal midway (`tests/faults.rs`).
//! `append_deferred` + `wait_durable` split an append so one caller can keep
//! several batches in flight and acknowledge each when the group commit
//! covers it.
//!
//! ## Rotation and sealing
//!
//! Before an append that would push the active segment past `segment_bytes`,
//! or once it is older than `segment_age_ms` (checked on append and by a
//! housekeeping thread), the writer fdatasyncs it, creates the next `.open`
//! (header written, fsynced, directory fsynced), then renames the old
//! `.open` → `.seg` and fsyncs the directory (a crash in between leaves two
//! `.open` files; recovery seals all but the newest). Sealing then compresses in the background:
//! write `.seg.zst.tmp` (zstd, checksum, content size), fsync, read it back
//! and compare length and CRC with the raw one, rename to `.seg.zst`, fsync
//! the directory, and only then delete the `.seg` and fsync again. At every
//! moment one complete copy exists under a final name.
//!
//! ## Recovery on open
//!
//! `Spool::open` removes `*.tmp`; if both `.seg` and `.seg.zst` exist (crash
//! before the raw one was deleted) it keeps the raw one and compresses again;
//! it scans the active segment: a torn tail (no whole valid frame from some
//! offset to the end) is cut off and counted (`torn_tail_bytes`; those
//! appends were never acknowledged); a damaged region followed by a valid
//! frame is skipped by readers, counted (`corrupt_regions`) and copied to
//! `quarantine/`, and every good frame after it is kept; a damaged header is
//! quarantined and its frames kept. A segment torn while being created is
//! rewritten. Bad bytes are data, never a panic. Checkpoints that now point
//! past the end are moved back to it (`stale_checkpoints`): otherwise the
//! reader would silently skip the frames appended next.
//!
//! Positions are identities downstream, so none is handed out twice: when
//! recovery cut anything or moved a checkpoint back, the recovered segment
//! is sealed and appends continue in a new one, and a new segment's number
//! is above every existing segment and every checkpoint. (Loss that ends
//! exactly on a frame boundary below every checkpoint leaves no trace to
//! act on; it needs a disk that lost synced data.)
//!
//! ## Readers and checkpoints
//!
//! A reader starts at its checkpoint (a new one at the oldest segment, and
//! registers at once so retention waits for it), reads sealed segments whole
//! (decompressed) and the active one incrementally, and skips damage the way
//! recovery does, counting and quarantining it; a missing segment is
//! skipped and counted. In-process readers see data only up to the durable
//! watermark and are woken by the writer (a Condvar); readers in another
//! process are woken by inotify (`notify`). `commit` writes the checkpoint
//! as temp file, fsync, rename, directory fsync.
//!
//! ## Retention and quota
//!
//! `Spool::retain` deletes sealed segments below the lowest segment any
//! checkpoint is in; with no reader nothing is deleted, and a corrupt
//! checkpoint holds everything. An append that would take the segment files
//! past `quota_bytes` first runs retention, then fails with [`Error::Full`]
//! without writing anything.
//!
//! The disk can fill before the quota does
//! (docs/adr/0008-a-full-disk-drains-by-itself.md). An append that finds it full
//! (`ENOSPC`/`EDQUOT`, [`Error::is_disk_full`]) cuts off what it wrote, runs
//! retention and tries once more; rotation creates the next segment before
//! sealing the current one, so a full disk leaves the current one active
//! instead of stopping the spool; and a checkpoint that cannot be written
//! beside the old one overwrites it in place, since only checkpoints let
//! retention free anything. A full disk is thus refused batch by batch and
//! drains by itself as readers catch up.

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod fileio;
mod files;
pub mod format;
pub mod inspect;
pub mod reader;
pub mod spool;
pub mod stats;
mod watermark;

pub use config::{Compression, Config, Durability};
pub use error::{Error, Result};
pub use fileio::{SpoolIo, StdIo};
pub use files::SegmentState;
pub use format::{Position, FRAME_PAYLOAD_MAX, SEGMENT_BYTES_MAX};
pub use reader::{Frame, Reader};
pub use spool::{PendingAppend, Spool};
pub use stats::{ReaderLag, ReaderStats, SpoolStats, Stat, StatKind, FSYNC_BUCKETS_US};
