//! ClickHouse users' passwords: generated once per deployment, kept in
//! files of mode 0600 (one per user, `clickhouse-<user>.password` in the
//! topology's `secrets_dir`), rendered into `users.xml` as SHA-256 hashes
//! and into `config.xml` for the servers' own connections, and read by the
//! shipper and the query service at start. A file other users may read is
//! refused: a password anyone on the host can read protects nothing.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::schema::user::{CLUSTER_USER, QUERY_USER, SQL_USER, WRITER_USER};

/// Longest password accepted from a file, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 256;

/// Why a password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file could not be read or written.
    #[error("ClickHouse password file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Group or other users may read or write the file.
    #[error("ClickHouse password file {path} has mode {mode:04o}: other users may read it; `chmod 600 {path}` (and own it by the service's user)")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The content is not a usable password.
    #[error("ClickHouse password file {path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// The password of every ClickHouse user Spoolhouse declares.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// [`WRITER_USER`]: the shipper and the schema step, the only writer.
    pub writer: String,
    /// [`QUERY_USER`]: the query service's own reads.
    pub query: String,
    /// [`SQL_USER`]: analysts' statements.
    pub sql: String,
    /// [`CLUSTER_USER`]: the servers' connections to each other
    /// (Distributed tables), read-only.
    pub cluster: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// Creates `path` (its folder mode 0700 if new, the file 0600) with a new
/// random secret, unless it exists: rendering again changes no secret.
fn create_if_missing(path: &Path) -> Result<(), CredentialError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CredentialError::Io { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(mut f) => {
            writeln!(f, "{}", generate()).map_err(io(path))?;
            f.sync_all().map_err(io(path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// The file of `dc`'s relay secret in `dir` (docs/adr/0017): what its
/// relays and its app hosts' forwarders prove to each other.
pub fn relay_secret_file(dir: &Path, dc: &str) -> PathBuf {
    dir.join(format!("relay-{dc}.secret"))
}

/// [`relay_secret_file`] of `dc`, created with a new random secret if
/// missing; returns its path.
pub fn relay_secret_load_or_create(dir: &Path, dc: &str) -> Result<PathBuf, CredentialError> {
    let path = relay_secret_file(dir, dc);
    create_if_missing(&path)?;
    read_password(&path)?;
    Ok(path)
}

/// The password file of `user` in `dir`.
pub fn password_file(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("clickhouse-{user}.password"))
}

/// Reads a password from `path`: a file of mode 0600 or stricter holding
/// one line of printable ASCII (a final newline is allowed).
pub fn read_password(path: &Path) -> Result<String, CredentialError> {
    let io = |source| CredentialError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CredentialError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let invalid = |why: &str| CredentialError::Invalid {
        path: path.to_path_buf(),
        why: why.to_string(),
    };
    if meta.len() > MAX_PASSWORD_BYTES as u64 + 1 {
        return Err(invalid(&format!(
            "longer than {MAX_PASSWORD_BYTES} bytes; it must hold the password alone"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    if password.is_empty() {
        return Err(invalid("empty; write the user's password in it"));
    }
    if !password.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "not one line of printable ASCII (no spaces, no control characters)",
        ));
    }
    Ok(password.to_string())
}

/// A new random password: 32 hexadecimal digits (128 bits).
fn generate() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `password` in hex, as `users.xml`'s
/// `password_sha256_hex` wants it.
pub fn sha256_hex(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Credentials {
    /// New random passwords.
    pub fn generate() -> Self {
        Self {
            writer: generate(),
            query: generate(),
            sql: generate(),
            cluster: generate(),
        }
    }

    /// Each user with its password.
    pub fn users(&self) -> [(&'static str, &str); 4] {
        [
            (WRITER_USER, &self.writer),
            (QUERY_USER, &self.query),
            (SQL_USER, &self.sql),
            (CLUSTER_USER, &self.cluster),
        ]
    }

    /// Reads every user's password file from `dir`.
    pub fn load(dir: &Path) -> Result<Self, CredentialError> {
        let read = |user| read_password(&password_file(dir, user));
        Ok(Self {
            writer: read(WRITER_USER)?,
            query: read(QUERY_USER)?,
            sql: read(SQL_USER)?,
            cluster: read(CLUSTER_USER)?,
        })
    }

    /// Reads the passwords in `dir`, first creating (folder mode 0700, files
    /// 0600) those missing with new random passwords; a file already there
    /// is kept, so rendering again changes no password.
    pub fn load_or_create(dir: &Path) -> Result<Self, CredentialError> {
        for user in [WRITER_USER, QUERY_USER, SQL_USER, CLUSTER_USER] {
            create_if_missing(&password_file(dir, user))?;
        }
        Self::load(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_created_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let first = Credentials::load_or_create(&secrets).unwrap();
        assert_eq!(first, Credentials::load_or_create(&secrets).unwrap());
        assert_ne!(first.writer, first.query);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secrets), 0o700);
        let writer = password_file(&secrets, WRITER_USER);
        assert_eq!(mode(&writer), 0o600);
        assert_eq!(format!("{first:?}"), "Credentials { .. }");

        std::fs::set_permissions(&writer, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::load(&secrets).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&writer, std::fs::Permissions::from_mode(0o600)).unwrap();
        for (text, why) in [
            ("", "empty"),
            ("\n", "empty"),
            ("a b\n", "printable ASCII"),
            ("a\nb\n", "printable ASCII"),
        ] {
            std::fs::write(&writer, text).unwrap();
            let e = read_password(&writer).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        std::fs::write(&writer, "x".repeat(MAX_PASSWORD_BYTES + 2)).unwrap();
        assert!(read_password(&writer).is_err());
        std::fs::write(&writer, "s3cret\n").unwrap();
        assert_eq!(read_password(&writer).unwrap(), "s3cret");
    }

    #[test]
    fn hashes_are_clickhouses() {
        // `echo -n secret | sha256sum`
        assert_eq!(
            sha256_hex("secret"),
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
    }
}
