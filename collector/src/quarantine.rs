//! Invalid inbox lines, kept for the operator. A line a client sends over
//! the socket is answered with its rejection; an inbox line has nobody to
//! answer, so besides being counted it is written, with the rule it broke,
//! its file, offset and time, to a JSON-lines file the operator can read
//! (`quarantine_dir`, default `SPOOL_DIR/quarantine`):
//!
//! ```json
//! {"time_ms":1765000000000,"file":"/var/lib/spoolhouse/dc1/inbox/app.log","offset":4096,"line_no":3,"field":"attrs.vote","rule":"not_in_enum","error":"`attrs.vote` must be one of: yes, no","line":"{\"event\":\"vote\",…}","line_bytes":97}
//! ```
//!
//! Entries are written and synced before the batch that passed over the
//! lines moves the file's offset: a crash may write an entry twice, never
//! lose it. The file is bounded: past `quarantine_bytes_max` it is renamed
//! to `rejected.jsonl.old` (replacing the previous one) and a new one is
//! started, so at most twice the bound is kept. A line's text is kept up to
//! [`LINE_KEPT_MAX`] bytes. A quarantine that cannot be written (disk full)
//! never stops ingest: the failure is counted and logged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// The quarantine file's name in its folder.
pub const FILE_NAME: &str = "rejected.jsonl";
/// Longest part of a line's text kept (its length is always recorded).
pub const LINE_KEPT_MAX: usize = 64 << 10;

/// One rejected inbox line.
pub struct Entry {
    /// The inbox file.
    pub file: PathBuf,
    /// Byte offset of the line in it.
    pub offset: u64,
    /// Line number within the chunk read (as the collector's log says).
    pub line_no: u64,
    /// `attrs.NAME`, `time`, `event`, or empty for the whole line.
    pub field: String,
    /// The rule's stable code.
    pub rule: String,
    /// The message, as a socket client would get it.
    pub error: String,
    /// The line's bytes (newline excluded), at most [`LINE_KEPT_MAX`]
    /// kept.
    pub line: Vec<u8>,
    /// The line's length in bytes.
    pub line_bytes: u64,
}

struct Open {
    file: File,
    bytes: u64,
}

/// The quarantine of one collector.
pub struct Quarantine {
    dir: PathBuf,
    max_bytes: u64,
    open: Mutex<Option<Open>>,
}

impl Quarantine {
    /// A quarantine in `dir` (created on first use), each file at most
    /// `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes,
            open: Mutex::new(None),
        }
    }

    /// The current file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Appends `entries` at `now_ms` and syncs them.
    pub fn keep(&self, entries: &[Entry], now_ms: u64) -> std::io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut text = Vec::new();
        for e in entries {
            let kept = &e.line[..e.line.len().min(LINE_KEPT_MAX)];
            let line = serde_json::json!({
                "time_ms": now_ms,
                "file": e.file.to_string_lossy(),
                "offset": e.offset,
                "line_no": e.line_no,
                "field": e.field,
                "rule": e.rule,
                "error": e.error,
                "line": String::from_utf8_lossy(kept),
                "line_bytes": e.line_bytes,
            });
            serde_json::to_writer(&mut text, &line).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        let mut open = self.open.lock().expect("quarantine lock");
        if open
            .as_ref()
            .is_some_and(|o| o.bytes > 0 && o.bytes + text.len() as u64 > self.max_bytes)
        {
            *open = None;
            std::fs::rename(self.path(), self.dir.join(format!("{FILE_NAME}.old")))?;
        }
        if open.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path())?;
            let bytes = file.metadata()?.len();
            *open = Some(Open { file, bytes });
            if bytes > 0 && bytes + text.len() as u64 > self.max_bytes {
                // Full from an earlier run: rotate now.
                *open = None;
                std::fs::rename(self.path(), self.dir.join(format!("{FILE_NAME}.old")))?;
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.path())?;
                *open = Some(Open { file, bytes: 0 });
            }
        }
        let o = open.as_mut().expect("opened above");
        let written = o.file.write_all(&text).and_then(|_| o.file.sync_data());
        if written.is_err() {
            // A partial write leaves a torn last line; the next open starts
            // after it (append), and readers skip what does not parse.
            *open = None;
            return written;
        }
        o.bytes += text.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: &[u8]) -> Entry {
        Entry {
            file: PathBuf::from("/inbox/app.log"),
            offset: 10,
            line_no: 1,
            field: "attrs.vote".into(),
            rule: "not_in_enum".into(),
            error: "`attrs.vote` must be one of: yes, no".into(),
            line: line.to_vec(),
            line_bytes: line.len() as u64,
        }
    }

    #[test]
    fn entries_are_json_lines_and_the_files_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::new(dir.path().join("q"), 1_000);
        q.keep(&[entry(b"{\"event\":\"vote\"}")], 5).unwrap();
        let text = std::fs::read_to_string(q.path()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["rule"], "not_in_enum");
        assert_eq!(v["line"], "{\"event\":\"vote\"}");
        assert_eq!(v["offset"], 10);
        for _ in 0..50 {
            q.keep(&[entry(&[b'x'; 100])], 6).unwrap();
        }
        let len = |p: PathBuf| std::fs::metadata(p).unwrap().len();
        assert!(len(q.path()) <= 1_000);
        assert!(len(dir.path().join("q").join("rejected.jsonl.old")) <= 1_000);
        // A long line is cut, its length kept.
        let long = vec![b'y'; LINE_KEPT_MAX + 10];
        let q = Quarantine::new(dir.path().join("q2"), 1 << 20);
        q.keep(&[entry(&long)], 7).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(q.path()).unwrap()).unwrap();
        assert_eq!(v["line"].as_str().unwrap().len(), LINE_KEPT_MAX);
        assert_eq!(v["line_bytes"], LINE_KEPT_MAX as u64 + 10);
    }
}
