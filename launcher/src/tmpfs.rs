//! A small real disk for tests of full disks: a tmpfs of a given size
//! mounted on a folder (root only, as the README's test command runs), and
//! unmounted when dropped, also when the test fails.

use std::path::{Path, PathBuf};

use super::LaunchError;

/// A mounted tmpfs; unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `dir` (created if missing).
    pub fn mount(dir: &Path, bytes: u64) -> Result<Self, LaunchError> {
        std::fs::create_dir_all(dir).map_err(|source| LaunchError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|source| LaunchError::Io {
                path: "mount".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(LaunchError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other(format!(
                    "mounting a tmpfs failed (this needs root, as the README's test command runs): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            });
        }
        Ok(Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
