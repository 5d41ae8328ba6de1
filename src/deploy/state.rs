//! What the orchestrator remembers of each app, under the data directory:
//! `apps/APP/state.json` (instances, and the operation in progress, if
//! any) and `apps/APP/history.jsonl` (one line per deploy, hotfix or
//! rollback). The state file is replaced atomically before and after each
//! step that changes a host, so a crashed orchestrator leaves a journal
//! the next run recovers from.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
        started_at: String,
        old: Option<String>,
        new: Option<String>,
        phase: String,
    },
    /// Removing an instance (scale down or `strata remove`).
    Remove {
        index: u32,
        pid: u32,
        started_at: String,
        container: String,
        phase: String,
    },
    Hotfix {
        index: u32,
        pid: u32,
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

/// The files of one app under the data directory.
pub struct AppDir {
    dir: PathBuf,
}

impl AppDir {
    pub fn new(data: &Path, app: &str) -> AppDir {
        AppDir {
            dir: data.join("apps").join(app),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> DeployError {
        let path = path.to_path_buf();
        move |source| DeployError::Io { path, source }
    }

    pub fn load(&self, app: &str) -> Result<AppState> {
        let p = self.dir.join("state.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| DeployError::Corrupt {
                path: p,
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AppState {
                app: app.to_string(),
                ..Default::default()
            }),
            Err(e) => Err(self.io(&p)(e)),
        }
    }

    pub fn save(&self, state: &AppState) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let p = self.dir.join("state.json");
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        crate::store::write_atomic(&p, &bytes).map_err(self.io(&p))
    }

    pub fn append_history(&self, e: &HistoryEntry) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let p = self.dir.join("history.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(self.io(&p))?;
        let mut line = serde_json::to_vec(e).unwrap_or_default();
        line.push(b'\n');
        f.write_all(&line).map_err(self.io(&p))?;
        f.sync_data().map_err(self.io(&p))
    }

    pub fn history(&self) -> Result<Vec<HistoryEntry>> {
        let p = self.dir.join("history.jsonl");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(self.io(&p)(e)),
        };
        // A line cut by a crash is skipped, not fatal.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
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

/// Every app with a history under `data` (`data/apps/*/history.jsonl`),
/// sorted by name; an unreadable app is skipped.
pub fn histories(data: &Path) -> Vec<(String, Vec<HistoryEntry>)> {
    let Ok(dir) = std::fs::read_dir(data.join("apps")) else {
        return vec![];
    };
    let mut apps: Vec<String> = dir
        .flatten()
        .filter(|e| e.path().join("history.jsonl").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    apps.sort();
    apps.into_iter()
        .filter_map(|a| {
            let h = AppDir::new(data, &a).history().ok()?;
            Some((a, h))
        })
        .collect()
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
        let (kind, index, pid, phase, since) = match self {
            Operation::Redeploy {
                index,
                pid,
                phase,
                started_at,
                ..
            } => ("redeploy", index, pid, phase, started_at),
            Operation::Hotfix {
                index,
                pid,
                phase,
                started_at,
                ..
            } => ("hotfix", index, pid, phase, started_at),
            Operation::Remove {
                index,
                pid,
                phase,
                started_at,
                ..
            } => ("removal", index, pid, phase, started_at),
        };
        format!("{kind} of {app}-{index} by pid {pid} (phase `{phase}`, since {since})")
    }
}
