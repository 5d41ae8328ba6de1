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

use crate::digest::{Digest, Hasher};
use crate::oci::{Index, Manifest};
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
    /// sha256 state of upload sessions, with the offset it covers. Lost on
    /// restart; then the finished upload is hashed again from disk.
    pub(super) hashers: Mutex<HashMap<String, (Hasher, u64)>>,
    /// Upload sessions a request holds (see `uploads.rs`).
    pub(super) busy: super::uploads::Busy,
    /// Upload sessions idle for longer than this are purged.
    pub(super) upload_ttl: Duration,
    /// Largest blob an upload may grow to.
    max_blob: u64,
    /// Told of every blob an upload adds to the store (the P2P origin
    /// makes its piece table then).
    on_new_blob: OnceLock<NewBlobHook>,
}

/// What a manifest push stored.
pub struct PutManifest {
    pub digest: Digest,
    /// The manifest's `subject`, echoed as `OCI-Subject`.
    pub subject: Option<Digest>,
}

/// Manifest media types this registry stores and serves.
const MANIFEST_TYPES: [&str; 4] = [
    crate::oci::MEDIA_MANIFEST,
    crate::oci::MEDIA_INDEX,
    crate::oci::MEDIA_DOCKER_MANIFEST,
    crate::oci::MEDIA_DOCKER_LIST,
];

/// The media type of a pushed manifest: its own `mediaType` when it has
/// one (a `Content-Type` that says otherwise is refused), else the
/// `Content-Type` it was pushed with, else an OCI image manifest. Only
/// manifest types are accepted.
pub fn manifest_media_type(body: Option<&serde_json::Value>, content_type: Option<&str>) -> Result<String> {
    let media = match (body, content_type) {
        (Some(v), ct) => {
            let Some(m) = v.as_str() else {
                return Err(RegistryError::ManifestInvalid(
                    "`mediaType` is not a string".into(),
                ));
            };
            if let Some(ct) = ct
                && ct != m
            {
                return Err(RegistryError::ManifestInvalid(format!(
                    "Content-Type `{ct}` contradicts the manifest's mediaType `{m}`"
                )));
            }
            m
        }
        (None, Some(ct)) => ct,
        (None, None) => crate::oci::MEDIA_MANIFEST,
    };
    if !MANIFEST_TYPES.contains(&media) {
        return Err(RegistryError::ManifestInvalid(format!(
            "`{media}` is not a manifest media type ({})",
            MANIFEST_TYPES.join(", ")
        )));
    }
    Ok(media.to_string())
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

    fn blob_marker(repo: &Path, d: &Digest) -> PathBuf {
        repo.join("_blobs").join(d.algorithm().name()).join(d.hex())
    }

    /// Links a stored blob into a repository (after an upload or a mount).
    pub fn link_blob(&self, name: &str, d: &Digest) -> Result<()> {
        let repo = self.repo(name)?;
        Self::write_small(&Self::blob_marker(&repo, d), b"")
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

    fn manifest_marker(repo: &Path, d: &Digest) -> PathBuf {
        repo.join("_manifests").join(d.algorithm().name()).join(d.hex())
    }

    /// The manifest bytes and the media type this repository serves them
    /// with.
    pub fn manifest(&self, name: &str, reference: &str) -> Result<(Digest, Vec<u8>, String)> {
        let d = self.resolve(name, reference)?;
        let bytes = self.store.read_blob(&d)?;
        let recorded = fs::read_to_string(Self::manifest_marker(&self.repo(name)?, &d)).unwrap_or_default();
        let media = if !recorded.trim().is_empty() {
            recorded.trim().to_string()
        } else {
            // Pushed before media types were kept per repository: the
            // body's own type, then the old store-wide record.
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
                .or_else(|| {
                    self.store
                        .read_meta("media-type", d.hex())
                        .map(|m| String::from_utf8_lossy(&m).into_owned())
                })
                .unwrap_or_else(|| crate::oci::MEDIA_MANIFEST.to_string())
        };
        Ok((d, bytes, media))
    }

    /// Whether `d` is a blob of the repository at `repo` (linked and stored).
    fn has_blob(&self, repo: &Path, d: &Digest) -> bool {
        Self::blob_marker(repo, d).is_file() && self.store.has(d)
    }

    /// Whether `d` is a manifest of the repository at `repo`.
    fn has_manifest(&self, repo: &Path, d: &Digest) -> bool {
        Self::manifest_marker(repo, d).is_file() && self.store.has(d)
    }

    /// Stores a manifest after checking that everything it names exists.
    pub fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        bytes: &[u8],
        content_type: Option<&str>,
    ) -> Result<PutManifest> {
        let repo = self.repo(name)?;
        if bytes.len() > MAX_MANIFEST {
            return Err(RegistryError::ManifestTooLarge);
        }
        let expected = if reference.contains(':') {
            Some(
                reference
                    .parse::<Digest>()
                    .map_err(|_| RegistryError::DigestInvalid(reference.to_string()))?,
            )
        } else if valid_tag(reference) {
            None
        } else {
            return Err(RegistryError::TagInvalid(reference.to_string()));
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let media = manifest_media_type(value.get("mediaType"), content_type)?;
        // A manifest with a `subject` is a referrer of that subject.
        let subject: Option<Digest> = value
            .get("subject")
            .and_then(|s| s.get("digest"))
            .and_then(|d| d.as_str())
            .and_then(|d| d.parse().ok());
        let artifact_type = value
            .get("artifactType")
            .and_then(|a| a.as_str())
            .or_else(|| {
                value
                    .get("config")
                    .and_then(|c| c.get("mediaType"))
                    .and_then(|m| m.as_str())
            })
            .map(str::to_string);
        let annotations = value.get("annotations").cloned();
        let is_index = media == crate::oci::MEDIA_INDEX || media == crate::oci::MEDIA_DOCKER_LIST;
        if is_index {
            let index: Index =
                serde_json::from_value(value).map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
            for m in &index.manifests {
                if !self.has_manifest(&repo, &m.digest) {
                    return Err(RegistryError::ManifestBlobUnknown(m.digest.clone()));
                }
            }
        } else {
            let m: Manifest =
                serde_json::from_value(value).map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
            for d in std::iter::once(&m.config).chain(&m.layers) {
                if !self.has_blob(&repo, &d.digest) {
                    return Err(RegistryError::ManifestBlobUnknown(d.digest.clone()));
                }
            }
        }
        let (d, _) = self.store.put(bytes, expected.as_ref()).map_err(|e| match e {
            StoreError::DigestMismatch { expected, actual, .. } => {
                RegistryError::DigestMismatch { expected, actual }
            }
            other => other.into(),
        })?;
        // The media type is the repository's record of the manifest: a push
        // elsewhere never changes it.
        Self::write_small(&Self::manifest_marker(&repo, &d), media.as_bytes())?;
        if expected.is_none() {
            Self::write_small(&repo.join("_tags").join(reference), d.to_string().as_bytes())?;
        }
        if let Some(sub) = &subject {
            let mut desc =
                serde_json::json!({ "mediaType": media, "digest": d.to_string(), "size": bytes.len() });
            if let Some(a) = &artifact_type {
                desc["artifactType"] = serde_json::Value::String(a.clone());
            }
            if let Some(a) = annotations {
                desc["annotations"] = a;
            }
            let path = Self::referrers_dir(&repo, sub).join(d.hex());
            Self::write_small(&path, desc.to_string().as_bytes())?;
        }
        Ok(PutManifest { digest: d, subject })
    }

    fn referrers_dir(repo: &Path, subject: &Digest) -> PathBuf {
        repo.join("_referrers")
            .join(subject.algorithm().name())
            .join(subject.hex())
    }

    /// Descriptors of the manifests whose `subject` is `subject`, filtered
    /// by artifact type when given. An unknown subject has no referrers.
    pub fn referrers(
        &self,
        name: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<serde_json::Value>> {
        let repo = self.repo(name)?;
        let mut out: Vec<serde_json::Value> = fs::read_dir(Self::referrers_dir(&repo, subject))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .filter(|d| {
                        // Only referrers whose manifest is still in the repository.
                        d["digest"]
                            .as_str()
                            .and_then(|x| x.parse::<Digest>().ok())
                            .is_some_and(|x| {
                                repo.join("_manifests")
                                    .join(x.algorithm().name())
                                    .join(x.hex())
                                    .is_file()
                            })
                    })
                    .filter(|d| artifact_type.is_none_or(|a| d["artifactType"].as_str() == Some(a)))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
        Ok(out)
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
    fn a_manifests_own_media_type_wins_and_must_agree() {
        use crate::oci::{MEDIA_DOCKER_MANIFEST, MEDIA_MANIFEST};
        let own = serde_json::json!(MEDIA_MANIFEST);
        let t = |body, ct| manifest_media_type(body, ct).map_err(|e| e.to_string());
        assert_eq!(t(Some(&own), None).unwrap(), MEDIA_MANIFEST);
        assert_eq!(t(Some(&own), Some(MEDIA_MANIFEST)).unwrap(), MEDIA_MANIFEST);
        let e = t(Some(&own), Some("text/plain")).unwrap_err();
        assert!(
            e.contains("`text/plain` contradicts") && e.contains(MEDIA_MANIFEST),
            "{e}"
        );
        assert_eq!(
            t(None, Some(MEDIA_DOCKER_MANIFEST)).unwrap(),
            MEDIA_DOCKER_MANIFEST
        );
        assert_eq!(t(None, None).unwrap(), MEDIA_MANIFEST);
        assert!(t(None, Some("text/plain")).is_err());
        assert!(t(Some(&serde_json::json!("text/plain")), None).is_err());
    }

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
