//! The tier builder: a [`Plan`] becomes one image per tier in the store,
//! each tier one layer on its parent, unchanged tiers reused from cache.
//!
//! A tier's cache key hashes its resolved declaration, the fingerprints of
//! its inputs (pinned digests, or size and mtime of host files, never their
//! content) and its parent's key, so a new WAR costs one small layer and an
//! unchanged tier costs a few `stat` calls. Nothing is written outside the
//! store until a tier is complete; output directories are written at the end.

pub mod fixes;
pub mod layer;
pub mod run;
pub mod source;
pub mod tree;

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Hasher, hash_reader};
use crate::oci::listing::EntryKind;
use crate::oci::{
    ANNOTATION_PARENT, ANNOTATION_TIER, Descriptor, History, ImageConfig, MEDIA_CONFIG, MEDIA_MANIFEST,
    Manifest, rfc3339, to_json,
};
use crate::spec::{BaseImage, ConfigChanges, ImagePath, Origin, Plan, SourceKind, Tier};
use crate::store::{Store, StoreError};
use tree::{Meta, NodeKind, Tree};

/// Bumped whenever the bytes strata writes for the same inputs change.
const KEY_VERSION: &str = "strata-tier-v1";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("tier `{tier}`: {source}")]
    Source {
        tier: String,
        source: source::SourceError,
    },
    #[error("tier `{tier}`: {source}")]
    Layer { tier: String, source: layer::LayerError },
    #[error("tier `{tier}`: {source}")]
    Fetch {
        tier: String,
        source: crate::fetch::FetchError,
    },
    #[error("tier `{tier}`: {} ({at}): expected {expected}, got {actual}; nothing was built", path.display())]
    DigestMismatch {
        tier: String,
        at: crate::spec::Location,
        path: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("tier `{tier}`: {source}")]
    Fix { tier: String, source: fixes::FixError },
    #[error("tier `{tier}`: base image: {reason}")]
    Base { tier: String, reason: String },
    #[error("tier `{tier}`: {source}")]
    Run { tier: String, source: run::RunError },
    #[error("tier `{tier}`: reading {}: {source}", path.display())]
    Io {
        tier: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("unknown tier `{0}` (not in the config)")]
    UnknownTier(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Diff(#[from] crate::oci::diff::DiffError),
}

pub type Result<T, E = BuildError> = std::result::Result<T, E>;

/// What happened to one tier.
#[derive(Debug, Clone, Serialize)]
pub struct TierOutcome {
    pub tier: String,
    pub reference: String,
    pub cached: bool,
    pub seconds: f64,
    pub manifest: Descriptor,
    /// The layer this tier added (none when it only changed the config).
    pub layer: Option<Descriptor>,
    pub diff_id: Option<Digest>,
    /// Compressed size of all layers of the image.
    pub image_size: u64,
    pub layers: usize,
    pub key: String,
}

/// Progress of a build, for a display or a log.
pub enum Event<'a> {
    TierStart { tier: &'a str },
    Step { tier: &'a str, what: String },
    TierDone(&'a TierOutcome),
}

pub trait Progress {
    fn event(&self, e: Event<'_>);
}

/// A progress sink that prints nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _: Event<'_>) {}
}

pub struct Options<'a> {
    pub store: &'a Store,
    /// Build only these tiers (and their ancestors); all when empty.
    pub only: Vec<String>,
    /// Ignore cached tiers and rebuild every layer.
    pub no_cache: bool,
    pub progress: &'a dyn Progress,
    /// Where `run` steps execute; `None` makes run steps an error.
    pub engine: Option<&'a dyn run::RunEngine>,
}

/// The cached result of a tier, stored under `meta/tier/<key>`.
#[derive(Debug, Serialize, Deserialize)]
struct TierRecord {
    manifest: Descriptor,
    layer: Option<Descriptor>,
    diff_id: Option<Digest>,
}

/// What a child tier needs of its parent.
#[derive(Clone)]
struct Built {
    key: Digest,
    manifest: Manifest,
    config: ImageConfig,
}

/// Builds the plan's tiers in order; returns one outcome per built tier.
pub fn build(plan: &Plan, opts: &Options) -> Result<Vec<TierOutcome>> {
    let wanted: Vec<&Tier> = if opts.only.is_empty() {
        plan.tiers.iter().collect()
    } else {
        let mut names = std::collections::BTreeSet::new();
        for n in &opts.only {
            if plan.tier(n).is_none() {
                return Err(BuildError::UnknownTier(n.clone()));
            }
            for t in plan.chain(n) {
                names.insert(t.name.clone());
            }
        }
        plan.tiers.iter().filter(|t| names.contains(&t.name)).collect()
    };
    let mut built: BTreeMap<String, Built> = BTreeMap::new();
    let mut out = Vec::new();
    for tier in wanted {
        opts.progress.event(Event::TierStart { tier: &tier.name });
        let start = Instant::now();
        let parent = tier
            .parent
            .as_ref()
            .map(|p| built.get(p).cloned().expect("parents are built first"));
        let (b, outcome) = build_tier(plan, tier, parent.as_ref(), opts, start)?;
        opts.progress.event(Event::TierDone(&outcome));
        built.insert(tier.name.clone(), b);
        out.push(outcome);
    }
    Ok(out)
}

fn build_tier(
    plan: &Plan,
    tier: &Tier,
    parent: Option<&Built>,
    opts: &Options,
    start: Instant,
) -> Result<(Built, TierOutcome)> {
    let store = opts.store;
    let name = tier.name.clone();
    let step = |what: String| {
        opts.progress.event(Event::Step {
            tier: &tier.name,
            what,
        })
    };

    // The image this tier starts from.
    let base = match (&tier.base, parent) {
        (Some(b), _) => Some(import_base(store, &name, b)?),
        (None, Some(p)) => Some(p.clone()),
        (None, None) => None,
    };
    let key = tier_key(plan, tier, base.as_ref())?;

    if !opts.no_cache
        && let Some(rec) = cached(store, &key)
    {
        let manifest: Manifest = store.read_json(&rec.manifest.digest)?;
        let config: ImageConfig = store.read_json(&manifest.config.digest)?;
        let outcome = outcome(
            plan,
            tier,
            &key,
            &manifest,
            rec.manifest,
            rec.layer,
            rec.diff_id,
            true,
            start,
        );
        return Ok((
            Built {
                key,
                manifest,
                config,
            },
            outcome,
        ));
    }

    // Fetch URL sources and check pinned digests before building anything.
    let mut fetched: Vec<Option<PathBuf>> = Vec::new();
    for src in &tier.sources {
        let origin = match &src.kind {
            SourceKind::Tar(o) | SourceKind::Deb(o) => Some(o),
            _ => None,
        };
        match (origin, &src.digest) {
            (Some(Origin::Url(url)), Some(d)) => {
                step(format!("download {url}"));
                let p = crate::fetch::fetch(store, url, d, &|_| {}).map_err(|source| BuildError::Fetch {
                    tier: name.clone(),
                    source,
                })?;
                fetched.push(Some(p));
            }
            (Some(Origin::Local(p)), Some(d)) => {
                let f = fs::File::open(p).map_err(|source| BuildError::Io {
                    tier: name.clone(),
                    path: p.clone(),
                    source,
                })?;
                let (actual, _) =
                    hash_reader(BufReader::with_capacity(1 << 20, f), d.algorithm()).map_err(|source| {
                        BuildError::Io {
                            tier: name.clone(),
                            path: p.clone(),
                            source,
                        }
                    })?;
                if &actual != d {
                    return Err(BuildError::DigestMismatch {
                        tier: name.clone(),
                        at: src.at.clone(),
                        path: p.clone(),
                        expected: d.clone(),
                        actual,
                    });
                }
                fetched.push(None);
            }
            _ => fetched.push(None),
        }
    }

    let stage_dir = store.temp_dir("stage-")?;
    let mut stage = source::Stage::new(stage_dir.path().to_path_buf());
    let mut tree = Tree::new();
    for (src, f) in tier.sources.iter().zip(&fetched) {
        step(format!("add {}", describe(&src.kind)));
        source::add(&mut tree, &mut stage, src, f.as_deref()).map_err(|source| BuildError::Source {
            tier: name.clone(),
            source,
        })?;
    }
    for d in &tier.delete {
        tree.insert(d.clone(), NodeKind::Whiteout, Meta::FILE)
            .map_err(|e| BuildError::Source {
                tier: name.clone(),
                source: source::SourceError::Tree {
                    archive: PathBuf::from("delete"),
                    source: e,
                },
            })?;
    }

    // The parent's visible files: metadata for implicit directories, and
    // what fixes look for (zoneinfo, the shell).
    let parent_files = match &base {
        Some(b) => crate::oci::diff::image_files(store, &b.manifest)?,
        None => BTreeMap::new(),
    };
    let mut config = match &base {
        Some(b) => b.config.clone(),
        None => ImageConfig::empty(&plan.settings.os, &plan.settings.architecture),
    };
    apply_changes(&mut config, &tier.config);
    let applied =
        fixes::apply(&tier.fixes, &mut tree, &mut config, &parent_files, &tier.config).map_err(|source| {
            BuildError::Fix {
                tier: name.clone(),
                source,
            }
        })?;
    tree.order_hardlinks();

    let mut manifest = match &base {
        Some(b) => b.manifest.clone(),
        None => Manifest {
            schema_version: 2,
            media_type: Some(MEDIA_MANIFEST.to_string()),
            config: Descriptor::new(MEDIA_CONFIG, Digest::sha256_of(b""), 0),
            layers: Vec::new(),
            annotations: BTreeMap::new(),
        },
    };
    let mut created_by = format!("strata tier {name}");
    if !applied.is_empty() {
        created_by.push_str(&format!(" (fixes: {})", applied.join(", ")));
    }
    let (layer, diff_id) = if tree.is_empty() && tier.run.is_empty() {
        config.history.push(History {
            created: Some(rfc3339(plan.settings.source_date_epoch)),
            created_by: Some(created_by),
            comment: tier.description.clone(),
            empty_layer: true,
        });
        (None, None)
    } else {
        let implicit = |p: &ImagePath| -> Option<Meta> {
            parent_files
                .get(p.as_str())
                .filter(|e| e.kind == EntryKind::Dir)
                .map(|e| Meta {
                    mode: e.mode,
                    uid: e.uid as u32,
                    gid: e.gid as u32,
                })
        };
        let blob = if tier.run.is_empty() {
            step(format!("write layer ({} entries)", tree.len()));
            layer::write_layer(
                store,
                &tree,
                &implicit,
                plan.settings.compression,
                plan.settings.source_date_epoch,
            )
            .map_err(|source| BuildError::Layer {
                tier: name.clone(),
                source,
            })?
        } else {
            let engine = opts.engine.ok_or_else(|| BuildError::Run {
                tier: name.clone(),
                source: run::RunError::NoEngine,
            })?;
            step(format!("run {} step(s) in a container", tier.run.len()));
            run::run_steps(
                engine,
                store,
                plan,
                tier,
                base.as_ref().map(|b| (&b.manifest, &b.config)),
                &tree,
                &implicit,
            )
            .map_err(|source| BuildError::Run {
                tier: name.clone(),
                source,
            })?
        };
        config.rootfs.diff_ids.push(blob.diff_id.clone());
        config.history.push(History {
            created: Some(rfc3339(plan.settings.source_date_epoch)),
            created_by: Some(created_by),
            comment: tier.description.clone(),
            empty_layer: false,
        });
        manifest.layers.push(blob.descriptor.clone());
        (Some(blob.descriptor), Some(blob.diff_id))
    };
    drop(stage_dir);

    config.created = Some(rfc3339(plan.settings.source_date_epoch));
    let (cfg_digest, cfg_size) = store.put(&to_json(&config), None)?;
    manifest.config = Descriptor::new(MEDIA_CONFIG, cfg_digest, cfg_size);
    manifest.annotations = BTreeMap::new();
    manifest
        .annotations
        .insert(ANNOTATION_TIER.to_string(), name.clone());
    // The cache key stays out of the manifest: it hashes host paths and
    // mtimes, which must not change the image's digest.
    if let Some(p) = &tier.parent {
        manifest
            .annotations
            .insert(ANNOTATION_PARENT.to_string(), p.clone());
    }
    let (m_digest, m_size) = store.put(&to_json(&manifest), None)?;
    let m_desc = Descriptor::new(MEDIA_MANIFEST, m_digest, m_size);
    let rec = TierRecord {
        manifest: m_desc.clone(),
        layer: layer.clone(),
        diff_id: diff_id.clone(),
    };
    store.write_meta("tier", key.hex(), &serde_json::to_vec(&rec).unwrap_or_default())?;
    let outcome = outcome(plan, tier, &key, &manifest, m_desc, layer, diff_id, false, start);
    Ok((
        Built {
            key,
            manifest,
            config,
        },
        outcome,
    ))
}

#[allow(clippy::too_many_arguments)]
fn outcome(
    plan: &Plan,
    tier: &Tier,
    key: &Digest,
    manifest: &Manifest,
    m_desc: Descriptor,
    layer: Option<Descriptor>,
    diff_id: Option<Digest>,
    cached: bool,
    start: Instant,
) -> TierOutcome {
    TierOutcome {
        tier: tier.name.clone(),
        reference: plan.image_ref(&tier.name),
        cached,
        seconds: start.elapsed().as_secs_f64(),
        manifest: m_desc,
        layer,
        diff_id,
        image_size: manifest.layers.iter().map(|l| l.size).sum(),
        layers: manifest.layers.len(),
        key: key.to_string(),
    }
}

fn cached(store: &Store, key: &Digest) -> Option<TierRecord> {
    let bytes = store.read_meta("tier", key.hex())?;
    let rec: TierRecord = serde_json::from_slice(&bytes).ok()?;
    let manifest: Manifest = store.read_json(&rec.manifest.digest).ok()?;
    let complete = store.has(&manifest.config.digest) && manifest.layers.iter().all(|l| store.has(&l.digest));
    complete.then_some(rec)
}

fn describe(k: &SourceKind) -> String {
    match k {
        SourceKind::Path(p) => p.display().to_string(),
        SourceKind::Tar(o) => format!("tar {o}"),
        SourceKind::Deb(o) => format!("deb {o}"),
        SourceKind::War(p) => format!("war {}", p.display()),
        SourceKind::Content(_) => "inline file".to_string(),
        SourceKind::Symlink { paths, .. } => format!("{} symlink(s)", paths.len()),
        SourceKind::Dir(d) => format!("{} dir(s)", d.len()),
    }
}

/// Applies a tier's config changes; `${VAR}` in env values expands to the
/// value inherited so far (`PATH = "/opt/java/bin:${PATH}"`).
pub fn apply_changes(config: &mut ImageConfig, c: &ConfigChanges) {
    for (k, v) in &c.env {
        let expanded = expand(v, config);
        config.set_env(k, &expanded);
    }
    if let Some(e) = &c.entrypoint {
        config.config.entrypoint = Some(e.clone());
    }
    if let Some(cmd) = &c.cmd {
        config.config.cmd = Some(cmd.clone());
    }
    if let Some(u) = &c.user {
        config.config.user = Some(u.clone());
    }
    if let Some(w) = &c.workdir {
        config.config.working_dir = Some(w.clone());
    }
    for p in &c.ports {
        config.config.exposed_ports.insert(p.clone(), Default::default());
    }
    for v in &c.volumes {
        config.config.volumes.insert(v.clone(), Default::default());
    }
    for (k, v) in &c.labels {
        config.config.labels.insert(k.clone(), v.clone());
    }
    if let Some(s) = &c.stop_signal {
        config.config.stop_signal = Some(s.clone());
    }
}

fn expand(v: &str, config: &ImageConfig) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        match rest[i + 2..].find('}') {
            Some(j) => {
                let var = &rest[i + 2..i + 2 + j];
                out.push_str(config.env(var).unwrap_or(""));
                rest = &rest[i + 3 + j..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn import_base(store: &Store, tier: &str, b: &BaseImage) -> Result<Built> {
    let err = |reason: String| BuildError::Base {
        tier: tier.to_string(),
        reason,
    };
    let (desc, manifest) = match b {
        BaseImage::OciLayout { dir, reference } => crate::oci::layout::Layout::open(dir)
            .and_then(|l| l.import(store, reference.as_deref()))
            .map_err(|e| err(e.to_string()))?,
        BaseImage::DockerArchive { path, reference } => {
            crate::oci::archive::import(path, reference.as_deref(), store).map_err(|e| err(e.to_string()))?
        }
    };
    let config: ImageConfig = store.read_json(&manifest.config.digest)?;
    Ok(Built {
        key: desc.digest,
        manifest,
        config,
    })
}

/// The cache key of a tier: its declaration, its input fingerprints, the
/// build settings and the parent's key.
fn tier_key(plan: &Plan, tier: &Tier, parent: Option<&Built>) -> Result<Digest> {
    let mut h = crate::digest::Algorithm::Sha256.hasher();
    let put = |h: &mut Hasher, label: &str, bytes: &[u8]| {
        h.update(label.as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    put(&mut h, "version", KEY_VERSION.as_bytes());
    put(&mut h, "fixes", fixes::fingerprint().as_bytes());
    put(
        &mut h,
        "settings",
        &serde_json::to_vec(&plan.settings).unwrap_or_default(),
    );
    put(&mut h, "tier", &serde_json::to_vec(tier).unwrap_or_default());
    if let Some(p) = parent {
        put(&mut h, "parent", p.key.to_string().as_bytes());
    }
    for src in &tier.sources {
        let fp = fingerprint(&tier.name, &src.kind, src.digest.as_ref())?;
        put(&mut h, "source", fp.as_bytes());
    }
    Ok(h.finish())
}

/// Identifies a source's content without reading it: a pinned digest, or
/// the size, mtime and mode of every host file.
fn fingerprint(tier: &str, kind: &SourceKind, digest: Option<&Digest>) -> Result<String> {
    if let Some(d) = digest {
        return Ok(d.to_string());
    }
    let path = match kind {
        SourceKind::Path(p) | SourceKind::War(p) => p,
        SourceKind::Tar(Origin::Local(p)) | SourceKind::Deb(Origin::Local(p)) => p,
        _ => return Ok(String::new()),
    };
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io {
            tier: tier.to_string(),
            path,
            source,
        }
    };
    let mut h = crate::digest::Algorithm::Sha256.hasher();
    for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
        let entry = entry.map_err(|e| BuildError::Io {
            tier: tier.to_string(),
            path: path.clone(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("walk failed")),
        })?;
        let md = entry.path().symlink_metadata().map_err(io_err(entry.path()))?;
        let line = format!(
            "{}\0{}\0{}\0{}\0{}\0{}\n",
            entry.path().strip_prefix(path).unwrap_or(entry.path()).display(),
            md.len(),
            md.mtime(),
            md.mtime_nsec(),
            md.mode(),
            md.ino(),
        );
        h.update(line.as_bytes());
    }
    Ok(h.finish().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_uses_inherited_values() {
        let mut c = ImageConfig::empty("linux", "amd64");
        c.set_env("PATH", "/bin");
        let mut changes = ConfigChanges::default();
        changes.env.insert("PATH".into(), "/opt/java/bin:${PATH}".into());
        changes.env.insert("X".into(), "${NOPE}-${".into());
        apply_changes(&mut c, &changes);
        assert_eq!(c.env("PATH"), Some("/opt/java/bin:/bin"));
        assert_eq!(c.env("X"), Some("-${"));
    }
}
