//! Join tokens (`strata cluster token`): what lets a new agent get a
//! certificate from the server. A token expires (default after an hour)
//! and may be limited to a number of uses; only its sha256 is kept, in
//! `CA_DIR/join-tokens`, one line per token: `SHA256 EXPIRES LEFT/USES`
//! (Unix seconds; `-` for unlimited uses). Lines without an expiry (made
//! before tokens expired) are refused.
//!
//! `check` is the pure rule over the file's text; `create` and `redeem`
//! hold `join-tokens.lock` while they read and rewrite it, so two joins
//! never spend one use twice.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::registry::auth::{constant_time_eq, sha};

/// How long a token is valid when `--ttl` is not given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the join token is not valid (strata cluster token makes one)")]
    Unknown,
    #[error("the join token expired {ago} s ago (strata cluster token makes a new one)")]
    Expired { ago: i64 },
    #[error("the join token has been used up ({uses} uses; strata cluster token makes a new one)")]
    UsedUp { uses: u32 },
    #[error(
        "the join token has no expiry (made by an older strata); make a new one with strata cluster token"
    )]
    NoExpiry,
}

pub type Result<T, E = TokenError> = std::result::Result<T, E>;

/// One line of the token file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    hash: [u8; 32],
    expires: Option<i64>,
    /// (left, of) uses; None: unlimited.
    uses: Option<(u32, u32)>,
}

impl Entry {
    fn parse(line: &str) -> Option<Entry> {
        let mut f = line.split_whitespace();
        let mut hash = [0u8; 32];
        hex::decode_to_slice(f.next()?, &mut hash).ok()?;
        let expires = f.next().and_then(|e| e.parse().ok());
        let uses = f.next().and_then(|u| {
            let (left, of) = u.split_once('/')?;
            Some((left.parse().ok()?, of.parse().ok()?))
        });
        Some(Entry { hash, expires, uses })
    }

    fn line(&self) -> String {
        let expires = self.expires.map_or("-".to_string(), |e| e.to_string());
        let uses = self.uses.map_or("-".to_string(), |(l, o)| format!("{l}/{o}"));
        format!("{} {expires} {uses}", hex::encode(self.hash))
    }
}

/// Checks `token` against the file's text at `now` (Unix seconds) and
/// spends one use: the file's new text, when it changed.
pub fn check(list: &str, token: &str, now: i64) -> Result<Option<String>> {
    let presented = sha(token);
    let mut entries: Vec<Entry> = list.lines().filter_map(Entry::parse).collect();
    // Every line compared, in constant time each.
    let mut found = None;
    for (i, e) in entries.iter().enumerate() {
        if constant_time_eq(&e.hash, &presented) {
            found = Some(i);
        }
    }
    let e = &mut entries[found.ok_or(TokenError::Unknown)?];
    let expires = e.expires.ok_or(TokenError::NoExpiry)?;
    if now >= expires {
        return Err(TokenError::Expired { ago: now - expires });
    }
    match &mut e.uses {
        None => Ok(None),
        Some((0, of)) => Err(TokenError::UsedUp { uses: *of }),
        Some((left, _)) => {
            *left -= 1;
            let text: String = entries.iter().map(|e| e.line() + "\n").collect();
            Ok(Some(text))
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TokenError + '_ {
    move |source| TokenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Holds `CA_DIR/join-tokens.lock` (an exclusive `flock`) until dropped.
fn lock(ca_dir: &Path) -> Result<std::fs::File> {
    let path = ca_dir.join("join-tokens.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    f.lock().map_err(io(&path))?;
    Ok(f)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A new token valid for `ttl`, for `uses` joins (None: any number).
pub fn create(ca_dir: &Path, ttl: Duration, uses: Option<u32>) -> Result<String> {
    use std::io::Write;
    let token = format!(
        "join_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let entry = Entry {
        hash: sha(&token),
        expires: Some(now().saturating_add(ttl.as_secs() as i64)),
        uses: uses.map(|u| (u, u)),
    };
    let _held = lock(ca_dir)?;
    let path = ca_dir.join("join-tokens");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    writeln!(f, "{}", entry.line()).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))?;
    Ok(token)
}

/// Spends one use of `token`, or says why it is refused.
pub fn redeem(ca_dir: &Path, token: &str) -> Result<()> {
    let _held = lock(ca_dir)?;
    let path = ca_dir.join("join-tokens");
    let list = match std::fs::read_to_string(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(&path)(e)),
    };
    if let Some(text) = check(&list, token, now())? {
        crate::store::write_atomic(&path, text.as_bytes()).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(token: &str, expires: &str, uses: &str) -> String {
        format!("{} {expires} {uses}\n", hex::encode(sha(token)))
    }

    #[test]
    fn tokens_expire_run_out_and_are_spent_once_per_join() {
        let list = line("a", "100", "-") + &line("b", "100", "2/2") + &line("old", "", "");
        assert_eq!(check(&list, "a", 99).unwrap(), None);
        assert!(matches!(
            check(&list, "a", 100),
            Err(TokenError::Expired { ago: 0 })
        ));
        assert!(matches!(check(&list, "x", 0), Err(TokenError::Unknown)));
        assert!(matches!(check(&list, "old", 0), Err(TokenError::NoExpiry)));
        let once = check(&list, "b", 0).unwrap().unwrap();
        assert!(once.contains(" 100 1/2\n"), "{once}");
        let twice = check(&once, "b", 0).unwrap().unwrap();
        let e = check(&twice, "b", 0).unwrap_err();
        assert!(matches!(e, TokenError::UsedUp { uses: 2 }), "{e}");
        assert!(e.to_string().contains("used up (2 uses"));
        // The other lines survive a rewrite.
        assert_eq!(check(&twice, "a", 0).unwrap(), None);
    }

    #[test]
    fn create_and_redeem_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let t = create(d.path(), DEFAULT_TTL, Some(1)).unwrap();
        assert!(matches!(
            redeem(d.path(), "join_nothing"),
            Err(TokenError::Unknown)
        ));
        redeem(d.path(), &t).unwrap();
        assert!(matches!(
            redeem(d.path(), &t),
            Err(TokenError::UsedUp { uses: 1 })
        ));
        let forever = create(d.path(), DEFAULT_TTL, None).unwrap();
        redeem(d.path(), &forever).unwrap();
        redeem(d.path(), &forever).unwrap();
    }
}
