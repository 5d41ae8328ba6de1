//! The orchestrator: puts an image onto an app's instances, either as an
//! in-place hotfix (files moved into the running container, no restart)
//! or as a full redeploy (a new container with the same IP), with health
//! checks, automatic rollback, history and logs.
//!
//! Decisions are pure functions in [`plan`]; engine calls are in [`host`];
//! [`redeploy`] and [`hotfix`] sequence them. Every step that changes a
//! host is journaled in the app's state first ([`state`]), and one deploy
//! per app runs at a time (a lock in the lease store), so a crash leaves
//! something the next run can finish or undo. This module never changes a
//! container it did not create, and never leaves a half-applied hotfix:
//! on any failure the backup goes back.

mod anchor;
pub mod desired;
pub mod drain;
pub mod health;
pub mod host;
mod hotfix;
pub mod plan;
mod recover;
mod redeploy;
mod run;
pub mod spec;
pub mod state;
mod status;
pub mod verify;

pub use status::{InstanceStatus, Status};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::lease::{LeaseError, LeaseStore};
use crate::oci::diff::{Change, diff, image_files};
use crate::oci::listing::Entry;
use crate::oci::{ImageConfig, Manifest};
use crate::store::Store;
use host::Host;
use plan::Mode;
use spec::App;
pub use state::StateStore;
use state::{AppDir, AppState, HistoryEntry, ImageRef, Instance};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Diff(#[from] crate::oci::diff::DiffError),
    #[error("docker engine {host}: {what}: {reason}")]
    Engine {
        host: String,
        what: String,
        reason: String,
    },
    #[error(
        "network `{network}` on {host} has subnet {have}, the app spec says {want}; remove the network or fix the spec"
    )]
    NetworkMismatch {
        host: String,
        network: String,
        want: String,
        have: String,
    },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("a hotfix cannot apply {image}: {reason}")]
    NotHotfixable { image: String, reason: String },
    #[error("refusing the archive for {image}: {source}; nothing was changed")]
    Hostile {
        image: String,
        source: plan::HostileEntry,
    },
    #[error("{instance}: hotfix failed ({why}); the backup was restored")]
    HotfixRestored { instance: String, why: String },
    #[error("{instance}: hotfix failed ({why}) and restoring the backup failed too ({restore}); backup kept in {}", backup.display())]
    HotfixRestoreFailed {
        instance: String,
        why: String,
        restore: String,
        backup: PathBuf,
    },
    #[error(
        "{instance}: the new container failed its health check ({why}); rolled back to {previous} on {ip}"
    )]
    RolledBack {
        instance: String,
        why: String,
        previous: String,
        ip: std::net::Ipv4Addr,
    },
    #[error(
        "{instance}: the new container failed its health check ({why}) and there is nothing to roll back to"
    )]
    Unhealthy { instance: String, why: String },
    #[error("{instance}: the container restarted during the hotfix (StartedAt {before} → {after})")]
    Restarted {
        instance: String,
        before: String,
        after: String,
    },
    #[error("app `{app}` has no deploy to roll back to{}", to.map(|v| format!(" (version {v} is unknown or was not a successful deploy)")).unwrap_or_default())]
    NoRollback { app: String, to: Option<u64> },
    #[error("no image given and app `{0}` declares none: pass --image")]
    NoImage(String),
    #[error("instance {instance}: {why}")]
    Instance { instance: String, why: String },
    #[error("{instance}: the hotfixed files did not read back as in the image: {why}")]
    Unverified { instance: String, why: String },
    #[error(
        "pool `{pool}` has {free} free address(es) but the deploy needs {need} more; nothing was changed (widen the pool or release leases: strata lease list)"
    )]
    PoolShort { pool: String, free: u64, need: u64 },
    #[error("app `{0}` has no instances to remove")]
    NothingToRemove(String),
    #[error(
        "cannot roll back to version {version}: its image {image} is no longer in this store (push it again, or pick another version)"
    )]
    ImageGone { version: u64, image: String },
    #[error(
        "{instance} runs on {host}, which does not answer ({reason}); nothing was changed. Its container may still serve {ip}: if the host is down for good, `strata drain {host} --force` moves its instances (the host's containers are removed when it answers again)"
    )]
    HostDown {
        instance: String,
        host: String,
        ip: std::net::Ipv4Addr,
        reason: String,
    },
    #[error("every host of app `{0}` is drained: `strata drain HOST --undo` one, or add a host to its spec")]
    AllDrained(String),
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    #[error(
        "the deploy state of {what} in {location} was written by another orchestrator (revision {now}) since this one read it (revision {read}): this one lost the app's lock and writes nothing more; see `strata status`"
    )]
    StateConflict {
        what: String,
        location: String,
        read: i64,
        now: i64,
    },
    #[error("deploy state store `{spec}`: {why}")]
    BadStateStore { spec: String, why: String },
    #[error(
        "the interrupted run needs image {image}, which is not in this orchestrator's store ({why}): push it here too (every orchestrator of a cluster deploys from its own store)"
    )]
    MissingImage { image: String, why: String },
}

pub type Result<T, E = DeployError> = std::result::Result<T, E>;

/// An image in the local store, ready to deploy.
#[derive(Debug, Clone)]
pub struct Target {
    pub image: ImageRef,
    pub descriptor: crate::oci::Descriptor,
    pub manifest: Manifest,
    pub config: ImageConfig,
}

impl Target {
    pub fn from_store(store: &Store, name: &str, manifest: &Digest) -> Result<Target> {
        let m: Manifest = store.read_json(manifest)?;
        let config: ImageConfig = store.read_json(&m.config.digest)?;
        let size = store.size(manifest)?;
        Ok(Target {
            image: ImageRef {
                name: name.to_string(),
                manifest: manifest.clone(),
                config: m.config.digest.clone(),
            },
            descriptor: crate::oci::Descriptor::new(crate::oci::MEDIA_MANIFEST, manifest.clone(), size),
            manifest: m,
            config,
        })
    }

    /// The engine's name for this image: `strata-deploy/APP:HEX16`.
    pub fn engine_tag(&self, app: &str) -> (String, String) {
        (
            format!("strata-deploy/{app}"),
            self.image.manifest.hex()[..16].to_string(),
        )
    }
}

/// What one instance went through.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceReport {
    pub instance: String,
    pub host: String,
    pub ip: String,
    /// hotfix, redeploy, unchanged, removed.
    pub mode: String,
    pub outcome: String,
    pub seconds: f64,
    /// Redeploy: from stopping the old container to the new one healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_seconds: Option<f64>,
    /// Hotfix: files written and deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<usize>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub app: String,
    pub version: u64,
    pub action: String,
    pub image: String,
    pub seconds: f64,
    pub instances: Vec<InstanceReport>,
}

/// Fault injection for tests: `STRATA_FAULT=hotfix-upload` cuts the staged
/// upload halfway, `hotfix-move` stops the move script halfway.
fn fault(name: &str) -> bool {
    std::env::var("STRATA_FAULT").is_ok_and(|f| f.split(',').any(|x| x == name))
}

/// One app's orchestrator: its spec, state, leases and the local store.
pub struct Orchestrator<'a> {
    pub app: App,
    pub store: &'a Store,
    pub leases: &'a dyn LeaseStore,
    pub dir: AppDir,
    rt: tokio::runtime::Runtime,
    hosts: std::sync::Mutex<HashMap<String, Arc<Host>>>,
    /// Engines that did not answer in this process: asked once, so a
    /// dead host costs one timeout per command, not one per instance.
    unreachable: std::sync::Mutex<HashMap<String, String>>,
    progress: &'a (dyn Fn(&str) + Sync),
    trees: std::sync::Mutex<HashMap<Digest, Arc<BTreeMap<String, Entry>>>>,
    /// Who the history names for this orchestrator's deploys (default:
    /// the user and host running it).
    actor: Option<String>,
    /// Hosts that take no instances (`strata drain`).
    drain: drain::DrainList,
}

impl<'a> Orchestrator<'a> {
    /// `data` holds this machine's scratch space (hotfix staging and
    /// backups); the app's state, history and the drained hosts are in
    /// `state`, which may be shared with orchestrators elsewhere.
    pub fn new(
        app: App,
        data: &Path,
        state: Arc<dyn StateStore>,
        store: &'a Store,
        leases: &'a dyn LeaseStore,
        progress: &'a (dyn Fn(&str) + Sync),
    ) -> Result<Orchestrator<'a>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|source| DeployError::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        let drain = drain::DrainList::load(state.as_ref())?;
        let dir = AppDir::new(data, state, &app.name);
        Ok(Orchestrator {
            app,
            store,
            leases,
            dir,
            rt,
            hosts: Default::default(),
            unreachable: Default::default(),
            progress,
            trees: Default::default(),
            actor: None,
            drain,
        })
    }

    /// Records `who` (e.g. an API token's name) as the author of deploys.
    pub fn set_actor(&mut self, who: String) {
        self.actor = Some(who);
    }

    fn actor(&self) -> String {
        self.actor.clone().unwrap_or_else(state::whoami)
    }

    fn say(&self, s: &str) {
        (self.progress)(s)
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn host(&self, endpoint: &spec::Endpoint) -> Result<Arc<Host>> {
        let key = endpoint.to_string();
        if let Some(h) = self.hosts.lock().expect("not poisoned").get(&key) {
            return Ok(h.clone());
        }
        if let Some(reason) = self.unreachable.lock().expect("not poisoned").get(&key) {
            return Err(DeployError::Engine {
                host: key,
                what: "connect".into(),
                reason: reason.clone(),
            });
        }
        let h = match self.block(Host::connect(endpoint)) {
            Ok(h) => Arc::new(h),
            Err(e) => {
                if let DeployError::Engine { reason, .. } = &e {
                    self.unreachable
                        .lock()
                        .expect("not poisoned")
                        .insert(key, reason.clone());
                }
                return Err(e);
            }
        };
        self.hosts.lock().expect("not poisoned").insert(key, h.clone());
        Ok(h)
    }

    /// Where instance `index` runs or is to run (see [`App::host_of`]).
    fn placed(&self, st: &AppState, index: u32) -> spec::Endpoint {
        let now: BTreeMap<u32, String> = st.instances.iter().map(|(i, x)| (*i, x.host.clone())).collect();
        self.app.host_of(index, &now, &|h| self.drain.drained(h)).clone()
    }

    fn host_of_instance(&self, i: &Instance) -> Result<Arc<Host>> {
        let e = spec::Endpoint::parse(&i.host).map_err(|why| DeployError::Instance {
            instance: i.name.clone(),
            why,
        })?;
        self.host(&e)
    }

    /// The visible file tree of an image in the store (cached).
    fn tree(&self, manifest: &Digest) -> Result<Arc<BTreeMap<String, Entry>>> {
        if let Some(t) = self.trees.lock().expect("not poisoned").get(manifest) {
            return Ok(t.clone());
        }
        let m: Manifest = self.store.read_json(manifest)?;
        let t = Arc::new(image_files(self.store, &m)?);
        self.trees
            .lock()
            .expect("not poisoned")
            .insert(manifest.clone(), t.clone());
        Ok(t)
    }

    fn changes(&self, from: &ImageRef, to: &Target) -> Result<Vec<Change>> {
        Ok(diff(
            &*self.tree(&from.manifest)?,
            &*self.tree(&to.image.manifest)?,
        ))
    }

    fn lock(&self) -> Result<Box<dyn crate::lease::LockGuard>> {
        let holder = format!(
            "{} ({}) since {}",
            self.actor(),
            state::process(std::process::id(), &state::machine()),
            state::now()
        );
        Ok(self.leases.lock(&format!("deploy-{}", self.app.name), &holder)?)
    }

    pub fn state(&self) -> Result<AppState> {
        self.dir.load()
    }

    pub fn history(&self) -> Result<Vec<HistoryEntry>> {
        self.dir.history()
    }

    /// Redeploys the image of history `version` (default: the last
    /// successful deploy before the current one).
    pub fn rollback(&self, to: Option<u64>) -> Result<Report> {
        let history = self.history()?;
        let ok: Vec<&HistoryEntry> = history.iter().filter(|h| h.outcome == "ok").collect();
        let entry = match to {
            Some(v) => ok.iter().find(|h| h.version == v).copied(),
            None => {
                let st = self.state()?;
                let current = st.instances.get(&1).map(|i| i.effective().manifest.clone());
                ok.iter()
                    .rev()
                    .filter(|h| has_image(self.store, &h.image))
                    .find(|h| Some(&h.image.manifest) != current.as_ref())
                    .copied()
            }
        };
        let entry = entry.ok_or_else(|| DeployError::NoRollback {
            app: self.app.name.clone(),
            to,
        })?;
        if !has_image(self.store, &entry.image) {
            return Err(DeployError::ImageGone {
                version: entry.version,
                image: entry.image.to_string(),
            });
        }
        let target = Target::from_store(self.store, &entry.image.name, &entry.image.manifest)?;
        self.say(&format!(
            "rolling back to version {} ({})",
            entry.version, target.image
        ));
        self.deploy(&target, Mode::Auto, "rollback")
    }

    /// The engine must have the image. One it already holds under another
    /// name (pulled through the host's agent by `strata prewarm --load`,
    /// or by hand) is found by its ID, the config digest (the manifest
    /// digest on engines with the containerd image store), and only
    /// tagged; otherwise the image is loaded from the store.
    fn ensure_image(&self, host: &Host, target: &Target) -> Result<String> {
        let (repo, tag) = target.engine_tag(&self.app.name);
        let name = format!("{repo}:{tag}");
        if self.block(host.image_exists(&name))? {
            return Ok(name);
        }
        for id in [&target.image.config, &target.image.manifest] {
            if self.block(host.image_exists(&id.to_string()))? {
                self.block(host.tag(&id.to_string(), &repo, &tag))?;
                self.say(&format!(
                    "{} already holds {}: tagged, nothing loaded",
                    host.endpoint, target.image
                ));
                return Ok(name);
            }
        }
        self.say(&format!("loading {} into {}", target.image, host.endpoint));
        let tmp = self.store.temp_dir("deploy-load-")?;
        let archive = tmp.path().join("image.tar");
        crate::oci::archive::write(
            &archive,
            self.store,
            &[(name.clone(), target.descriptor.clone())],
            &|_| {},
        )
        .map_err(|e| DeployError::Instance {
            instance: self.app.name.clone(),
            why: format!("writing a docker-archive of {}: {e}", target.image),
        })?;
        self.block(host.load(&archive))?;
        if !self.block(host.image_exists(&name))? {
            return Err(DeployError::Engine {
                host: host.endpoint.to_string(),
                what: format!("load {name}"),
                reason: "the engine accepted the archive but has no such image".into(),
            });
        }
        Ok(name)
    }

    /// Streams every instance's log lines (`NAME | line`) to `out` until
    /// the streams end (or, with `follow`, until `stop` says so: it is
    /// asked after every line and every second).
    pub fn logs(
        &self,
        only: Option<u32>,
        follow: bool,
        tail: Option<usize>,
        out: &(dyn Fn(&str, &str) + Sync),
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<()> {
        use futures_util::StreamExt;
        let st = self.state()?;
        let mut streams = Vec::new();
        for i in st
            .instances
            .values()
            .filter(|i| only.is_none_or(|o| o == i.index))
        {
            let host = self.host_of_instance(i)?;
            let name = i.name.clone();
            let s = host
                .logs(&i.container, follow, tail)
                .map(move |r| (name.clone(), r));
            streams.push(s.boxed());
        }
        if streams.is_empty() {
            return Err(DeployError::Instance {
                instance: only
                    .map(|o| self.app.instance_name(o))
                    .unwrap_or_else(|| self.app.name.clone()),
                why: "no such deployed instance".into(),
            });
        }
        self.block(async {
            let mut all = futures_util::stream::select_all(streams);
            let mut partial: HashMap<String, String> = HashMap::new();
            loop {
                if stop() {
                    return;
                }
                let next = tokio::time::timeout(Duration::from_secs(1), all.next()).await;
                let Ok(next) = next else { continue };
                let Some((name, r)) = next else { break };
                match r {
                    Ok(b) => {
                        let buf = partial.entry(name.clone()).or_default();
                        buf.push_str(&String::from_utf8_lossy(&b));
                        while let Some(n) = buf.find('\n') {
                            let line: String = buf.drain(..=n).collect();
                            out(&name, line.trim_end_matches(['\n', '\r']));
                        }
                    }
                    Err(e) => out(&name, &format!("[strata: log stream ended: {e}]")),
                }
            }
            for (name, rest) in partial {
                if !rest.is_empty() {
                    out(&name, &rest);
                }
            }
        });
        Ok(())
    }
}

/// Whether the store holds all of an image: manifest, config and layers
/// (a rollback needs every byte of it).
pub fn has_image(store: &Store, image: &ImageRef) -> bool {
    if !store.has(&image.manifest) || !store.has(&image.config) {
        return false;
    }
    store
        .read_json::<Manifest>(&image.manifest)
        .is_ok_and(|m| m.layers.iter().all(|l| store.has(&l.digest)))
}

/// Seconds as f64, for reports.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
