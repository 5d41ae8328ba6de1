//! What the orchestrator remembers of each app: its state (instances, and
//! the run and operation in progress, if any: the journal) and its
//! history (one entry per deploy, hotfix or rollback), in a
//! [`StateStore`]: files under the data directory by default
//! ([`files`]), or etcd when several orchestrators share a cluster
//! ([`etcd`]). The state is replaced atomically before and after each
//! step that changes a host, so a crashed orchestrator leaves a journal
//! the next one (on this machine or another) recovers from. Hotfix
//! backups never leave the machine that took them: a journal that names
//! one is settled elsewhere without it (see `recover.rs`).

mod etcd;
mod files;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use self::etcd::EtcdState;
pub use self::files::FileState;
use super::drain::Drained;
use super::{DeployError, Result};
use crate::digest::Digest;

/// An image as the orchestrator knows it: the name it was given by, and
/// its manifest and config digests (the engine's image ID is the config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    pub name: String,
    pub manifest: Digest,
    pub config: Digest,
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.manifest.short())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub index: u32,
    pub name: String,
    pub host: String,
    pub ip: Ipv4Addr,
    pub container: String,
    pub container_name: String,
    pub generation: u64,
    /// The image the container was created from.
    pub image: ImageRef,
    /// A hotfix applied in place: the container's files match this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotfix: Option<ImageRef>,
    pub health: String,
    pub since: String,
    /// Why its container's files are not known to match any image (a
    /// hotfix was cut short and its backup is on another machine): the
    /// next run replaces the container instead of trusting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tainted: Option<String>,
}

impl Instance {
    /// The image whose files the instance runs now.
    pub fn effective(&self) -> &ImageRef {
        self.hotfix.as_ref().unwrap_or(&self.image)
    }
}

/// A step in progress, written before it touches a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Operation {
    Redeploy {
        index: u32,
        pid: u32,
        /// The machine `pid` ran on ([`machine`]).
        #[serde(default)]
        machine: String,
        started_at: String,
        old: Option<String>,
        new: Option<String>,
        phase: String,
    },
    /// Removing an instance (scale down or `strata remove`).
    Remove {
        index: u32,
        pid: u32,
        /// The machine `pid` ran on ([`machine`]).
        #[serde(default)]
        machine: String,
        started_at: String,
        container: String,
        phase: String,
    },
    Hotfix {
        index: u32,
        pid: u32,
        /// The machine `pid` ran on ([`machine`]).
        #[serde(default)]
        machine: String,
        started_at: String,
        container: String,
        backup: PathBuf,
        phase: String,
    },
}

/// A deploy, hotfix, rollback, removal or recovery in progress across an
/// app's instances, written before the first instance is touched and
/// cleared once its history entry is written. A run found at start (its
/// process died) is finished by the next orchestrator command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// The history version this run will be recorded as.
    pub version: u64,
    /// deploy, hotfix, rollback, recover, remove.
    pub action: String,
    /// The image every instance gets (none for a removal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    /// auto, hotfix or redeploy.
    pub mode: String,
    /// What each instance ran before the run (None: it did not exist).
    pub from: BTreeMap<u32, Option<ImageRef>>,
    pub pid: u32,
    /// The machine `pid` ran on ([`machine`]).
    #[serde(default)]
    pub machine: String,
    pub started_at: String,
    pub by: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppState {
    pub app: String,
    /// The number of the last history entry.
    pub version: u64,
    pub instances: BTreeMap<u32, Instance>,
    /// The step on one instance in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// The run across instances in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub at: String,
    /// deploy, hotfix, rollback.
    pub action: String,
    /// hotfix or redeploy.
    pub mode: String,
    pub image: ImageRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ImageRef>,
    /// ok, rolled-back, restored, failed, refused (nothing was changed),
    /// interrupted (its process died; the next entry is its recovery).
    pub outcome: String,
    #[serde(default)]
    pub detail: String,
    pub seconds: f64,
    pub by: String,
}

/// Where the deploy state lives: the apps' state (with its journal),
/// their history and the drained hosts. Two backends: files under the
/// data directory ([`files::FileState`], one machine, the default) and
/// etcd ([`etcd::EtcdState`], orchestrators on several machines sharing
/// one cluster).
///
/// Writes of an app's state carry the revision the writer last read or
/// wrote: a store shared between machines refuses a write over a newer
/// revision ([`DeployError::StateConflict`]), so an orchestrator that
/// lost its lock can never silently overwrite the one that took over.
pub trait StateStore: Send + Sync {
    /// The app's state and its revision (0: never written).
    fn load(&self, app: &str) -> Result<(Option<AppState>, i64)>;
    /// Writes the state if it is still at `revision`; the new revision.
    fn save(&self, app: &str, state: &AppState, revision: i64) -> Result<i64>;
    /// Adds an entry to the app's history (never replacing one).
    fn append_history(&self, app: &str, e: &HistoryEntry) -> Result<()>;
    /// The app's history, oldest first.
    fn history(&self, app: &str) -> Result<Vec<HistoryEntry>>;
    /// Every app with a history, sorted by name.
    fn apps(&self) -> Result<Vec<String>>;
    /// The drained hosts (`strata drain`) and their revision.
    fn drained(&self) -> Result<(BTreeMap<String, Drained>, i64)>;
    /// Writes the drained hosts if they are still at `revision`.
    fn save_drained(&self, hosts: &BTreeMap<String, Drained>, revision: i64) -> Result<i64>;
    /// Where it is, for messages: `DATA/apps` or `etcd://HOST:PORT`.
    fn location(&self) -> String;
}

/// `file` (under `data`) or `etcd://HOST:PORT[,HOST:PORT…]`. The deploy
/// lock lives in the lease store: state shared through etcd needs the
/// lock there too (`leases`), else two machines would both hold it.
pub fn open(spec: &str, leases: &str, data: &Path) -> Result<Arc<dyn StateStore>> {
    if spec == "file" {
        return Ok(Arc::new(files::FileState::new(data)));
    }
    if let Some(endpoints) = crate::etcd::endpoints_of(spec) {
        if crate::etcd::endpoints_of(leases).is_none() {
            return Err(DeployError::BadStateStore {
                spec: spec.to_string(),
                why: format!(
                    "the deploy lock is in the lease store (`{leases}`), which only this machine sees: give --leases {spec} too"
                ),
            });
        }
        let store = etcd::EtcdState::new(crate::etcd::Etcd::new(endpoints)?);
        for app in store.import(&files::FileState::new(data))? {
            tracing::warn!(
                "deploy state of `{app}` copied from {} into {spec} (it was not there yet)",
                data.display()
            );
        }
        return Ok(Arc::new(store));
    }
    Err(DeployError::BadStateStore {
        spec: spec.to_string(),
        why: "expected `file` or `etcd://HOST:PORT[,HOST:PORT…]`".into(),
    })
}

/// One app's state in a [`StateStore`], and its local scratch space
/// under the data directory (hotfix staging and backups, which stay on
/// the machine that made them).
pub struct AppDir {
    app: String,
    dir: PathBuf,
    store: Arc<dyn StateStore>,
    /// The revision of the state this handle last read or wrote.
    revision: Mutex<i64>,
}

impl AppDir {
    pub fn new(data: &Path, store: Arc<dyn StateStore>, app: &str) -> AppDir {
        AppDir {
            app: app.to_string(),
            dir: data.join("apps").join(app),
            store,
            revision: Mutex::new(0),
        }
    }

    /// The local directory (hotfix staging and backups).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> DeployError {
        let path = path.to_path_buf();
        move |source| DeployError::Io { path, source }
    }

    /// The app's state (empty when never written); later saves through
    /// this handle are refused if someone else wrote it meanwhile.
    pub fn load(&self) -> Result<AppState> {
        let (st, rev) = self.store.load(&self.app)?;
        *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = rev;
        Ok(st.unwrap_or_else(|| AppState {
            app: self.app.clone(),
            ..Default::default()
        }))
    }

    pub fn save(&self, state: &AppState) -> Result<()> {
        let mut rev = self.revision.lock().unwrap_or_else(|e| e.into_inner());
        *rev = self.store.save(&self.app, state, *rev)?;
        Ok(())
    }

    pub fn append_history(&self, e: &HistoryEntry) -> Result<()> {
        self.store.append_history(&self.app, e)
    }

    pub fn history(&self) -> Result<Vec<HistoryEntry>> {
        self.store.history(&self.app)
    }

    /// A fresh directory for one hotfix's staged archive and backups.
    pub fn hotfix_dir(&self, id: &str) -> Result<PathBuf> {
        let d = self.dir.join("hotfix").join(id);
        std::fs::create_dir_all(&d).map_err(self.io(&d))?;
        Ok(d)
    }

    /// Removes every hotfix directory but `keep` (the one an unfinished
    /// hotfix still needs): staging tars and backups of settled hotfixes,
    /// and those of a hotfix killed before its journal. Call it only while
    /// holding the app's deploy lock. Returns how many went.
    pub fn clean_hotfix_dirs(&self, keep: Option<&Path>) -> Result<usize> {
        let root = self.dir.join("hotfix");
        let entries = match std::fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(self.io(&root)(e)),
        };
        let mut n = 0;
        for e in entries.flatten() {
            let p = e.path();
            if Some(p.as_path()) == keep {
                continue;
            }
            std::fs::remove_dir_all(&p).map_err(self.io(&p))?;
            n += 1;
        }
        Ok(n)
    }
}

/// Every app with a history in `store`, sorted by name; an unreadable
/// app is skipped.
pub fn histories(store: &dyn StateStore) -> Vec<(String, Vec<HistoryEntry>)> {
    store
        .apps()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| {
            let h = store.history(&a).ok()?;
            Some((a, h))
        })
        .collect()
}

/// This machine's name (`/etc/hostname`), as journals and locks record
/// it: a pid means something only on the machine it ran on.
pub fn machine() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Now, RFC 3339 in UTC.
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    crate::oci::rfc3339(secs)
}

/// Who runs this: `$STRATA_ACTOR` as it is, else `$USER` (or the name
/// of this process's user in /etc/passwd) with the host name.
pub fn whoami() -> String {
    if let Ok(a) = std::env::var("STRATA_ACTOR")
        && !a.trim().is_empty()
    {
        return a.trim().to_string();
    }
    let user = std::env::var("STRATA_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(user_of_process)
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// The name of this process's user, from its uid and /etc/passwd.
fn user_of_process() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    })
}

impl Operation {
    /// The instance it is about.
    pub fn index(&self) -> u32 {
        match self {
            Operation::Redeploy { index, .. }
            | Operation::Hotfix { index, .. }
            | Operation::Remove { index, .. } => *index,
        }
    }

    /// `hotfix of shop-2 by pid 123 (phase applying, since …)`.
    pub fn describe(&self, app: &str) -> String {
        let (kind, index, pid, machine, phase, since) = match self {
            Operation::Redeploy {
                index,
                pid,
                machine,
                phase,
                started_at,
                ..
            } => ("redeploy", index, pid, machine, phase, started_at),
            Operation::Hotfix {
                index,
                pid,
                machine,
                phase,
                started_at,
                ..
            } => ("hotfix", index, pid, machine, phase, started_at),
            Operation::Remove {
                index,
                pid,
                machine,
                phase,
                started_at,
                ..
            } => ("removal", index, pid, machine, phase, started_at),
        };
        format!(
            "{kind} of {app}-{index} by {} (phase `{phase}`, since {since})",
            process(*pid, machine)
        )
    }
}

/// `pid 123 on HOST` (`pid 123` for a journal written before machines
/// were recorded).
pub fn process(pid: u32, machine: &str) -> String {
    if machine.is_empty() {
        format!("pid {pid}")
    } else {
        format!("pid {pid} on {machine}")
    }
}
