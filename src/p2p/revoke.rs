//! Revoked nodes (`strata cluster revoke NAME`): names whose
//! certificates the origin refuses from then on — in the TLS handshake
//! (see `tls::Identity::server_config`), on connections already open (the
//! tracker checks each message), and at join and renewal.
//!
//! The list is `DATA/revoked-nodes` under the origin's data directory,
//! one `NAME UNIX_SECONDS` line per node; the running origin rereads it
//! when its modification time changes, so a revocation takes effect
//! without a restart. A name stays revoked: a host that must come back
//! joins under a new name (or its line is removed by hand).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The file's name in the origin's data directory.
pub const FILE: &str = "revoked-nodes";

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("node name `{0}` must be letters, digits, '.', '_' or '-'")]
    BadName(String),
}

/// The names in the file's text.
pub fn parse(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !n.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Adds `name` to the list in `data` (the origin's data directory).
/// Revoking a name twice changes nothing.
pub fn revoke(data: &Path, name: &str) -> Result<bool, RevokeError> {
    use std::io::Write;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(RevokeError::BadName(name.to_string()));
    }
    let path = data.join(FILE);
    let io = |source| RevokeError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(data).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&path)
        .map_err(io)?;
    f.lock().map_err(io)?;
    let text = std::fs::read_to_string(&path).map_err(io)?;
    if parse(&text).contains(name) {
        return Ok(false);
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(f, "{name} {now}").map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(true)
}

/// A file's modification time and length: when either changes, it is
/// read again.
type Stamp = (SystemTime, u64);

/// The origin's view of the list, reread when the file changes.
#[derive(Debug)]
pub struct Revoked {
    path: PathBuf,
    /// The file's (mtime, length) when last read, and its names.
    seen: Mutex<(Option<Stamp>, HashSet<String>)>,
}

impl Revoked {
    /// The list in `data` (an absent file: nobody is revoked).
    pub fn open(data: &Path) -> Revoked {
        Revoked {
            path: data.join(FILE),
            seen: Mutex::new((None, HashSet::new())),
        }
    }

    /// Whether `name` is revoked now. A file that cannot be read keeps
    /// the last list read (and says so in the log).
    pub fn contains(&self, name: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| Ok((m.modified()?, m.len())))
            .ok();
        if mtime != seen.0 {
            match std::fs::read_to_string(&self.path) {
                Ok(text) => *seen = (mtime, parse(&text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => *seen = (None, HashSet::new()),
                Err(e) => tracing::error!("p2p: the revocation list {}: {e}", self.path.display()),
            }
        }
        seen.1.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_names_are_seen_at_once() {
        let d = tempfile::tempdir().unwrap();
        let r = Revoked::open(d.path());
        assert!(!r.contains("host-1"));
        assert!(revoke(d.path(), "host-1").unwrap());
        assert!(!revoke(d.path(), "host-1").unwrap(), "twice is once");
        assert!(r.contains("host-1") && !r.contains("host-2"));
        assert!(matches!(revoke(d.path(), "a/b"), Err(RevokeError::BadName(_))));
        assert_eq!(
            parse("# comment\nh1 5\n\nh2\n"),
            ["h1", "h2"].map(String::from).into()
        );
    }
}
