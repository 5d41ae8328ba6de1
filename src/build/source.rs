//! Turning a tier's sources into tree entries: host files and directories,
//! tar archives (any compression), Debian packages, WARs, inline content,
//! symlinks and directories.
//!
//! Archive entries are validated before anything else happens: an absolute
//! path, a `..` component, an entry below a symlink or a symlink that climbs
//! out of the root is an error naming the archive and the entry. Extracted
//! bytes are staged under numbered names in a temporary directory, so no
//! archive ever chooses a path on the build host.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::build::tree::{Content, Meta, NodeKind, Tree, TreeError};
use crate::spec::{Attrs, Filter, ImagePath, Source, SourceKind};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: entry `{entry}` has an absolute path; archives must be relative to their root", archive.display())]
    AbsoluteEntry { archive: PathBuf, entry: String },
    #[error("{}: entry `{entry}` climbs out of the root with `..`", archive.display())]
    ParentEntry { archive: PathBuf, entry: String },
    #[error("{}: {source}", archive.display())]
    Tree { archive: PathBuf, source: TreeError },
    #[error("{}: not a Debian package (no `!<arch>` header or no data.tar member)", path.display())]
    NotDeb { path: PathBuf },
    #[error("{}: unsupported compression of member `{member}`", path.display())]
    DebCompression { path: PathBuf, member: String },
    #[error("{}: no entry matched the source's filters (include, exclude, strip_prefix, strip_components)", archive.display())]
    NothingMatched { archive: PathBuf },
    #[error("{}: not a zip/WAR file: {reason}", path.display())]
    BadZip { path: PathBuf, reason: String },
}

pub type Result<T, E = SourceError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A scratch directory holding extracted file bytes under numbered names.
pub struct Stage {
    dir: PathBuf,
    next: u64,
}

impl Stage {
    pub fn new(dir: PathBuf) -> Stage {
        Stage { dir, next: 0 }
    }

    /// Copies `r` into a fresh staged file and returns its path and size.
    pub fn file(&mut self, mut r: impl Read) -> Result<(PathBuf, u64)> {
        let path = self.dir.join(self.next.to_string());
        self.next += 1;
        let mut f = File::create(&path).map_err(io_err(&path))?;
        let n = io::copy(&mut r, &mut f).map_err(io_err(&path))?;
        f.flush().map_err(io_err(&path))?;
        Ok((path, n))
    }
}

/// Include/exclude matching plus the path rewriting of one source.
pub struct Mapper {
    /// Entries taken so far; a source that takes none is a mistake.
    taken: std::cell::Cell<usize>,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    filter: Filter,
    dest: ImagePath,
    attrs: Attrs,
}

fn globset(patterns: &[String]) -> Option<GlobSet> {
    if patterns.is_empty() {
        return None;
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        // Patterns were checked when the config was resolved.
        if let Ok(g) = GlobBuilder::new(p).literal_separator(true).build() {
            b.add(g);
        }
    }
    b.build().ok()
}

impl Mapper {
    fn new(src: &Source) -> Mapper {
        Mapper {
            taken: std::cell::Cell::new(0),
            include: globset(&src.filter.include),
            exclude: globset(&src.filter.exclude),
            filter: src.filter.clone(),
            dest: src.dest.clone(),
            attrs: src.attrs.clone(),
        }
    }

    /// Takes every entry as it is.
    pub fn identity() -> Mapper {
        Mapper {
            taken: std::cell::Cell::new(0),
            include: None,
            exclude: None,
            filter: Filter::default(),
            dest: ImagePath::root(),
            attrs: Attrs::default(),
        }
    }

    /// Maps a source-relative path to its image path, or `None` when the
    /// filters drop it.
    fn map(&self, rel: &ImagePath) -> Option<ImagePath> {
        let rel = rel.strip_components(self.filter.strip_components)?;
        let rel = match &self.filter.strip_prefix {
            Some(prefix) => rel.strip_prefix(prefix)?,
            None => rel,
        };
        let hits = |set: &GlobSet| {
            !rel.is_root()
                && (set.is_match(rel.as_str()) || rel.ancestors().iter().any(|a| set.is_match(a.as_str())))
        };
        if let Some(ex) = &self.exclude
            && hits(ex)
        {
            return None;
        }
        if let Some(inc) = &self.include
            && !hits(inc)
        {
            return None;
        }
        self.taken.set(self.taken.get() + 1);
        Some(self.dest.join(&rel))
    }

    fn check_taken(&self, archive: &Path) -> Result<()> {
        if self.taken.get() == 0 {
            return Err(SourceError::NothingMatched {
                archive: archive.to_path_buf(),
            });
        }
        Ok(())
    }

    fn meta(&self, is_dir: bool, mode: u32, uid: u32, gid: u32) -> Meta {
        let (uid, gid) = self.attrs.owner.unwrap_or((uid, gid));
        let mode = if is_dir {
            self.attrs.dir_mode.unwrap_or(mode)
        } else {
            self.attrs.mode.unwrap_or(mode)
        };
        Meta {
            mode: mode & 0o7777,
            uid,
            gid,
        }
    }
}

/// Adds one source to the tree. `fetched` is the local file of a URL
/// source (downloaded and verified beforehand).
pub fn add(tree: &mut Tree, stage: &mut Stage, src: &Source, fetched: Option<&Path>) -> Result<()> {
    let m = Mapper::new(src);
    match &src.kind {
        SourceKind::Path(p) => {
            add_host(tree, &m, p)?;
            m.check_taken(p)
        }
        SourceKind::Tar(origin) | SourceKind::Deb(origin) => {
            let path = match (origin, fetched) {
                (_, Some(f)) => f.to_path_buf(),
                (crate::spec::Origin::Local(p), None) => p.clone(),
                (crate::spec::Origin::Url(u), None) => PathBuf::from(u),
            };
            let file = File::open(&path).map_err(io_err(&path))?;
            let reader = BufReader::with_capacity(1 << 20, file);
            if matches!(src.kind, SourceKind::Deb(_)) {
                add_deb(tree, stage, &m, &path, reader)?;
            } else {
                let r = decompress(reader).map_err(io_err(&path))?;
                add_tar(tree, stage, &m, &path, r)?;
            }
            m.check_taken(&path)
        }
        SourceKind::War(p) => {
            if p.is_dir() {
                add_host(tree, &m, p)?;
            } else {
                add_zip(tree, stage, &m, p)?;
            }
            m.check_taken(p)
        }
        SourceKind::Content(text) => {
            let bytes: Arc<[u8]> = Arc::from(text.as_bytes());
            let meta = m.meta(false, 0o644, 0, 0);
            tree.insert(
                src.dest.clone(),
                NodeKind::File {
                    size: bytes.len() as u64,
                    content: Content::Inline(bytes),
                },
                meta,
            )
            .map_err(|source| SourceError::Tree {
                archive: PathBuf::from("content"),
                source,
            })
        }
        SourceKind::Symlink { target, paths } => {
            for p in paths {
                tree.insert(
                    p.clone(),
                    NodeKind::Symlink(target.clone()),
                    m.meta(false, 0o777, 0, 0),
                )
                .map_err(|source| SourceError::Tree {
                    archive: PathBuf::from("symlink"),
                    source,
                })?;
            }
            Ok(())
        }
        SourceKind::Dir(paths) => {
            for p in paths {
                // `mode` is the natural key for a directory source.
                let mode = m.attrs.dir_mode.or(m.attrs.mode).unwrap_or(0o755);
                tree.insert(p.clone(), NodeKind::Dir, m.meta(true, mode, 0, 0))
                    .map_err(|source| SourceError::Tree {
                        archive: PathBuf::from("dir"),
                        source,
                    })?;
            }
            Ok(())
        }
    }
}

/// Sniffs the compression of a tar stream from its first bytes.
pub fn decompress<'a>(mut r: impl io::BufRead + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2::bufread::XzDecoder::new_multi_decoder(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(r)?)
    } else if head.starts_with(b"BZh") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bzip2 archives are not supported",
        ));
    } else {
        Box::new(r)
    })
}

fn add_host(tree: &mut Tree, m: &Mapper, root: &Path) -> Result<()> {
    let tree_err = |source| SourceError::Tree {
        archive: root.to_path_buf(),
        source,
    };
    let meta = fs::symlink_metadata(root).map_err(io_err(root))?;
    if !meta.is_dir() {
        // A single file lands at `dest` itself, or `/NAME` without one.
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = if m.dest.is_root() {
            ImagePath::parse(&name).map_err(|_| SourceError::ParentEntry {
                archive: root.to_path_buf(),
                entry: name.clone(),
            })?
        } else {
            m.dest.clone()
        };
        let node = host_node(root, &meta)?;
        m.taken.set(1);
        return tree
            .insert(dest, node, m.meta(false, meta.mode(), 0, 0))
            .map_err(tree_err);
    }
    let mut links: std::collections::HashMap<(u64, u64), ImagePath> = Default::default();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name().min_depth(1) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            SourceError::Io {
                path,
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| io::Error::other("walk failed")),
            }
        })?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("walkdir stays below its root");
        let rel = ImagePath::parse(&rel.to_string_lossy()).map_err(|_| SourceError::ParentEntry {
            archive: root.to_path_buf(),
            entry: rel.display().to_string(),
        })?;
        let Some(dest) = m.map(&rel) else { continue };
        let md = entry.path().symlink_metadata().map_err(io_err(entry.path()))?;
        let is_dir = md.is_dir();
        // Owners are normalized to root unless the source sets them.
        let meta = m.meta(is_dir, md.mode(), 0, 0);
        if md.is_file() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = links.get(&key) {
                tree.insert(dest, NodeKind::Hardlink(first.clone()), meta)
                    .map_err(tree_err)?;
                continue;
            }
            links.insert(key, dest.clone());
        }
        let node = host_node(entry.path(), &md)?;
        if let NodeKind::Dir = node {
            tree.insert(dest, node, meta).map_err(tree_err)?;
        } else if md.is_file() || md.file_type().is_symlink() {
            tree.insert(dest, node, meta).map_err(tree_err)?;
        }
    }
    Ok(())
}

fn host_node(path: &Path, md: &fs::Metadata) -> Result<NodeKind> {
    let ft = md.file_type();
    Ok(if ft.is_dir() {
        NodeKind::Dir
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io_err(path))?;
        NodeKind::Symlink(target.to_string_lossy().into_owned())
    } else {
        NodeKind::File {
            content: Content::Host(path.to_path_buf()),
            size: md.len(),
        }
    })
}

/// Checks an archive entry name and turns it into a relative image path.
fn archive_path(archive: &Path, raw: &[u8]) -> Result<ImagePath> {
    let s = String::from_utf8_lossy(raw);
    if s.starts_with('/') {
        return Err(SourceError::AbsoluteEntry {
            archive: archive.to_path_buf(),
            entry: s.into_owned(),
        });
    }
    ImagePath::parse(&s).map_err(|_| SourceError::ParentEntry {
        archive: archive.to_path_buf(),
        entry: s.into_owned(),
    })
}

/// Adds every entry of an uncompressed tar stream.
/// Adds a layer tar as it is (whiteout markers stay regular `.wh.` files,
/// which the layer writer passes through unchanged).
pub fn add_layer_tar(tree: &mut Tree, stage: &mut Stage, archive: &Path, r: impl Read) -> Result<()> {
    add_tar(tree, stage, &Mapper::identity(), archive, r)
}

fn add_tar(tree: &mut Tree, stage: &mut Stage, m: &Mapper, archive: &Path, r: impl Read) -> Result<()> {
    let tree_err = |source| SourceError::Tree {
        archive: archive.to_path_buf(),
        source,
    };
    let mut ar = tar::Archive::new(r);
    for entry in ar.entries().map_err(io_err(archive))? {
        let mut entry = entry.map_err(io_err(archive))?;
        let rel = archive_path(archive, &entry.path_bytes())?;
        let h = entry.header();
        let ty = h.entry_type();
        let mode = h.mode().unwrap_or(0o644);
        let uid = h.uid().unwrap_or(0) as u32;
        let gid = h.gid().unwrap_or(0) as u32;
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let Some(dest) = m.map(&rel) else { continue };
        let is_dir = ty == tar::EntryType::Directory;
        let meta = m.meta(is_dir, mode, uid, gid);
        let node = match ty {
            tar::EntryType::Directory => NodeKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (path, size) = stage.file(&mut entry)?;
                NodeKind::File {
                    content: Content::Host(path),
                    size,
                }
            }
            tar::EntryType::Symlink => {
                let target = String::from_utf8_lossy(&link.unwrap_or_default()).into_owned();
                NodeKind::Symlink(target)
            }
            tar::EntryType::Link => {
                let target = archive_path(archive, &link.unwrap_or_default())?;
                match m.map(&target) {
                    Some(t) => NodeKind::Hardlink(t),
                    None => {
                        return Err(tree_err(TreeError::BadHardlink {
                            path: dest.to_string(),
                            target: target.to_string(),
                        }));
                    }
                }
            }
            // Devices, fifos and the like do not belong in image layers.
            _ => continue,
        };
        if rel.is_root() && is_dir {
            continue;
        }
        tree.insert(dest, node, meta).map_err(tree_err)?;
    }
    Ok(())
}

/// Adds every file of a Debian package as it is (no filters), checked
/// like any archive. For fuzzing and tests; builds go through [`add`].
pub fn add_deb_reader(tree: &mut Tree, stage: &mut Stage, archive: &Path, r: impl Read) -> Result<()> {
    add_deb(tree, stage, &Mapper::identity(), archive, r)
}

/// Adds the `data.tar.*` member of a Debian package (an `ar` archive).
fn add_deb(tree: &mut Tree, stage: &mut Stage, m: &Mapper, path: &Path, mut r: impl Read) -> Result<()> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| SourceError::NotDeb {
        path: path.to_path_buf(),
    })?;
    if &magic != b"!<arch>\n" {
        return Err(SourceError::NotDeb {
            path: path.to_path_buf(),
        });
    }
    loop {
        let mut hdr = [0u8; 60];
        match r.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(SourceError::NotDeb {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err(path)(e)),
        }
        let name = String::from_utf8_lossy(&hdr[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = String::from_utf8_lossy(&hdr[48..58])
            .trim()
            .parse()
            .map_err(|_| SourceError::NotDeb {
                path: path.to_path_buf(),
            })?;
        let mut member = (&mut r).take(size);
        if let Some(ext) = name.strip_prefix("data.tar") {
            let inner: Box<dyn Read> = match ext {
                "" => Box::new(member),
                ".gz" => Box::new(flate2::read::GzDecoder::new(member)),
                ".xz" => Box::new(xz2::read::XzDecoder::new(member)),
                ".zst" => Box::new(zstd::stream::read::Decoder::new(member).map_err(io_err(path))?),
                _ => {
                    return Err(SourceError::DebCompression {
                        path: path.to_path_buf(),
                        member: name,
                    });
                }
            };
            return add_tar(tree, stage, m, path, inner);
        }
        io::copy(&mut member, &mut io::sink()).map_err(io_err(path))?;
        if size % 2 == 1 {
            let mut pad = [0u8; 1];
            r.read_exact(&mut pad).map_err(io_err(path))?;
        }
    }
}

/// Unpacks a WAR (zip) file.
fn add_zip(tree: &mut Tree, stage: &mut Stage, m: &Mapper, path: &Path) -> Result<()> {
    let tree_err = |source| SourceError::Tree {
        archive: path.to_path_buf(),
        source,
    };
    let bad = |e: zip::result::ZipError| SourceError::BadZip {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = File::open(path).map_err(io_err(path))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(bad)?;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(bad)?;
        let rel = archive_path(path, f.name_raw())?;
        let Some(dest) = m.map(&rel) else { continue };
        let is_dir = f.is_dir();
        let mode = f.unix_mode().map(|m| m & 0o7777).filter(|m| *m != 0);
        let meta = m.meta(is_dir, mode.unwrap_or(if is_dir { 0o755 } else { 0o644 }), 0, 0);
        if is_dir {
            if !rel.is_root() {
                tree.insert(dest, NodeKind::Dir, meta).map_err(tree_err)?;
            }
            continue;
        }
        let (p, size) = stage.file(&mut f)?;
        tree.insert(
            dest,
            NodeKind::File {
                content: Content::Host(p),
                size,
            },
            meta,
        )
        .map_err(tree_err)?;
    }
    Ok(())
}
