//! docker-archive: the `docker save` / `docker load` tar with a
//! `manifest.json`, which is what Docker 20.10 can load.
//!
//! That engine cannot load zstd layers from an archive, so zstd layers are
//! transcoded to gzip on export; the gzip blob is kept in the store (keyed
//! by the zstd blob's digest), so a later export after a WAR change only
//! transcodes the new app layer. The transcode checks the uncompressed
//! bytes against the layer's `diff_id`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest, HashingReader, HashingWriter};
use crate::oci::listing::decompress;
use crate::oci::{
    Descriptor, ImageConfig, LayerCompression, MEDIA_CONFIG, MEDIA_MANIFEST, Manifest, to_json,
};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("layer {layer} does not decompress to its diff_id {expected} (got {actual})")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("the manifest has {manifest} layers but its config {config} diff_ids")]
    LayerCount { manifest: usize, config: usize },
    #[error("layer {0} has a media type strata cannot export")]
    UnknownLayer(String),
    #[error("{}: not a docker-archive: {reason}", path.display())]
    NotArchive { path: PathBuf, reason: String },
    #[error("{}: no image tagged `{reference}` (has: {})", path.display(), available.join(", "))]
    UnknownRef {
        path: PathBuf,
        reference: String,
        available: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The gzip blob with the same content as `layer`, transcoding (and
/// caching) when the layer is zstd.
pub fn gzip_variant(
    store: &Store,
    layer: &Descriptor,
    diff_id: &Digest,
    progress: &dyn Fn(&str),
) -> Result<Digest> {
    match LayerCompression::from_media_type(&layer.media_type) {
        Some(LayerCompression::Gzip) | Some(LayerCompression::None) => return Ok(layer.digest.clone()),
        Some(LayerCompression::Zstd) => {}
        None => return Err(ArchiveError::UnknownLayer(layer.media_type.clone())),
    }
    if let Some(bytes) = store.read_meta("gzip", layer.digest.hex())
        && let Ok(d) = String::from_utf8_lossy(&bytes).trim().parse::<Digest>()
        && store.has(&d)
    {
        return Ok(d);
    }
    progress(&format!(
        "gzip {} ({} bytes zstd)",
        layer.digest.short(),
        layer.size
    ));
    let src = store.open_blob(&layer.digest)?;
    let mut r = HashingReader::new(
        decompress(BufReader::with_capacity(1 << 20, src), LayerCompression::Zstd)
            .map_err(io_err(&store.blob_path(&layer.digest)))?,
        Algorithm::Sha256,
    );
    let w = store.writer()?;
    let mut gz = flate2::GzBuilder::new().write(w, flate2::Compression::fast());
    io::copy(&mut r, &mut gz).map_err(io_err(&store.blob_path(&layer.digest)))?;
    let w = gz.finish().map_err(io_err(store.root()))?;
    let (actual, _) = r.finish();
    if &actual != diff_id {
        return Err(ArchiveError::DiffIdMismatch {
            layer: layer.digest.clone(),
            expected: diff_id.clone(),
            actual,
        });
    }
    let (d, _) = w.commit(None)?;
    store.write_meta("gzip", layer.digest.hex(), d.to_string().as_bytes())?;
    Ok(d)
}

/// The same image with gzip layers, for engines that cannot read zstd
/// (Docker before 23.0): zstd layers are transcoded once (cached), the
/// config is shared (its diff_ids name uncompressed bytes), the manifest
/// is new and stored. Its digest is as reproducible as the layers'.
pub fn gzip_image(store: &Store, image: &Descriptor, progress: &dyn Fn(&str)) -> Result<Descriptor> {
    let mut manifest: Manifest = store.read_json(&image.digest)?;
    let config: ImageConfig = store.read_json(&manifest.config.digest)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ArchiveError::LayerCount {
            manifest: manifest.layers.len(),
            config: config.rootfs.diff_ids.len(),
        });
    }
    let mut changed = false;
    for (layer, diff_id) in manifest.layers.iter_mut().zip(&config.rootfs.diff_ids) {
        let gz = gzip_variant(store, layer, diff_id, progress)?;
        if gz != layer.digest {
            changed = true;
            layer.size = store.size(&gz)?;
            layer.digest = gz;
            layer.media_type = LayerCompression::Gzip.media_type().to_string();
        }
    }
    if !changed {
        return Ok(image.clone());
    }
    let bytes = to_json(&manifest);
    let (digest, size) = store.put(&bytes, None)?;
    let mut d = image.clone();
    d.digest = digest;
    d.size = size;
    Ok(d)
}

/// Writes a docker-archive at `path` with every image in `images`
/// (`repo:tag`, manifest). Layers shared between images are stored once.
/// `progress` is told about each layer it transcodes.
pub fn write(
    path: &Path,
    store: &Store,
    images: &[(String, Descriptor)],
    progress: &dyn Fn(&str),
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-archive-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, tmp));
    tar.mode(tar::HeaderMode::Deterministic);
    let mut written: BTreeSet<Digest> = BTreeSet::new();
    let mut entries = Vec::new();
    for (tag, desc) in images {
        let manifest: Manifest = store.read_json(&desc.digest)?;
        let config: ImageConfig = store.read_json(&manifest.config.digest)?;
        let mut layers = Vec::new();
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let gz = gzip_variant(store, layer, diff_id, progress)?;
            let name = format!("blobs/sha256/{}", gz.hex());
            if written.insert(gz.clone()) {
                append_blob(&mut tar, store, &gz, &name, path)?;
            }
            layers.push(name);
        }
        let cfg = format!("blobs/sha256/{}", manifest.config.digest.hex());
        if written.insert(manifest.config.digest.clone()) {
            append_blob(&mut tar, store, &manifest.config.digest, &cfg, path)?;
        }
        entries.push(ArchiveManifest {
            config: cfg,
            repo_tags: Some(vec![tag.clone()]),
            layers,
        });
    }
    let bytes = to_json(&entries);
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    tar.append_data(&mut h, "manifest.json", &bytes[..])
        .map_err(io_err(path))?;
    let w = tar.into_inner().map_err(io_err(path))?;
    let tmp = w.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

fn append_blob<W: Write>(
    tar: &mut tar::Builder<W>,
    store: &Store,
    d: &Digest,
    name: &str,
    out: &Path,
) -> Result<()> {
    let size = store.size(d)?;
    let f = store.open_blob(d)?;
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    tar.append_data(&mut h, name, BufReader::with_capacity(1 << 20, f))
        .map_err(io_err(out))
}

/// Imports one image from a docker-archive into `store` as an OCI image
/// (layers kept in their archive compression). Returns the manifest.
pub fn import(path: &Path, reference: Option<&str>, store: &Store) -> Result<(Descriptor, Manifest)> {
    let not = |reason: String| ArchiveError::NotArchive {
        path: path.to_path_buf(),
        reason,
    };
    // First pass: manifest.json (it is usually last, so read it separately).
    let manifests: Vec<ArchiveManifest> = {
        let f = File::open(path).map_err(io_err(path))?;
        let mut ar = tar::Archive::new(BufReader::new(f));
        let mut found = None;
        for e in ar.entries().map_err(io_err(path))? {
            let mut e = e.map_err(io_err(path))?;
            if e.path_bytes().as_ref() == b"manifest.json" {
                let mut s = Vec::new();
                e.read_to_end(&mut s).map_err(io_err(path))?;
                found = Some(serde_json::from_slice(&s).map_err(|e| not(e.to_string()))?);
                break;
            }
        }
        found.ok_or_else(|| not("no manifest.json".into()))?
    };
    let chosen = match reference {
        None if manifests.len() == 1 => &manifests[0],
        None => return Err(not(format!("holds {} images; name one", manifests.len()))),
        Some(r) => manifests
            .iter()
            .find(|m| m.repo_tags.iter().flatten().any(|t| t == r))
            .ok_or_else(|| ArchiveError::UnknownRef {
                path: path.to_path_buf(),
                reference: r.to_string(),
                available: manifests
                    .iter()
                    .flat_map(|m| m.repo_tags.iter().flatten().cloned())
                    .collect(),
            })?,
    };
    // Second pass: store the config and layer members, hashing as we go.
    let mut stored: std::collections::HashMap<String, (Digest, u64, LayerCompression)> = Default::default();
    let wanted: BTreeSet<&String> = chosen.layers.iter().chain([&chosen.config]).collect();
    let f = File::open(path).map_err(io_err(path))?;
    let mut ar = tar::Archive::new(BufReader::new(f));
    for e in ar.entries().map_err(io_err(path))? {
        let mut e = e.map_err(io_err(path))?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if !wanted.contains(&name) {
            continue;
        }
        let mut head = [0u8; 4];
        let mut w = store.writer()?;
        let mut hw = HashingWriter::new(&mut w, Algorithm::Sha256);
        let n = e.read(&mut head).map_err(io_err(path))?;
        hw.write_all(&head[..n]).map_err(io_err(path))?;
        io::copy(&mut e, &mut hw).map_err(io_err(path))?;
        drop(hw);
        let compression = if head[..n].starts_with(&[0x1f, 0x8b]) {
            LayerCompression::Gzip
        } else if head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            LayerCompression::Zstd
        } else {
            LayerCompression::None
        };
        let (d, size) = w.commit(None)?;
        stored.insert(name, (d, size, compression));
    }
    let get = |name: &String| {
        stored
            .get(name)
            .cloned()
            .ok_or_else(|| not(format!("member {name} is missing")))
    };
    let (cfg_digest, cfg_size, _) = get(&chosen.config)?;
    let mut layers = Vec::new();
    for l in &chosen.layers {
        let (d, size, c) = get(l)?;
        layers.push(Descriptor::new(c.media_type(), d, size));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_MANIFEST.to_string()),
        config: Descriptor::new(MEDIA_CONFIG, cfg_digest, cfg_size),
        layers,
        annotations: Default::default(),
    };
    let bytes = to_json(&manifest);
    let (d, size) = store.put(&bytes, None)?;
    Ok((Descriptor::new(MEDIA_MANIFEST, d, size), manifest))
}
