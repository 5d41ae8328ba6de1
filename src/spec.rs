//! `layers.toml`: reading it, checking it, and resolving it into a [`Plan`].
//!
//! Reading is serde with `deny_unknown_fields` ([`raw`]); resolving turns
//! raw strings into checked types and reports every mistake with
//! `file:line:col` and the key involved ([`resolve`]). This module never
//! touches the network or writes anything: a bad file changes nothing.

mod plan;
mod raw;
mod resolve;

use std::path::{Path, PathBuf};

pub use plan::*;
pub use resolve::AppOverride;

/// Something wrong with a `layers.toml`, located as precisely as we can.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{at}: {message}")]
    Syntax { at: Location, message: String },
    #[error("{at}: tier `{tier}` has unknown parent `{parent}`")]
    UnknownParent {
        at: Location,
        tier: String,
        parent: String,
    },
    #[error("{at}: tier `{tier}` is its own ancestor: {}", cycle.join(" → "))]
    Cycle {
        at: Location,
        tier: String,
        cycle: Vec<String>,
    },
    #[error("{at}: `{key}`: {source}")]
    BadDigest {
        at: Location,
        key: String,
        source: crate::digest::DigestError,
    },
    #[error("{at}: `{key}`: a download needs `sha256` or `sha512` so its bytes can be checked")]
    MissingDigest { at: Location, key: String },
    #[error("{at}: `{key}`: {} does not exist", path.display())]
    MissingFile {
        at: Location,
        key: String,
        path: PathBuf,
    },
    #[error(
        "{at}: `{key}`: pattern {pattern} matches {count} files, expected exactly one{}",
        list(matches)
    )]
    GlobMatches {
        at: Location,
        key: String,
        pattern: String,
        count: usize,
        matches: Vec<PathBuf>,
    },
    #[error("{at}: `{key}`: invalid glob `{pattern}`: {reason}")]
    BadGlob {
        at: Location,
        key: String,
        pattern: String,
        reason: String,
    },
    #[error("{at}: a source needs exactly one of path, tar, deb, war, content, symlink, dir; found {}", if found.is_empty() { "none".to_string() } else { found.join(", ") })]
    SourceKind { at: Location, found: Vec<String> },
    #[error("{at}: `{key}` does not apply to a `{kind}` source")]
    KeyNotForKind { at: Location, key: String, kind: String },
    #[error("{at}: `{key}`: `{path}` is not allowed: {reason}")]
    BadPath {
        at: Location,
        key: String,
        path: String,
        reason: crate::spec::ImagePathError,
    },
    #[error("{at}: `{key}`: `{value}` is not {expected}")]
    BadValue {
        at: Location,
        key: String,
        value: String,
        expected: &'static str,
    },
    #[error("{at}: tier `{tier}` sets both `parent` and `base`; pick one")]
    ParentAndBase { at: Location, tier: String },
    #[error("{at}: app `{name}` clashes with the tier of the same name")]
    NameClash { at: Location, name: String },
    #[error("{at}: `[apps.{name}]` needs an `[app]` template with a `parent`")]
    NoAppTemplate { at: Location, name: String },
    #[error("app `{name}`: WAR {} does not exist", path.display())]
    MissingWar { name: String, path: PathBuf },
    #[error("{}: declares no tiers", file.display())]
    Empty { file: PathBuf },
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return String::new();
    }
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    format!(": {}", names.join(", "))
}

pub type Result<T, E = SpecError> = std::result::Result<T, E>;

/// Reads, checks and resolves a `layers.toml`. `apps` adds or replaces
/// `[apps.NAME]` entries (the CLI's `--war NAME=FILE`).
pub fn load(path: &Path, apps: &[AppOverride]) -> Result<Plan> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    resolve::resolve(path, &text, apps)
}

/// Resolves config text as if it were read from `path` (relative source
/// paths are taken from `path`'s directory).
pub fn parse(path: &Path, text: &str, apps: &[AppOverride]) -> Result<Plan> {
    resolve::resolve(path, text, apps)
}
