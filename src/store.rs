//! The content-addressed store shared by the builder and (later) the
//! registry: `blobs/<algorithm>/<hex>`, plus small metadata records.
//!
//! A blob becomes visible only by an atomic rename after its digest was
//! checked, so a killed process can leave a stray temporary file under
//! `tmp/` but never a half-written blob. Temporary files are removed the
//! next time the store is opened once they are older than a day.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::digest::{Algorithm, Digest, Hasher};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("digest mismatch: expected {expected}, got {actual} ({size} bytes); nothing was stored")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("blob {0} is not in the store")]
    NotFound(Digest),
    #[error("blob {digest} is not valid JSON of the expected kind: {source}")]
    BadJson {
        digest: Digest,
        source: serde_json::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Stale temporary files older than this are removed on open.
const TMP_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for sub in ["blobs/sha256", "blobs/sha512", "tmp", "meta"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let store = Store { root };
        store.clean_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn clean_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        let now = SystemTime::now();
        for e in rd.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > TMP_MAX_AGE);
            if old {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm().name()).join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn size(&self, d: &Digest) -> Result<u64> {
        let p = self.blob_path(d);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound(d.clone())),
            Err(e) => Err(io_err(&p)(e)),
        }
    }

    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(d.clone()),
            _ => io_err(&p)(e),
        })
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::NotFound(d.clone()),
            _ => io_err(&p)(e),
        })
    }

    pub fn read_json<T: serde::de::DeserializeOwned>(&self, d: &Digest) -> Result<T> {
        let bytes = self.read_blob(d)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::BadJson {
            digest: d.clone(),
            source,
        })
    }

    /// Starts writing a blob named by sha256.
    pub fn writer(&self) -> Result<BlobWriter> {
        self.writer_with(Algorithm::Sha256)
    }

    pub fn writer_with(&self, algorithm: Algorithm) -> Result<BlobWriter> {
        let dir = self.root.join("tmp");
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .tempfile_in(&dir)
            .map_err(io_err(&dir))?;
        Ok(BlobWriter {
            root: self.root.clone(),
            file: BufWriter::with_capacity(1 << 20, tmp),
            hasher: algorithm.hasher(),
            count: 0,
        })
    }

    /// Stores `bytes`, checking them against `expected` when given.
    pub fn put(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let algo = expected.map(|d| d.algorithm()).unwrap_or(Algorithm::Sha256);
        let mut w = self.writer_with(algo)?;
        w.write_all(bytes).map_err(io_err(&self.root))?;
        w.commit(expected)
    }

    /// Moves a finished file (on the store's filesystem) into the store if
    /// its content hashes to `expected`. On a mismatch the file stays where
    /// it is and nothing is stored.
    pub fn adopt(&self, file: &Path, expected: &Digest) -> Result<u64> {
        let f = File::open(file).map_err(io_err(file))?;
        let (actual, size) =
            crate::digest::hash_reader(io::BufReader::with_capacity(1 << 20, f), expected.algorithm())
                .map_err(io_err(file))?;
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
                size,
            });
        }
        let dest = self.blob_path(expected);
        if !dest.is_file() {
            fs::rename(file, &dest).map_err(io_err(&dest))?;
        } else {
            let _ = fs::remove_file(file);
        }
        Ok(size)
    }

    /// Moves a file whose digest the caller computed while writing it into
    /// the store.
    pub fn adopt_verified(&self, file: &Path, digest: &Digest) -> Result<()> {
        let dest = self.blob_path(digest);
        if dest.is_file() {
            let _ = fs::remove_file(file);
            return Ok(());
        }
        fs::rename(file, &dest).map_err(io_err(&dest))
    }

    /// A temporary path on the store's filesystem, removed when dropped.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let dir = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&dir)
            .map_err(io_err(&dir))
    }

    fn meta_path(&self, kind: &str, name: &str) -> PathBuf {
        self.root.join("meta").join(kind).join(name)
    }

    /// Reads a metadata record (`meta/KIND/NAME`), if present.
    pub fn read_meta(&self, kind: &str, name: &str) -> Option<Vec<u8>> {
        fs::read(self.meta_path(kind, name)).ok()
    }

    /// Writes a metadata record atomically (temp file + rename).
    pub fn write_meta(&self, kind: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.meta_path(kind, name);
        write_atomic(&path, bytes).map_err(io_err(&path))
    }
}

/// Writes a small file atomically: a temporary file in the same directory
/// (mode 0644), renamed over `path`. Readers see the old or the new bytes,
/// never a part. Creates the directory when needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// A blob being written: bytes go to a temporary file and are hashed on
/// the way; [`BlobWriter::commit`] checks the digest and renames it into
/// place. Dropping it without committing deletes the temporary file.
pub struct BlobWriter {
    root: PathBuf,
    file: BufWriter<tempfile::NamedTempFile>,
    hasher: Hasher,
    count: u64,
}

impl BlobWriter {
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Verifies the digest (when `expected` is given) and makes the blob
    /// visible. On a mismatch nothing is stored.
    pub fn commit(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        self.commit_inner(expected, false)
    }

    /// Like [`BlobWriter::commit`], with an fsync before the rename so the
    /// blob survives a power loss, not only a killed process.
    pub fn commit_durable(self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        self.commit_inner(expected, true)
    }

    fn commit_inner(self, expected: Option<&Digest>, durable: bool) -> Result<(Digest, u64)> {
        let BlobWriter {
            root,
            file,
            hasher,
            count,
        } = self;
        let tmp = file.into_inner().map_err(|e| io_err(&root)(e.into_error()))?;
        let actual = hasher.finish();
        if let Some(exp) = expected
            && exp != &actual
        {
            return Err(StoreError::DigestMismatch {
                expected: exp.clone(),
                actual,
                size: count,
            });
        }
        if durable {
            tmp.as_file().sync_data().map_err(io_err(tmp.path()))?;
        }
        let dest = root
            .join("blobs")
            .join(actual.algorithm().name())
            .join(actual.hex());
        if dest.is_file() {
            // Same digest, same bytes: keep the existing file.
            return Ok((actual, count));
        }
        tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        Ok((actual, count))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_digest_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let wrong = Digest::sha256_of(b"other");
        let err = store.put(b"hello", Some(&wrong)).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }));
        assert!(!store.has(&wrong));
        assert!(!store.has(&Digest::sha256_of(b"hello")));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let (d, n) = store.put(b"hello", None).unwrap();
        assert_eq!((d.clone(), n), (Digest::sha256_of(b"hello"), 5));
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
    }
}
