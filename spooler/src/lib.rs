//! The on-disk spool: segment files of CRC-checked frames.
//!
//! It owns the frame and segment format, rotation and sealing, crash
//! recovery, named readers with durable checkpoints, retention and the disk
//! quota. It knows nothing of events: a frame is opaque bytes.
//!
//! Not yet built: see the "Spooler" issue.
