//! Registry state on disk: repositories, tags, manifests and upload
//! sessions. Synchronous and small; the HTTP layer calls it from blocking
//! sections.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::manifests::ManifestPolicy;
use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// Largest manifest accepted (the spec suggests at least 4 MiB).
pub const MAX_MANIFEST: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("{}: cannot use for TLS: {reason}", path.display())]
    Tls { path: PathBuf, reason: String },
    #[error("invalid repository name `{0}`")]
    NameInvalid(String),
    #[error("repository `{0}` is not known")]
    NameUnknown(String),
    #[error("invalid tag `{0}`")]
    TagInvalid(String),
    #[error("manifest `{0}` is not known")]
    ManifestUnknown(String),
    #[error("blob {0} is not known")]
    BlobUnknown(Digest),
    #[error("upload `{0}` is not known")]
    UploadUnknown(String),
    #[error("invalid digest `{0}`")]
    DigestInvalid(String),
    #[error("content does not match digest {expected} (got {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest references unknown blob {0}")]
    ManifestBlobUnknown(Digest),
    #[error(
        "manifest references foreign layer {0}, which was not pushed; this registry refuses foreign layers (--refuse-foreign-layers): push the blob"
    )]
    ForeignLayerRefused(Digest),
    #[error("manifest is larger than {MAX_MANIFEST} bytes")]
    ManifestTooLarge,
    #[error("the blob is larger than this registry accepts ({max} bytes; storage.max_blob_mib)")]
    BlobTooLarge { max: u64 },
    #[error("chunk starts at {got}, but the upload has {have} bytes")]
    RangeInvalid { have: u64, got: u64 },
    #[error("upload `{0}` is receiving another request")]
    UploadBusy(String),
    #[error("invalid Content-Range `{0}` (expected START-END, END included)")]
    ContentRangeInvalid(String),
    #[error("Content-Range {start}-{end} announces {} bytes, but the request carries {got}", end - start + 1)]
    ContentRangeLength { start: u64, end: u64, got: u64 },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegistryError {
    /// Whether the failure is a full disk (or quota), which the client
    /// should hear about as such.
    pub fn disk_full(&self) -> bool {
        let source = match self {
            RegistryError::Io { source, .. } | RegistryError::Store(StoreError::Io { source, .. }) => source,
            _ => return false,
        };
        matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
        )
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a registry calls with each blob an upload adds.
type NewBlobHook = Box<dyn Fn(&Digest) + Send + Sync>;

pub struct Registry {
    store: Store,
    pub(super) root: PathBuf,
    /// sha256 state of upload sessions, with the offset it covers (see
    /// `uploads::Running`). Lost on restart; then the finished upload is
    /// hashed again from disk.
    pub(super) hashers: Mutex<HashMap<String, std::sync::Arc<super::uploads::Running>>>,
    /// Upload sessions a request holds (see `uploads.rs`).
    pub(super) busy: super::uploads::Busy,
    /// Upload sessions idle for longer than this are purged.
    pub(super) upload_ttl: Duration,
    /// Largest blob an upload may grow to.
    max_blob: u64,
    /// What a manifest push may leave out.
    pub(super) manifest_policy: ManifestPolicy,
    /// Told of every blob an upload adds to the store (the P2P origin
    /// makes its piece table then).
    on_new_blob: OnceLock<NewBlobHook>,
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
pub fn valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    name.split('/').all(|part| {
        let b = part.as_bytes();
        if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'a'..=b'z' | b'0'..=b'9' => i += 1,
                b'.' => {
                    i += 1;
                    if !b
                        .get(i)
                        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    {
                        return false;
                    }
                }
                b'_' => {
                    i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 };
                    if !b
                        .get(i)
                        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    {
                        return false;
                    }
                }
                b'-' => {
                    while b.get(i) == Some(&b'-') {
                        i += 1;
                    }
                    if !b
                        .get(i)
                        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        true
    })
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c))
}

impl Registry {
    pub fn open(root: PathBuf) -> Result<Registry> {
        for sub in ["repos", "uploads"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let store = Store::open(root.join("store"))?;
        Ok(Registry {
            store,
            root,
            hashers: Mutex::new(HashMap::new()),
            busy: Default::default(),
            upload_ttl: super::uploads::DEFAULT_UPLOAD_TTL,
            max_blob: u64::MAX,
            manifest_policy: ManifestPolicy::default(),
            on_new_blob: OnceLock::new(),
        })
    }

    /// Calls `f` with the digest of every blob an upload adds from now on
    /// (once per registry; a second hook is refused). `f` runs on the
    /// request's thread: it must hand long work off.
    pub fn on_new_blob(&self, f: impl Fn(&Digest) + Send + Sync + 'static) -> bool {
        self.on_new_blob.set(Box::new(f)).is_ok()
    }

    /// Refuses uploads that grow past `bytes`.
    pub fn with_max_blob(mut self, bytes: u64) -> Registry {
        self.max_blob = bytes;
        self
    }

    /// Accepts foreign layers and sparse indexes as `policy` says.
    pub fn with_manifest_policy(mut self, policy: ManifestPolicy) -> Registry {
        self.manifest_policy = policy;
        self
    }

    /// Purges upload sessions idle for longer than `ttl`.
    pub fn with_upload_ttl(mut self, ttl: Duration) -> Registry {
        self.upload_ttl = ttl;
        self
    }

    pub fn upload_ttl(&self) -> Duration {
        self.upload_ttl
    }

    /// Tells the new-blob hook of a blob an upload added.
    pub(super) fn announce(&self, d: &Digest) {
        if let Some(f) = self.on_new_blob.get() {
            f(d);
        }
    }

    pub fn max_blob(&self) -> u64 {
        self.max_blob
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn repo(&self, name: &str) -> Result<PathBuf> {
        if !valid_name(name) {
            return Err(RegistryError::NameInvalid(name.to_string()));
        }
        Ok(self.root.join("repos").join(name))
    }

    pub(super) fn write_small(path: &Path, bytes: &[u8]) -> Result<()> {
        crate::store::write_atomic(path, bytes).map_err(io_err(path))
    }

    pub(super) fn blob_marker(repo: &Path, d: &Digest) -> PathBuf {
        repo.join("_blobs").join(d.algorithm().name()).join(d.hex())
    }

    /// Links a stored blob into a repository (after an upload or a mount).
    pub fn link_blob(&self, name: &str, d: &Digest) -> Result<()> {
        let repo = self.repo(name)?;
        Self::write_small(&Self::blob_marker(&repo, d), b"")
    }

    /// Whether `d` is a blob of the repository at `repo` (linked and stored).
    pub(super) fn has_blob(&self, repo: &Path, d: &Digest) -> bool {
        Self::blob_marker(repo, d).is_file() && self.store.has(d)
    }

    /// Whether repository `name` holds blob `d` (an invalid name holds
    /// nothing).
    pub fn repo_has_blob(&self, name: &str, d: &Digest) -> bool {
        self.repo(name).is_ok_and(|repo| self.has_blob(&repo, d))
    }

    /// Some repository that holds blob `d` (for a mount without `from`:
    /// every repository is readable by whoever may push).
    pub fn repo_holding_blob(&self, d: &Digest) -> Option<String> {
        if !self.store.has(d) {
            return None;
        }
        fn walk(dir: &Path, prefix: &str, d: &Digest, depth: usize) -> Option<String> {
            for e in fs::read_dir(dir).ok()?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('_') || depth > 16 || !e.path().is_dir() {
                    continue;
                }
                let full = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                if Registry::blob_marker(&e.path(), d).is_file() {
                    return Some(full);
                }
                if let Some(found) = walk(&e.path(), &full, d, depth + 1) {
                    return Some(found);
                }
            }
            None
        }
        walk(&self.root.join("repos"), "", d, 0)
    }

    /// The size of a blob that belongs to `name`; other repositories'
    /// blobs are not visible here (mount them first).
    pub fn blob_size(&self, name: &str, d: &Digest) -> Result<u64> {
        let repo = self.repo(name)?;
        if !Self::blob_marker(&repo, d).is_file() {
            return Err(RegistryError::BlobUnknown(d.clone()));
        }
        self.store
            .size(d)
            .map_err(|_| RegistryError::BlobUnknown(d.clone()))
    }

    /// Resolves a tag or digest of `name` to a manifest digest.
    pub fn resolve(&self, name: &str, reference: &str) -> Result<Digest> {
        let repo = self.repo(name)?;
        if !repo.is_dir() {
            return Err(RegistryError::NameUnknown(name.to_string()));
        }
        if reference.contains(':') {
            let d: Digest = reference
                .parse()
                .map_err(|_| RegistryError::DigestInvalid(reference.to_string()))?;
            let member = repo.join("_manifests").join(d.algorithm().name()).join(d.hex());
            if member.is_file() && self.store.has(&d) {
                return Ok(d);
            }
            return Err(RegistryError::ManifestUnknown(reference.to_string()));
        }
        if !valid_tag(reference) {
            return Err(RegistryError::TagInvalid(reference.to_string()));
        }
        let text = fs::read_to_string(repo.join("_tags").join(reference))
            .map_err(|_| RegistryError::ManifestUnknown(reference.to_string()))?;
        text.trim()
            .parse()
            .map_err(|_| RegistryError::ManifestUnknown(reference.to_string()))
    }

    /// Every repository name (a folder under `repos/` holding manifests),
    /// sorted.
    pub fn repositories(&self) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>, depth: usize) {
            let Ok(rd) = fs::read_dir(dir) else { return };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('_') || !e.path().is_dir() || depth > 16 {
                    continue;
                }
                let full = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                if e.path().join("_manifests").is_dir() {
                    out.push(full.clone());
                }
                walk(&e.path(), &full, out, depth + 1);
            }
        }
        let mut out = Vec::new();
        walk(&self.root.join("repos"), "", &mut out, 0);
        out.sort();
        out
    }

    /// Tags of a repository, sorted, after `last`, at most `n`.
    pub fn tags(&self, name: &str, n: Option<usize>, last: Option<&str>) -> Result<Vec<String>> {
        let repo = self.repo(name)?;
        if !repo.is_dir() {
            return Err(RegistryError::NameUnknown(name.to_string()));
        }
        let mut tags: Vec<String> = fs::read_dir(repo.join("_tags"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|t| valid_tag(t))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        if let Some(l) = last {
            tags.retain(|t| t.as_str() > l);
        }
        if let Some(n) = n {
            tags.truncate(n);
        }
        Ok(tags)
    }

    /// Deletes a tag, or a manifest by digest (with every tag naming it),
    /// from a repository. The bytes stay in the store until `strata gc`.
    pub fn delete_manifest(&self, name: &str, reference: &str) -> Result<()> {
        let repo = self.repo(name)?;
        let digest = self.resolve(name, reference)?;
        if !reference.contains(':') {
            let tag = repo.join("_tags").join(reference);
            return fs::remove_file(&tag).map_err(io_err(&tag));
        }
        let marker = repo
            .join("_manifests")
            .join(digest.algorithm().name())
            .join(digest.hex());
        fs::remove_file(&marker).map_err(io_err(&marker))?;
        if let Ok(rd) = fs::read_dir(repo.join("_tags")) {
            for e in rd.flatten() {
                let points_here = fs::read_to_string(e.path()).is_ok_and(|t| t.trim() == digest.to_string());
                if points_here {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Unlinks a blob from a repository.
    pub fn delete_blob(&self, name: &str, d: &Digest) -> Result<()> {
        let repo = self.repo(name)?;
        let marker = Self::blob_marker(&repo, d);
        fs::remove_file(&marker).map_err(|_| RegistryError::BlobUnknown(d.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        for ok in ["a", "strata/tomcat", "a.b/c_d/e__f/g-h/i--j", "0"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "A", "a/", "/a", "a//b", "a..b", "-a", "a-", "a___b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_tag("latest") && valid_tag("_x") && valid_tag("1.0-rc.1"));
        assert!(!valid_tag("-x") && !valid_tag(".x") && !valid_tag("") && !valid_tag(&"a".repeat(129)));
    }
}
