//! The layer writer: a [`Tree`] becomes a deterministic tar stream,
//! compressed with zstd or gzip and written into the store, with the
//! uncompressed (`diff_id`) and compressed digests computed in the same pass.
//!
//! Determinism: entries in byte order of their paths, every mtime set to
//! `SOURCE_DATE_EPOCH`, no user or group names, PAX records for long names,
//! zstd always in multithreaded mode (its output does not depend on the
//! number of workers, only on the level). Memory is bounded by one copy
//! buffer and the compressor's window, whatever the layer size.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::build::tree::{Content, Meta, NodeKind, Tree};
use crate::digest::{Algorithm, Digest, HashingWriter};
use crate::oci::Descriptor;
use crate::oci::listing::{Entry, EntryKind};
use crate::spec::{Compression, ImagePath};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} changed while the layer was written (expected {expected} bytes, read {actual})", path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("writing layer: {0}")]
    Write(io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = LayerError> = std::result::Result<T, E>;

/// A layer written into the store.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    pub listing: Vec<Entry>,
}

const BLOCK: usize = 512;
const COPY_BUF: usize = 1 << 20;

/// Writes `tree` as a compressed layer blob. `implicit` gives metadata for
/// directories the tree only created as ancestors (normally the parent
/// image's own metadata for them, so `/tmp` keeps mode 1777).
pub fn write_layer(
    store: &Store,
    tree: &Tree,
    implicit: &dyn Fn(&ImagePath) -> Option<Meta>,
    compression: Compression,
    epoch: i64,
) -> Result<LayerBlob> {
    let blob = store.writer()?;
    let (listing, diff_id, tar_size, blob) = match compression {
        Compression::Zstd { level } => {
            let mut enc = zstd::stream::write::Encoder::new(blob, level).map_err(LayerError::Write)?;
            // Always multithreaded (nbWorkers >= 1): libzstd then produces
            // the same bytes whatever the worker count.
            enc.multithread(zstd_workers()).map_err(LayerError::Write)?;
            // Batch the many small header writes: zstd and the hasher both
            // do better with large chunks.
            let mut hw =
                std::io::BufWriter::with_capacity(COPY_BUF, HashingWriter::new(enc, Algorithm::Sha256));
            let listing = write_tar(tree, implicit, epoch, &mut hw)?;
            let hw = hw.into_inner().map_err(|e| LayerError::Write(e.into_error()))?;
            let (enc, diff_id, n) = hw.finish();
            let blob = enc.finish().map_err(LayerError::Write)?;
            (listing, diff_id, n, blob)
        }
        Compression::Gzip { level } => {
            let enc = flate2::GzBuilder::new().write(blob, flate2::Compression::new(level));
            let mut hw = HashingWriter::new(enc, Algorithm::Sha256);
            let listing = write_tar(tree, implicit, epoch, &mut hw)?;
            let (enc, diff_id, n) = hw.finish();
            let blob = enc.finish().map_err(LayerError::Write)?;
            (listing, diff_id, n, blob)
        }
    };
    let (digest, size) = blob.commit(None)?;
    let media = match compression {
        Compression::Zstd { .. } => crate::oci::MEDIA_LAYER_ZSTD,
        Compression::Gzip { .. } => crate::oci::MEDIA_LAYER_GZIP,
    };
    Ok(LayerBlob {
        descriptor: Descriptor::new(media, digest, size),
        diff_id,
        tar_size,
        listing,
    })
}

/// zstd worker threads: `STRATA_ZSTD_WORKERS`, else one per core. Never 0:
/// single-threaded mode would produce different bytes.
pub fn zstd_workers() -> u32 {
    std::env::var("STRATA_ZSTD_WORKERS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        })
        .clamp(1, 64)
}

/// Writes the tar stream of `tree` to `out` and returns its listing.
pub fn write_tar(
    tree: &Tree,
    implicit: &dyn Fn(&ImagePath) -> Option<Meta>,
    epoch: i64,
    out: &mut impl Write,
) -> Result<Vec<Entry>> {
    let mut listing = Vec::with_capacity(tree.len());
    let mut buf = vec![0u8; COPY_BUF];
    let mtime = epoch.max(0) as u64;
    for (path, node) in tree.iter() {
        let meta = if node.implicit {
            implicit(path).unwrap_or(node.meta)
        } else {
            node.meta
        };
        let mut entry = Entry {
            path: path.as_str().to_string(),
            kind: EntryKind::File,
            mode: meta.mode,
            uid: meta.uid as u64,
            gid: meta.gid as u64,
            size: 0,
            link: None,
            digest: None,
        };
        match &node.kind {
            NodeKind::Dir => {
                entry.kind = EntryKind::Dir;
                let name = format!("{}/", path.as_str());
                header(out, &name, tar::EntryType::Directory, meta, 0, None, mtime)?;
            }
            NodeKind::Symlink(target) => {
                entry.kind = EntryKind::Symlink;
                entry.link = Some(target.clone());
                header(
                    out,
                    path.as_str(),
                    tar::EntryType::Symlink,
                    meta,
                    0,
                    Some(target),
                    mtime,
                )?;
            }
            NodeKind::Hardlink(target) => {
                entry.kind = EntryKind::Hardlink;
                entry.link = Some(target.as_str().to_string());
                header(
                    out,
                    path.as_str(),
                    tar::EntryType::Link,
                    meta,
                    0,
                    Some(target.as_str()),
                    mtime,
                )?;
            }
            NodeKind::Whiteout => {
                entry.kind = EntryKind::Whiteout;
                let wh = match path.parent() {
                    Some(p) if !p.is_root() => format!("{}/.wh.{}", p.as_str(), path.file_name()),
                    _ => format!(".wh.{}", path.file_name()),
                };
                header(
                    out,
                    &wh,
                    tar::EntryType::Regular,
                    Meta {
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                    0,
                    None,
                    mtime,
                )?;
            }
            NodeKind::File { content, size } => {
                entry.size = *size;
                header(
                    out,
                    path.as_str(),
                    tar::EntryType::Regular,
                    meta,
                    *size,
                    None,
                    mtime,
                )?;
                match content {
                    Content::Inline(bytes) => out.write_all(bytes).map_err(LayerError::Write)?,
                    Content::Host(src) => copy_exact(src, *size, out, &mut buf)?,
                }
                pad(out, *size)?;
            }
        }
        listing.push(entry);
    }
    out.write_all(&[0u8; BLOCK * 2]).map_err(LayerError::Write)?;
    Ok(listing)
}

fn copy_exact(src: &PathBuf, size: u64, out: &mut impl Write, buf: &mut [u8]) -> Result<()> {
    let read_err = |source| LayerError::Read {
        path: src.clone(),
        source,
    };
    let mut f = File::open(src).map_err(read_err)?;
    let mut done = 0u64;
    loop {
        let n = f.read(buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > size {
            break;
        }
        out.write_all(&buf[..n]).map_err(LayerError::Write)?;
    }
    if done != size {
        return Err(LayerError::Changed {
            path: src.clone(),
            expected: size,
            actual: done,
        });
    }
    Ok(())
}

fn pad(out: &mut impl Write, size: u64) -> Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rem])
            .map_err(LayerError::Write)?;
    }
    Ok(())
}

/// Writes one ustar header, preceded by a PAX header when the name or link
/// does not fit the fixed fields.
fn header(
    out: &mut impl Write,
    name: &str,
    ty: tar::EntryType,
    meta: Meta,
    size: u64,
    link: Option<&str>,
    mtime: u64,
) -> Result<()> {
    let name_long = name.len() > 100;
    let link_long = link.is_some_and(|l| l.len() > 100);
    let size_long = size >= 0o77777777777;
    if name_long || link_long || size_long {
        let mut records = Vec::new();
        if name_long {
            pax_record(&mut records, "path", name.as_bytes());
        }
        if let Some(l) = link.filter(|_| link_long) {
            pax_record(&mut records, "linkpath", l.as_bytes());
        }
        if size_long {
            pax_record(&mut records, "size", size.to_string().as_bytes());
        }
        let pax_name = format!("PaxHeaders/{}", truncate(name.trim_end_matches('/'), 89));
        let pax_meta = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        raw_header(
            out,
            &pax_name,
            tar::EntryType::XHeader,
            pax_meta,
            records.len() as u64,
            None,
            mtime,
        )?;
        out.write_all(&records).map_err(LayerError::Write)?;
        pad(out, records.len() as u64)?;
    }
    let size_field = if size_long { 0 } else { size };
    raw_header(out, name, ty, meta, size_field, link, mtime)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    // "LEN KEY=VALUE\n" where LEN counts the whole record, itself included.
    let body = key.len() + value.len() + 3;
    let mut len = body + body.to_string().len();
    if len.to_string().len() != body.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn raw_header(
    out: &mut impl Write,
    name: &str,
    ty: tar::EntryType,
    meta: Meta,
    size: u64,
    link: Option<&str>,
    mtime: u64,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        let n = truncate(name, 100).as_bytes();
        old.name[..n.len()].copy_from_slice(n);
        if let Some(l) = link {
            let l = truncate(l, 100).as_bytes();
            old.linkname[..l.len()].copy_from_slice(l);
        }
    }
    h.set_entry_type(ty);
    h.set_mode(meta.mode);
    h.set_uid(meta.uid as u64);
    h.set_gid(meta.gid as u64);
    h.set_size(size);
    h.set_mtime(mtime);
    if let Some(u) = h.as_ustar_mut() {
        // Octal zeros, as GNU tar writes them, rather than empty fields.
        u.dev_major.copy_from_slice(b"0000000\0");
        u.dev_minor.copy_from_slice(b"0000000\0");
    }
    h.set_cksum();
    out.write_all(h.as_bytes()).map_err(LayerError::Write)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::oci::listing::read_tar;

    fn sample() -> Tree {
        let mut t = Tree::new();
        let long = format!("deep/{}/file.txt", "x".repeat(120));
        for (p, body) in [("b.txt", "bee"), ("a/z", "zed"), (long.as_str(), "long")] {
            let bytes: Arc<[u8]> = Arc::from(body.as_bytes());
            t.insert(
                ImagePath::parse(p).unwrap(),
                NodeKind::File {
                    size: bytes.len() as u64,
                    content: Content::Inline(bytes),
                },
                Meta::FILE,
            )
            .unwrap();
        }
        t.insert(
            ImagePath::parse("ln").unwrap(),
            NodeKind::Symlink("b.txt".into()),
            Meta::FILE,
        )
        .unwrap();
        t.insert(ImagePath::parse("gone").unwrap(), NodeKind::Whiteout, Meta::FILE)
            .unwrap();
        t
    }

    #[test]
    fn tar_round_trips_through_a_reader() {
        let mut out = Vec::new();
        let listing = write_tar(&sample(), &|_| None, 0, &mut out).unwrap();
        let read = read_tar(&out[..]).unwrap();
        let names: Vec<_> = read.iter().map(|e| (e.path.clone(), e.kind)).collect();
        let long = format!("deep/{}/file.txt", "x".repeat(120));
        assert!(names.contains(&(long, EntryKind::File)));
        assert!(names.contains(&("gone".to_string(), EntryKind::Whiteout)));
        assert!(names.contains(&("ln".to_string(), EntryKind::Symlink)));
        assert_eq!(listing.len(), read.len());
        // Deterministic: same tree, same bytes.
        let mut again = Vec::new();
        write_tar(&sample(), &|_| None, 0, &mut again).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn implicit_dirs_take_parent_metadata() {
        let mut out = Vec::new();
        let tmp = Meta {
            mode: 0o1777,
            uid: 0,
            gid: 0,
        };
        let listing = write_tar(&sample(), &|p| (p.as_str() == "a").then_some(tmp), 0, &mut out).unwrap();
        let a = listing.iter().find(|e| e.path == "a").unwrap();
        assert_eq!(a.mode, 0o1777);
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for n in [1usize, 5, 90, 95, 98, 99, 100, 995, 996, 999] {
            let mut r = Vec::new();
            pax_record(&mut r, "path", "v".repeat(n).as_bytes());
            let s = String::from_utf8(r.clone()).unwrap();
            let len: usize = s.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(len, r.len(), "value length {n}");
        }
    }
}
