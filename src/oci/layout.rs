//! OCI image-layout directories (`oci-layout`, `index.json`, `blobs/`):
//! writing build output and reading base images.
//!
//! Writes are atomic per file (temporary file + rename) and blobs are
//! written before the index that names them, so a reader never sees an
//! index entry whose blobs are missing.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest, HashingReader};
use crate::oci::{ANNOTATION_REF_NAME, Descriptor, Index, Manifest, to_json};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not an OCI image layout (no readable index.json): {reason}", dir.display())]
    NotLayout { dir: PathBuf, reason: String },
    #[error("{}: no image tagged `{reference}` (has: {})", dir.display(), available.join(", "))]
    UnknownRef {
        dir: PathBuf,
        reference: String,
        available: Vec<String>,
    },
    #[error("{}: holds {count} images; name one with DIR:REF", dir.display())]
    Ambiguous { dir: PathBuf, count: usize },
    #[error("{}: blob {digest} is corrupt (its content hashes to {actual})", dir.display())]
    Corrupt {
        dir: PathBuf,
        digest: Digest,
        actual: Digest,
    },
    #[error("{}: manifest {digest} is not an image manifest: {reason}", dir.display())]
    BadManifest {
        dir: PathBuf,
        digest: Digest,
        reason: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = LayoutError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image layout on disk.
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Layout> {
        let dir = dir.into();
        let l = Layout { dir };
        l.index()?;
        Ok(l)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn index(&self) -> Result<Index> {
        let p = self.dir.join("index.json");
        let bytes = fs::read(&p).map_err(|e| LayoutError::NotLayout {
            dir: self.dir.clone(),
            reason: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| LayoutError::NotLayout {
            dir: self.dir.clone(),
            reason: e.to_string(),
        })
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs").join(d.algorithm().name()).join(d.hex())
    }

    /// Finds a manifest by its `ref.name` annotation; with no reference,
    /// the layout's only image.
    pub fn resolve(&self, reference: Option<&str>) -> Result<Descriptor> {
        let index = self.index()?;
        let named = |d: &Descriptor| d.annotations.get(ANNOTATION_REF_NAME).cloned();
        match reference {
            None if index.manifests.len() == 1 => Ok(index.manifests[0].clone()),
            None => Err(LayoutError::Ambiguous {
                dir: self.dir.clone(),
                count: index.manifests.len(),
            }),
            Some(r) => index
                .manifests
                .iter()
                .find(|d| named(d).as_deref() == Some(r) || d.digest.to_string() == r)
                .cloned()
                .ok_or_else(|| LayoutError::UnknownRef {
                    dir: self.dir.clone(),
                    reference: r.to_string(),
                    available: index.manifests.iter().filter_map(named).collect(),
                }),
        }
    }

    /// Copies a blob into `store`, verifying its digest on the way.
    fn import_blob(&self, store: &Store, d: &Digest) -> Result<()> {
        if store.has(d) {
            return Ok(());
        }
        let p = self.blob_path(d);
        let mut f = fs::File::open(&p).map_err(io_err(&p))?;
        let mut w = store.writer_with(d.algorithm())?;
        io::copy(&mut f, &mut w).map_err(io_err(&p))?;
        match w.commit(Some(d)) {
            Err(StoreError::DigestMismatch { actual, .. }) => Err(LayoutError::Corrupt {
                dir: self.dir.clone(),
                digest: d.clone(),
                actual,
            }),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    /// Imports an image (manifest, config, layers) into `store`.
    pub fn import(&self, store: &Store, reference: Option<&str>) -> Result<(Descriptor, Manifest)> {
        let desc = self.resolve(reference)?;
        self.import_blob(store, &desc.digest)?;
        let manifest: Manifest = serde_json::from_slice(&store.read_blob(&desc.digest)?).map_err(|e| {
            LayoutError::BadManifest {
                dir: self.dir.clone(),
                digest: desc.digest.clone(),
                reason: e.to_string(),
            }
        })?;
        self.import_blob(store, &manifest.config.digest)?;
        for l in &manifest.layers {
            self.import_blob(store, &l.digest)?;
        }
        Ok((desc, manifest))
    }
}

/// Writes (or updates) an image layout at `dir` holding the given images,
/// each tagged with its `ref.name`. Entries of an existing index with other
/// names are kept.
pub fn write(dir: &Path, store: &Store, images: &[(String, Descriptor)]) -> Result<()> {
    for sub in ["blobs/sha256", "blobs/sha512"] {
        let p = dir.join(sub);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    for (_, desc) in images {
        copy_blob(dir, store, &desc.digest)?;
        let manifest: Manifest = store.read_json(&desc.digest)?;
        copy_blob(dir, store, &manifest.config.digest)?;
        for l in &manifest.layers {
            copy_blob(dir, store, &l.digest)?;
        }
    }
    write_atomic(&dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut index = Layout {
        dir: dir.to_path_buf(),
    }
    .index()
    .unwrap_or_default();
    for (name, desc) in images {
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME) != Some(name));
        let mut d = desc.clone();
        d.annotations
            .insert(ANNOTATION_REF_NAME.to_string(), name.clone());
        index.manifests.push(d);
    }
    index.manifests.sort_by(|a, b| {
        a.annotations
            .get(ANNOTATION_REF_NAME)
            .cmp(&b.annotations.get(ANNOTATION_REF_NAME))
    });
    write_atomic(&dir.join("index.json"), &to_json(&index))
}

/// Hard-links a blob from the store into the layout (copying across
/// filesystems). Blobs are immutable, so sharing the inode is safe.
fn copy_blob(dir: &Path, store: &Store, d: &Digest) -> Result<()> {
    let dest = dir.join("blobs").join(d.algorithm().name()).join(d.hex());
    if dest.is_file() {
        return Ok(());
    }
    let src = store.blob_path(d);
    if !src.is_file() {
        return Err(StoreError::NotFound(d.clone()).into());
    }
    let tmp = dest.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(&src, &tmp).is_err() {
        fs::copy(&src, &tmp).map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &dest).map_err(io_err(&dest))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::store::write_atomic(path, bytes).map_err(io_err(path))
}

/// Checks every blob of a layout against its digest; returns how many.
pub fn verify(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for algo in [Algorithm::Sha256, Algorithm::Sha512] {
        let sub = dir.join("blobs").join(algo.name());
        let Ok(rd) = fs::read_dir(&sub) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::from_hex(algo, &name) else {
                continue;
            };
            let f = fs::File::open(e.path()).map_err(io_err(&e.path()))?;
            let mut r = HashingReader::new(f, algo);
            io::copy(&mut r, &mut io::sink()).map_err(io_err(&e.path()))?;
            let (actual, _) = r.finish();
            if actual != d {
                return Err(LayoutError::Corrupt {
                    dir: dir.to_path_buf(),
                    digest: d,
                    actual,
                });
            }
            n += 1;
        }
    }
    Ok(n)
}
