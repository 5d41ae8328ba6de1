//! `strata serve --config FILE`: the registry's TOML configuration. Flags
//! given on the command line override it; unknown keys are errors that
//! name the file, line and column.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on (default 127.0.0.1:5000).
    pub listen: Option<SocketAddr>,
    /// Data directory (default ./strata-data).
    pub data: Option<PathBuf>,
    #[serde(default)]
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Credentials file (default DATA/credentials).
    pub credentials: Option<PathBuf>,
    #[serde(default)]
    pub open_push: bool,
    #[serde(default)]
    pub pull_auth: bool,
    /// Anonymous reads of the API, dashboard and `/metrics` (tokens by
    /// default).
    #[serde(default)]
    pub public_read: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(default)]
    pub allow_delete: bool,
    #[serde(default)]
    pub max_blob_mib: Option<u64>,
    /// Upload sessions idle for longer than this are purged, e.g. "24h"
    /// (default: `uploads::DEFAULT_UPLOAD_TTL`, 24 h).
    #[serde(default, deserialize_with = "duration")]
    pub upload_ttl: Option<Duration>,
    /// Refuse foreign (non-distributable) layers that were not pushed
    /// (accepted with `urls` by default).
    #[serde(default)]
    pub refuse_foreign_layers: bool,
    /// Accept an index naming manifests the repository does not have.
    #[serde(default)]
    pub allow_sparse_index: bool,
}

/// `90s`, `30m`, `2h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration like 90s, 30m, 2h or 7d");
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => None,
    };
    secs.map(Duration::from_secs).ok_or_else(bad)
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map(Some).map_err(serde::de::Error::custom)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}:{line}:{col}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
}

impl ServeConfig {
    /// Reads a config file; relative paths in it are taken from its folder.
    pub fn load(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: ServeConfig = toml::from_str(&text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = offset - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                col,
                message: e.message().trim_end().to_string(),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(d) = cfg.data.as_mut() {
            fix(d);
        }
        if let Some(c) = cfg.auth.credentials.as_mut() {
            fix(c);
        }
        if let Some(t) = cfg.tls.as_mut() {
            fix(&mut t.cert);
            fix(&mut t.key);
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_name_line_and_column() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("serve.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:0\"\n[auth]\nopen_pushh = true\n").unwrap();
        let e = ServeConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("serve.toml:3:1"), "{e}");
        assert!(e.contains("open_pushh"), "{e}");
        std::fs::write(&p, "data = \"d\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        let c = ServeConfig::load(&p).unwrap();
        assert_eq!(c.data.unwrap(), d.path().join("d"));
        assert_eq!(c.storage.upload_ttl, None);
        assert_eq!(c.tls.unwrap().key, d.path().join("k.pem"));
        std::fs::write(&p, "[storage]\nupload_ttl = \"90m\"\n").unwrap();
        let c = ServeConfig::load(&p).unwrap();
        assert_eq!(c.storage.upload_ttl, Some(Duration::from_secs(5400)));
        std::fs::write(&p, "[storage]\nupload_ttl = \"soon\"\n").unwrap();
        let e = ServeConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("serve.toml:2:") && e.contains("`soon` is not a duration"),
            "{e}"
        );
    }
}
