//! `run` steps: shell commands executed in a container of the parent tier
//! through the Docker engine; the container's filesystem diff becomes the
//! tier's layer. This is the only build step that needs a daemon.
//!
//! Flow: load the parent image into the engine, create a container from
//! it, upload the tier's own files, run the steps with `/bin/sh -c` (fail
//! on the first failing command), commit the container, save the committed
//! image and take its top layer, the diff Docker computed (whiteouts
//! included). That layer is then rewritten through the normal layer writer,
//! so mtimes and owners are normalized like every other layer.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::build::layer::{self, LayerBlob};
use crate::build::source::{self, Stage};
use crate::build::tree::{Meta, Tree};
use crate::oci::{Descriptor, ImageConfig, Manifest};
use crate::spec::{ImagePath, Plan, Tier};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "has `run` steps, which need a Docker engine; none is reachable (set DOCKER_HOST or start dockerd)"
    )]
    NoEngine,
    #[error("run step failed with exit code {code}: {output}")]
    StepFailed { code: i64, output: String },
    #[error("docker engine: {0}")]
    Engine(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the committed image has no layer archive for its top layer")]
    NoLayer,
    #[error(transparent)]
    Layer(#[from] layer::LayerError),
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Archive(#[from] crate::oci::archive::ArchiveError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What the builder needs of an engine. Blocking: the builder is
/// synchronous; the implementation over bollard lives in `crate::engine`.
pub trait RunEngine {
    /// `docker load` of a docker-archive file; returns nothing, the
    /// archive's tags name the images.
    fn load(&self, archive: &Path) -> Result<(), String>;
    /// Creates a container from `image` running `script` with `/bin/sh -c`
    /// as root, after uploading `files` (an uncompressed tar) at `/`. Waits
    /// for it, commits it, removes the container and returns the committed
    /// image's id, or the exit code and output on failure.
    fn run_and_commit(&self, image: &str, files: Option<&Path>, script: &str) -> Result<String, RunFailure>;
    /// Saves an image as a docker-archive at `dest`.
    fn save(&self, image: &str, dest: &Path) -> Result<(), String>;
    /// Removes an image (best effort).
    fn remove_image(&self, image: &str);
}

/// Why a run failed.
#[derive(Debug)]
pub enum RunFailure {
    Exit { code: i64, output: String },
    Engine(String),
}

pub fn run_steps(
    engine: &dyn RunEngine,
    store: &Store,
    plan: &Plan,
    tier: &Tier,
    base: Option<(&Manifest, &ImageConfig)>,
    tree: &Tree,
    implicit: &dyn Fn(&ImagePath) -> Option<Meta>,
) -> Result<LayerBlob, RunError> {
    let work = store.temp_dir("run-")?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RunError::Io { path, source }
    };
    // 1. The parent image, loaded into the engine under a private tag.
    // Unique per build, so concurrent builds never remove each other's image.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tag = format!("strata-run/{}:{}-{nonce}", tier.name, std::process::id());
    if let Some((manifest, _)) = base {
        let (d, size) = store.put(&crate::oci::to_json(manifest), None)?;
        let desc = Descriptor::new(crate::oci::MEDIA_MANIFEST, d, size);
        let archive = work.path().join("parent.tar");
        crate::oci::archive::write(&archive, store, &[(tag.clone(), desc)], &|_| {})?;
        engine.load(&archive).map_err(RunError::Engine)?;
    }
    // 2. The tier's own files, as a plain tar to upload.
    let files = if tree.is_empty() {
        None
    } else {
        let p = work.path().join("files.tar");
        let mut f = std::io::BufWriter::new(File::create(&p).map_err(io(&p))?);
        layer::write_tar(tree, implicit, plan.settings.source_date_epoch, &mut f)?;
        std::io::Write::flush(&mut f).map_err(io(&p))?;
        Some(p)
    };
    let script = format!("set -e\n{}", tier.run.join("\n"));
    let committed = match engine.run_and_commit(&tag, files.as_deref(), &script) {
        Ok(id) => id,
        Err(RunFailure::Exit { code, output }) => {
            engine.remove_image(&tag);
            return Err(RunError::StepFailed { code, output });
        }
        Err(RunFailure::Engine(e)) => {
            engine.remove_image(&tag);
            return Err(RunError::Engine(e));
        }
    };
    // 3. The committed image's top layer is the diff.
    let saved = work.path().join("committed.tar");
    let res = engine.save(&committed, &saved);
    engine.remove_image(&committed);
    engine.remove_image(&tag);
    res.map_err(RunError::Engine)?;
    let top = top_layer(&saved, work.path())?;
    let stage_dir = store.temp_dir("stage-")?;
    let mut stage = Stage::new(stage_dir.path().to_path_buf());
    let mut diff = Tree::new();
    let f = File::open(&top).map_err(io(&top))?;
    let r = source::decompress(BufReader::with_capacity(1 << 20, f)).map_err(io(&top))?;
    source::add_layer_tar(&mut diff, &mut stage, &top, r)?;
    diff.order_hardlinks();
    Ok(layer::write_layer(
        store,
        &diff,
        implicit,
        plan.settings.compression,
        plan.settings.source_date_epoch,
    )?)
}

/// Extracts the last layer named in a docker-archive's manifest.json.
fn top_layer(archive: &Path, work: &Path) -> Result<PathBuf, RunError> {
    let io = |source| RunError::Io {
        path: archive.to_path_buf(),
        source,
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        layers: Vec<String>,
    }
    let mut manifest = None;
    let mut ar = tar::Archive::new(BufReader::new(File::open(archive).map_err(io)?));
    for e in ar.entries().map_err(io)? {
        let mut e = e.map_err(io)?;
        if e.path_bytes().as_ref() == b"manifest.json" {
            let mut s = Vec::new();
            e.read_to_end(&mut s).map_err(io)?;
            manifest = serde_json::from_slice::<Vec<Entry>>(&s).ok();
        }
    }
    let name = manifest
        .and_then(|m| m.into_iter().next())
        .and_then(|e| e.layers.last().cloned())
        .ok_or(RunError::NoLayer)?;
    let out = work.join("top-layer.tar");
    let mut ar = tar::Archive::new(BufReader::new(File::open(archive).map_err(io)?));
    for e in ar.entries().map_err(io)? {
        let mut e = e.map_err(io)?;
        if String::from_utf8_lossy(&e.path_bytes()) == name {
            let mut f = File::create(&out).map_err(io)?;
            std::io::copy(&mut e, &mut f).map_err(io)?;
            return Ok(out);
        }
    }
    Err(RunError::NoLayer)
}
