//! File listings of layers and images: what paths a layer holds, with
//! sizes and (when read from the blob) per-file sha256 digests.
//!
//! A listing is read from a layer's tar stream or recorded while strata
//! writes a layer. Merging listings applies whiteouts the way an overlay
//! filesystem would, which gives an image's visible file tree.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use crate::digest::{Algorithm, Digest, HashingReader};
use crate::oci::LayerCompression;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Whiteout,
    Opaque,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Normalized path inside the image, no leading `/`.
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("reading layer: {0}")]
    Io(#[from] io::Error),
    #[error("layer entry `{0}` has an absolute path or climbs out of the root")]
    BadPath(String),
}

/// Opens a decompressing reader for a layer blob.
pub fn decompress<'a>(r: impl Read + 'a, c: LayerCompression) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match c {
        LayerCompression::None => Box::new(r),
        LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        LayerCompression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
    })
}

/// Normalizes a tar entry path, refusing absolute paths and `..`.
pub fn entry_path(raw: &[u8]) -> Result<String, ListingError> {
    let s = String::from_utf8_lossy(raw);
    if s.starts_with('/') {
        return Err(ListingError::BadPath(s.into_owned()));
    }
    match crate::spec::ImagePath::parse(&s) {
        Ok(p) => Ok(p.as_str().to_string()),
        Err(_) => Err(ListingError::BadPath(s.into_owned())),
    }
}

/// Lists an uncompressed layer tar, hashing every regular file.
pub fn read_tar(r: impl Read) -> Result<Vec<Entry>, ListingError> {
    let mut archive = tar::Archive::new(r);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry_path(&entry.path_bytes())?;
        if path.is_empty() {
            continue;
        }
        let h = entry.header();
        let mode = h.mode().unwrap_or(0);
        let uid = h.uid().unwrap_or(0);
        let gid = h.gid().unwrap_or(0);
        let ty = h.entry_type();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let name = path.rsplit('/').next().unwrap_or(&path);
        let (kind, path) = if name == ".wh..wh..opq" {
            let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            (EntryKind::Opaque, dir.to_string())
        } else if let Some(rest) = name.strip_prefix(".wh.") {
            let dir = path
                .rsplit_once('/')
                .map(|(d, _)| format!("{d}/"))
                .unwrap_or_default();
            (EntryKind::Whiteout, format!("{dir}{rest}"))
        } else {
            let kind = match ty {
                tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
                tar::EntryType::Directory => EntryKind::Dir,
                tar::EntryType::Symlink => EntryKind::Symlink,
                tar::EntryType::Link => EntryKind::Hardlink,
                _ => EntryKind::Other,
            };
            (kind, path)
        };
        let (size, digest) = if kind == EntryKind::File {
            let mut hr = HashingReader::new(&mut entry, Algorithm::Sha256);
            io::copy(&mut hr, &mut io::sink())?;
            let (d, n) = hr.finish();
            (n, Some(d))
        } else {
            (0, None)
        };
        let link = match kind {
            EntryKind::Hardlink => link.map(|l| entry_path(l.as_bytes())).transpose()?,
            EntryKind::Symlink => link,
            _ => None,
        };
        out.push(Entry {
            path,
            kind,
            mode,
            uid,
            gid,
            size,
            link,
            digest,
        });
    }
    Ok(out)
}

/// The visible tree of an image: layers applied bottom to top, whiteouts
/// removing what lies below them. Hard links take their target's digest.
pub fn merge<'a>(layers: impl IntoIterator<Item = &'a [Entry]>) -> BTreeMap<String, Entry> {
    let mut tree: BTreeMap<String, Entry> = BTreeMap::new();
    for layer in layers {
        // Whiteouts and opaque markers apply to lower layers only.
        for e in layer {
            match e.kind {
                EntryKind::Whiteout => remove_tree(&mut tree, &e.path, true),
                EntryKind::Opaque => remove_tree(&mut tree, &e.path, false),
                _ => {}
            }
        }
        for e in layer {
            match e.kind {
                EntryKind::Whiteout | EntryKind::Opaque => {}
                EntryKind::Hardlink => {
                    let mut resolved = e.clone();
                    if let Some(target) = e.link.as_ref().and_then(|l| tree.get(l)) {
                        resolved.size = target.size;
                        resolved.digest = target.digest.clone();
                    }
                    tree.insert(e.path.clone(), resolved);
                }
                _ => {
                    if e.kind != EntryKind::Dir {
                        remove_tree(&mut tree, &e.path, false);
                    }
                    tree.insert(e.path.clone(), e.clone());
                }
            }
        }
    }
    tree
}

fn remove_tree(tree: &mut BTreeMap<String, Entry>, path: &str, itself: bool) {
    if itself {
        tree.remove(path);
    }
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let below: Vec<String> = tree
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in below {
        tree.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: EntryKind, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            link: None,
            digest: None,
        }
    }

    #[test]
    fn whiteouts_remove_lower_entries() {
        let lower = vec![
            e("a", EntryKind::Dir, 0),
            e("a/x", EntryKind::File, 1),
            e("a/y", EntryKind::File, 1),
            e("b", EntryKind::Dir, 0),
            e("b/z", EntryKind::File, 1),
        ];
        let upper = vec![
            e("a/x", EntryKind::Whiteout, 0),
            e("b", EntryKind::Opaque, 0),
            e("b/n", EntryKind::File, 2),
        ];
        let merged = merge([lower.as_slice(), upper.as_slice()]);
        let keys: Vec<_> = merged.keys().cloned().collect();
        assert_eq!(keys, ["a", "a/y", "b", "b/n"]);
    }

    #[test]
    fn refuses_escaping_entry_paths() {
        assert!(entry_path(b"/etc/passwd").is_err());
        assert!(entry_path(b"../x").is_err());
        assert_eq!(entry_path(b"./usr/bin/").unwrap(), "usr/bin");
    }
}
