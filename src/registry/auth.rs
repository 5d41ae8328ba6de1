//! Registry credentials: tokens in a file, checked in constant time.
//!
//! The credentials file (`DATA/credentials` unless configured) holds one
//! `NAME:SHA256HEX[:ROLE]` line per token; the token itself is shown once,
//! when `strata token create` makes it, and never stored. A request proves
//! a token with `Authorization: Bearer TOKEN` or `Basic base64(NAME:TOKEN)`.
//!
//! Roles: `read` pulls and reads the API, `deploy` also pushes, prewarms,
//! deploys and rolls back, `admin` also creates tokens through the API. A
//! line without a role is `deploy` (the tokens made before roles existed
//! were push tokens).
//!
//! A running server rereads the file when it changes (its modification
//! time or length), so a token `strata token create` adds works at once
//! and a line removed by hand stops working at once.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}: not a `NAME:SHA256HEX[:ROLE]` credential line", path.display())]
    BadLine { path: PathBuf, line: usize },
    #[error("unknown role `{0}` (read, deploy or admin)")]
    BadRole(String),
    #[error("token name `{0}` must be [A-Za-z0-9._-]+")]
    BadName(String),
    #[error("token name `anonymous` is reserved for callers without a token")]
    ReservedName,
}

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Deploy,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Deploy => "deploy",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;
    fn from_str(s: &str) -> Result<Role, AuthError> {
        match s {
            "read" => Ok(Role::Read),
            "deploy" => Ok(Role::Deploy),
            "admin" => Ok(Role::Admin),
            _ => Err(AuthError::BadRole(s.to_string())),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tokens the server accepts, each with its role. Clones share the
/// list, so a token an admin creates through the API is accepted by the
/// registry and the API at once.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    hashes: std::sync::Arc<std::sync::RwLock<Vec<Entry>>>,
    /// The file the tokens come from, when they come from one.
    source: Option<std::sync::Arc<Source>>,
}

/// A credentials file and its (modification time, length) when last read.
#[derive(Debug)]
struct Source {
    path: PathBuf,
    seen: std::sync::Mutex<Option<(std::time::SystemTime, u64)>>,
}

fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    fs::metadata(path).and_then(|m| Ok((m.modified()?, m.len()))).ok()
}

/// A token's name, the sha256 of the token, and its role.
type Entry = (String, [u8; 32], Role);

pub(crate) fn sha(token: &str) -> [u8; 32] {
    let d = Digest::sha256_of(token.as_bytes());
    let mut out = [0u8; 32];
    hex::decode_to_slice(d.hex(), &mut out).expect("a sha256 digest is 32 bytes of hex");
    out
}

/// Equality whose time does not depend on where the inputs differ.
pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The entries of a credentials file; a missing file has none.
fn read_entries(path: &Path) -> Result<Vec<Entry>, AuthError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(AuthError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut hashes = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || AuthError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
        };
        let (name, rest) = line.split_once(':').ok_or_else(bad)?;
        let (hexhash, role) = match rest.split_once(':') {
            Some((h, r)) => (h, r.parse().map_err(|_| bad())?),
            None => (rest, Role::Deploy),
        };
        let mut h = [0u8; 32];
        hex::decode_to_slice(hexhash, &mut h).map_err(|_| bad())?;
        hashes.push((name.to_string(), h, role));
    }
    Ok(hashes)
}

impl Credentials {
    /// Reads a credentials file (a missing file means no tokens) and
    /// rereads it whenever it changes.
    pub fn load(path: &Path) -> Result<Credentials, AuthError> {
        let seen = stamp(path);
        let hashes = read_entries(path)?;
        Ok(Credentials {
            hashes: std::sync::Arc::new(std::sync::RwLock::new(hashes)),
            source: Some(std::sync::Arc::new(Source {
                path: path.to_path_buf(),
                seen: std::sync::Mutex::new(seen),
            })),
        })
    }

    /// Rereads the file when its modification time or length changed. A
    /// file that no longer reads or parses keeps the tokens read last
    /// (and says so in the log); a removed file means no tokens.
    fn refresh(&self) {
        let Some(src) = &self.source else { return };
        let mut seen = src.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&src.path);
        if now == *seen {
            return;
        }
        *seen = now;
        match read_entries(&src.path) {
            Ok(entries) => {
                *self.hashes.write().unwrap_or_else(|e| e.into_inner()) = entries;
                tracing::info!("credentials: reread {}", src.path.display());
            }
            Err(e) => tracing::error!("credentials: {e}; keeping the tokens read before"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.refresh();
        self.hashes.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Creates a token with `role` in the file at `path` (see
    /// [`create_token_with_role`]) and accepts it from now on.
    pub fn create(&self, path: &Path, name: &str, role: Role) -> Result<String, AuthError> {
        let token = create_token_with_role(path, name, role)?;
        self.hashes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), sha(&token), role));
        Ok(token)
    }

    /// The token name an `Authorization` header proves, if any.
    pub fn check(&self, authorization: Option<&str>) -> Option<String> {
        self.check_role(authorization).map(|(name, _)| name)
    }

    /// The token name and role an `Authorization` header proves, if any.
    pub fn check_role(&self, authorization: Option<&str>) -> Option<(String, Role)> {
        let value = authorization?.trim();
        let token = if let Some(t) = value.strip_prefix("Bearer ") {
            t.trim().to_string()
        } else if let Some(b) = value.strip_prefix("Basic ") {
            let raw = base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()?;
            let text = String::from_utf8(raw).ok()?;
            text.split_once(':')?.1.to_string()
        } else {
            return None;
        };
        let presented = sha(&token);
        self.refresh();
        // Compare against every entry, so the time does not tell which matched.
        let mut found = None;
        for (name, h, role) in self.hashes.read().unwrap_or_else(|e| e.into_inner()).iter() {
            if constant_time_eq(h, &presented) && found.is_none() {
                found = Some((name.clone(), *role));
            }
        }
        found
    }
}

/// Creates a `deploy` token called `name`, appends its hash to `path` and
/// returns the token (shown once).
pub fn create_token(path: &Path, name: &str) -> Result<String, AuthError> {
    create_token_with_role(path, name, Role::Deploy)
}

/// Creates a token with `role`; see [`create_token`].
pub fn create_token_with_role(path: &Path, name: &str, role: Role) -> Result<String, AuthError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(AuthError::BadName(name.to_string()));
    }
    if name == "anonymous" {
        // The API and the audit log call a caller without a token that.
        return Err(AuthError::ReservedName);
    }
    // Two v4 UUIDs: 244 bits from the operating system's random source.
    let token = format!(
        "st_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let io = |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mut open = fs::OpenOptions::new();
    open.create(true).append(true);
    #[cfg(unix)]
    {
        // Private from the moment it exists, whatever the umask.
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    let mut f = open.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        // A file made before (or by hand) is made private too.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    let line = format!("{name}:{}:{role}\n", hex::encode(sha(&token)));
    f.write_all(line.as_bytes()).map_err(io)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_wrong_ones_fail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("credentials");
        let t = create_token(&p, "jenkins").unwrap();
        let c = Credentials::load(&p).unwrap();
        assert_eq!(c.check(Some(&format!("Bearer {t}"))).as_deref(), Some("jenkins"));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("jenkins:{t}"));
        assert_eq!(
            c.check(Some(&format!("Basic {basic}"))).as_deref(),
            Some("jenkins")
        );
        assert_eq!(c.check(Some("Bearer nope")), None);
        assert_eq!(c.check(None), None);
        assert!(create_token(&p, "bad name").is_err());
        assert!(matches!(
            create_token(&p, "anonymous"),
            Err(AuthError::ReservedName)
        ));
    }

    #[test]
    fn roles_are_kept_and_old_lines_are_deployers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("credentials");
        let r = create_token_with_role(&p, "viewer", Role::Read).unwrap();
        let a = create_token_with_role(&p, "ops", Role::Admin).unwrap();
        // A line from before roles existed.
        let old = "st_old";
        let mut text = std::fs::read_to_string(&p).unwrap();
        text.push_str(&format!("jenkins:{}\n", hex::encode(sha(old))));
        std::fs::write(&p, text).unwrap();
        let c = Credentials::load(&p).unwrap();
        let role = |t: &str| c.check_role(Some(&format!("Bearer {t}"))).map(|x| x.1);
        assert_eq!(role(&r), Some(Role::Read));
        assert_eq!(role(&a), Some(Role::Admin));
        assert_eq!(role(old), Some(Role::Deploy));
        assert!(Role::Read < Role::Deploy && Role::Deploy < Role::Admin);
        std::fs::write(&p, format!("x:{}:root\n", hex::encode(sha(old)))).unwrap();
        let e = Credentials::load(&p).unwrap_err().to_string();
        assert!(e.contains(":1:"), "{e}");
    }

    #[test]
    fn a_changed_file_is_reread_at_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("credentials");
        let c = Credentials::load(&p).unwrap();
        assert!(c.is_empty());
        // Added by another process (`strata token create`) after loading.
        let t = create_token_with_role(&p, "viewer", Role::Read).unwrap();
        let bearer = format!("Bearer {t}");
        assert_eq!(
            c.check_role(Some(&bearer)),
            Some(("viewer".to_string(), Role::Read))
        );
        // A clone (the API's) sees the same tokens.
        assert_eq!(c.clone().check(Some(&bearer)).as_deref(), Some("viewer"));
        // A line removed by hand stops working; a broken file keeps the
        // tokens read before.
        let u = create_token(&p, "jenkins").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("viewer:"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&p, kept).unwrap();
        assert_eq!(c.check(Some(&bearer)), None);
        assert_eq!(c.check(Some(&format!("Bearer {u}"))).as_deref(), Some("jenkins"));
        std::fs::write(&p, "not a credential line at all\n").unwrap();
        assert_eq!(c.check(Some(&format!("Bearer {u}"))).as_deref(), Some("jenkins"));
        std::fs::remove_file(&p).unwrap();
        assert!(c.is_empty());
    }
}
