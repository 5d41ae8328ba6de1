//! File-level differences between two images: which paths were added,
//! modified or deleted, with sizes and digests. The hotfix path of the
//! orchestrator decides from this list whether a change can be applied in
//! place.
//!
//! Listings of layers are computed once per layer blob and cached in the
//! store, so comparing two app images that share their tomcat tier only
//! reads the app layers.

use std::collections::BTreeMap;
use std::io::BufReader;

use serde::Serialize;

use crate::digest::Digest;
use crate::oci::listing::{self, Entry, EntryKind, ListingError};
use crate::oci::{LayerCompression, Manifest};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("layer {layer}: {source}")]
    Listing { layer: Digest, source: ListingError },
    #[error("layer {0}: unknown media type {1}")]
    MediaType(Digest, String),
}

pub type Result<T, E = DiffError> = std::result::Result<T, E>;

/// The entries of one layer blob, with per-file digests.
pub fn layer_listing(store: &Store, digest: &Digest, media_type: &str) -> Result<Vec<Entry>> {
    if let Some(bytes) = store.read_meta("listing", digest.hex())
        && let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(&bytes)
    {
        return Ok(entries);
    }
    let c = LayerCompression::from_media_type(media_type)
        .ok_or_else(|| DiffError::MediaType(digest.clone(), media_type.to_string()))?;
    let f = store.open_blob(digest)?;
    let err = |source| DiffError::Listing {
        layer: digest.clone(),
        source,
    };
    let r = listing::decompress(BufReader::with_capacity(1 << 20, f), c).map_err(|e| err(e.into()))?;
    let entries = listing::read_tar(r).map_err(err)?;
    store.write_meta(
        "listing",
        digest.hex(),
        &serde_json::to_vec(&entries).unwrap_or_default(),
    )?;
    Ok(entries)
}

/// The visible file tree of an image.
pub fn image_files(store: &Store, manifest: &Manifest) -> Result<BTreeMap<String, Entry>> {
    let layers = manifest
        .layers
        .iter()
        .map(|l| layer_listing(store, &l.digest, &l.media_type))
        .collect::<Result<Vec<_>>>()?;
    Ok(listing::merge(layers.iter().map(Vec::as_slice)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: String,
    pub change: ChangeKind,
    pub kind: EntryKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_digest: Option<Digest>,
}

fn same(a: &Entry, b: &Entry) -> bool {
    let kind = |e: &Entry| match e.kind {
        // A hard link and a file with the same bytes look the same inside
        // a running container.
        EntryKind::Hardlink => EntryKind::File,
        k => k,
    };
    kind(a) == kind(b)
        && a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.size == b.size
        && a.digest == b.digest
        && (a.kind == EntryKind::Hardlink || b.kind == EntryKind::Hardlink || a.link == b.link)
}

/// Compares two visible trees. Pure: no I/O.
pub fn diff(old: &BTreeMap<String, Entry>, new: &BTreeMap<String, Entry>) -> Vec<Change> {
    let mut out = Vec::new();
    for (path, o) in old {
        match new.get(path) {
            None => out.push(change(path, ChangeKind::Deleted, Some(o), None)),
            Some(n) if !same(o, n) => out.push(change(path, ChangeKind::Modified, Some(o), Some(n))),
            Some(_) => {}
        }
    }
    for (path, n) in new {
        if !old.contains_key(path) {
            out.push(change(path, ChangeKind::Added, None, Some(n)));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn change(path: &str, kind: ChangeKind, old: Option<&Entry>, new: Option<&Entry>) -> Change {
    fn file(e: Option<&Entry>) -> Option<&Entry> {
        e.filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Hardlink))
    }
    Change {
        path: path.to_string(),
        change: kind,
        kind: new.or(old).map(|e| e.kind).unwrap_or(EntryKind::Other),
        old_size: file(old).map(|e| e.size),
        new_size: file(new).map(|e| e.size),
        old_digest: file(old).and_then(|e| e.digest.clone()),
        new_digest: file(new).and_then(|e| e.digest.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(path: &str, body: &[u8]) -> (String, Entry) {
        (
            path.to_string(),
            Entry {
                path: path.into(),
                kind: EntryKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: body.len() as u64,
                link: None,
                digest: Some(Digest::sha256_of(body)),
            },
        )
    }

    #[test]
    fn reports_added_modified_deleted() {
        let old: BTreeMap<_, _> = [f("a", b"1"), f("b", b"2"), f("c", b"3")].into();
        let new: BTreeMap<_, _> = [f("a", b"1"), f("b", b"22"), f("d", b"4")].into();
        let d = diff(&old, &new);
        let got: Vec<_> = d.iter().map(|c| (c.path.as_str(), c.change)).collect();
        assert_eq!(
            got,
            [
                ("b", ChangeKind::Modified),
                ("c", ChangeKind::Deleted),
                ("d", ChangeKind::Added)
            ]
        );
        assert_eq!(d[0].old_size, Some(1));
        assert_eq!(d[0].new_size, Some(2));
    }
}
