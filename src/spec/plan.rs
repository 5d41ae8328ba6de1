//! The checked build plan that `layers.toml` resolves into.
//!
//! Past this point there are no raw strings where a digest, a path inside an
//! image, a mode or an owner belongs. Every type here serializes, and that
//! serialization (minus source locations) is what a tier's cache key hashes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::digest::Digest;

/// Where in a config file a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
}

/// Where each line of a text starts: turns a byte offset (a TOML span)
/// into a [`Location`].
#[derive(Debug, Clone)]
pub struct LineIndex(Vec<usize>);

impl LineIndex {
    pub fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex(starts)
    }

    pub fn at(&self, file: &std::path::Path, offset: usize) -> Location {
        let line = match self.0.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        Location {
            file: file.to_path_buf(),
            line: line + 1,
            col: offset - self.0[line] + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// A normalized path inside an image: relative, `/`-separated, no `.` or
/// `..` components, no trailing slash. The root is the empty path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ImagePath(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ImagePathError {
    #[error("it climbs out of the root with `..`")]
    ParentDir,
    #[error("it contains a NUL byte")]
    Nul,
}

impl ImagePath {
    pub fn root() -> ImagePath {
        ImagePath(String::new())
    }

    /// Normalizes `p`, which may start with `/` or `./`. Absolute and
    /// relative spellings name the same path; `..` is refused.
    pub fn parse(p: &str) -> Result<ImagePath, ImagePathError> {
        if p.contains('\0') {
            return Err(ImagePathError::Nul);
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in p.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(ImagePathError::ParentDir),
                other => parts.push(other),
            }
        }
        Ok(ImagePath(parts.join("/")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn join(&self, rel: &ImagePath) -> ImagePath {
        match (self.is_root(), rel.is_root()) {
            (true, _) => rel.clone(),
            (_, true) => self.clone(),
            _ => ImagePath(format!("{}/{}", self.0, rel.0)),
        }
    }

    pub fn parent(&self) -> Option<ImagePath> {
        if self.is_root() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => ImagePath(self.0[..i].to_string()),
            None => ImagePath::root(),
        })
    }

    pub fn file_name(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// `self` with `prefix` removed, if `self` is `prefix` or below it.
    pub fn strip_prefix(&self, prefix: &ImagePath) -> Option<ImagePath> {
        if prefix.is_root() {
            return Some(self.clone());
        }
        if self.0 == prefix.0 {
            return Some(ImagePath::root());
        }
        self.0
            .strip_prefix(&prefix.0)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(|rest| ImagePath(rest.to_string()))
    }

    /// Drops the first `n` components; `None` when nothing is left.
    pub fn strip_components(&self, n: u32) -> Option<ImagePath> {
        if n == 0 {
            return Some(self.clone());
        }
        let mut it = self.0.splitn(n as usize + 1, '/');
        for _ in 0..n {
            it.next()?;
        }
        it.next()
            .filter(|rest| !rest.is_empty())
            .map(|rest| ImagePath(rest.to_string()))
    }

    /// Every proper ancestor, nearest the root first, the root excluded.
    pub fn ancestors(&self) -> Vec<ImagePath> {
        let mut out = Vec::new();
        let mut cur = self.parent();
        while let Some(p) = cur {
            if p.is_root() {
                break;
            }
            cur = p.parent();
            out.push(p);
        }
        out.reverse();
        out
    }
}

impl fmt::Display for ImagePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

/// The layer compression of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Compression {
    Zstd { level: i32 },
    Gzip { level: u32 },
}

/// Settings shared by every tier of a build.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Every mtime in every layer, and the image `created` time.
    pub source_date_epoch: i64,
    pub compression: Compression,
    /// Images are tagged `REPOSITORY/TIER:TAG`. Names are not content:
    /// they stay out of cache keys.
    #[serde(skip)]
    pub repository: String,
    #[serde(skip)]
    pub tag: String,
    pub os: String,
    pub architecture: String,
}

/// File attribute overrides for a source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Attrs {
    pub mode: Option<u32>,
    pub dir_mode: Option<u32>,
    pub owner: Option<(u32, u32)>,
}

/// Which entries of a source are taken and where they land.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub strip_components: u32,
    pub strip_prefix: Option<ImagePath>,
}

/// A host file, or an `http(s)` URL that must carry a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Origin {
    Local(PathBuf),
    Url(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Local(p) => write!(f, "{}", p.display()),
            Origin::Url(u) => f.write_str(u),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub enum SourceKind {
    /// A host file or directory, copied under `dest`.
    Path(PathBuf),
    /// A tar archive (gzip, xz, zstd or plain, detected from its bytes).
    Tar(Origin),
    /// A Debian package: its `data.tar.*` is extracted.
    Deb(Origin),
    /// A WAR (zip) file or an exploded directory, unpacked under `dest`.
    War(PathBuf),
    /// Inline file content written to `dest`.
    Content(String),
    /// Symlinks pointing at `target`, created at each of `paths`.
    Symlink { target: String, paths: Vec<ImagePath> },
    /// Empty directories.
    Dir(Vec<ImagePath>),
}

#[derive(Debug, Clone, Serialize)]
pub struct Source {
    pub kind: SourceKind,
    /// Required for URLs, verified for local archives when given.
    pub digest: Option<Digest>,
    pub dest: ImagePath,
    pub filter: Filter,
    pub attrs: Attrs,
    #[serde(skip)]
    pub at: Location,
}

/// The fixes every image needs, each baked once into the tier that owns it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fixes {
    /// An IANA zone name such as `Asia/Shanghai`.
    pub timezone: Option<String>,
    /// A charset name such as `UTF-8`.
    pub encoding: Option<String>,
    pub hostname: bool,
    pub jvm: Option<JvmFix>,
    pub init: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct JvmFix {
    pub max_ram_percentage: f64,
    pub initial_ram_percentage: Option<f64>,
    pub exit_on_oom: bool,
    pub extra: Vec<String>,
}

/// What a tier changes in its parent's image config. `None` inherits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigChanges {
    pub env: BTreeMap<String, String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

/// An image a parentless tier starts from.
#[derive(Debug, Clone, Serialize)]
pub enum BaseImage {
    /// `oci:DIR[:REF]`
    OciLayout { dir: PathBuf, reference: Option<String> },
    /// `docker-archive:PATH[:REPO:TAG]`
    DockerArchive {
        path: PathBuf,
        reference: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Tier {
    pub name: String,
    pub description: Option<String>,
    pub parent: Option<String>,
    pub base: Option<BaseImage>,
    pub sources: Vec<Source>,
    pub delete: Vec<ImagePath>,
    pub run: Vec<String>,
    pub fixes: Fixes,
    pub config: ConfigChanges,
    /// True for tiers made from the `[app]` template.
    pub is_app: bool,
    #[serde(skip)]
    pub at: Location,
}

/// A resolved `layers.toml`: tiers in build order, parents first.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: PathBuf,
    pub settings: Settings,
    pub tiers: Vec<Tier>,
}

impl Plan {
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// The tier and its ancestors, root first.
    pub fn chain(&self, name: &str) -> Vec<&Tier> {
        let mut out = Vec::new();
        let mut cur = self.tier(name);
        while let Some(t) = cur {
            out.push(t);
            cur = t.parent.as_deref().and_then(|p| self.tier(p));
        }
        out.reverse();
        out
    }

    /// The image reference a tier is tagged with.
    pub fn image_ref(&self, tier: &str) -> String {
        if self.settings.repository.is_empty() {
            format!("{tier}:{}", self.settings.tag)
        } else {
            format!("{}/{tier}:{}", self.settings.repository, self.settings.tag)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_normalize() {
        assert_eq!(
            ImagePath::parse("/usr//bin/./java").unwrap().as_str(),
            "usr/bin/java"
        );
        assert_eq!(ImagePath::parse("./").unwrap(), ImagePath::root());
        assert_eq!(ImagePath::parse("a/../b"), Err(ImagePathError::ParentDir));
        let p = ImagePath::parse("a/b/c").unwrap();
        assert_eq!(p.strip_components(1).unwrap().as_str(), "b/c");
        assert_eq!(p.strip_components(3), None);
        assert_eq!(
            p.strip_prefix(&ImagePath::parse("a").unwrap()).unwrap().as_str(),
            "b/c"
        );
        assert_eq!(p.strip_prefix(&ImagePath::parse("ab").unwrap()), None);
        let anc: Vec<_> = p.ancestors().iter().map(|a| a.as_str().to_string()).collect();
        assert_eq!(anc, ["a", "a/b"]);
    }
}
