//! The deploy state in files under the data directory, for one machine:
//! `apps/APP/state.json` (replaced atomically: temp file and rename),
//! `apps/APP/history.jsonl` (one line per entry, appended and synced)
//! and `drained.json`. Revisions are not kept: the deploy lock (`flock`
//! in the file lease store) already serialises every writer, since they
//! all run on this machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{AppState, Drained, HistoryEntry, StateStore};
use crate::deploy::{DeployError, Result};

pub struct FileState {
    data: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DeployError {
    let path = path.to_path_buf();
    move |source| DeployError::Io { path, source }
}

/// The bytes of `path`, None when it does not exist.
fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

fn corrupt(path: &Path) -> impl FnOnce(serde_json::Error) -> DeployError {
    let path = path.to_path_buf();
    move |e| DeployError::Corrupt {
        path,
        why: e.to_string(),
    }
}

impl FileState {
    pub fn new(data: &Path) -> FileState {
        FileState {
            data: data.to_path_buf(),
        }
    }

    fn dir(&self, app: &str) -> PathBuf {
        self.data.join("apps").join(app)
    }
}

impl StateStore for FileState {
    fn load(&self, app: &str) -> Result<(Option<AppState>, i64)> {
        let p = self.dir(app).join("state.json");
        match read(&p)? {
            Some(b) => Ok((Some(serde_json::from_slice(&b).map_err(corrupt(&p))?), 0)),
            None => Ok((None, 0)),
        }
    }

    fn save(&self, app: &str, state: &AppState, _revision: i64) -> Result<i64> {
        let dir = self.dir(app);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let p = dir.join("state.json");
        let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
        crate::store::write_atomic(&p, &bytes).map_err(io(&p))?;
        Ok(0)
    }

    fn append_history(&self, app: &str, e: &HistoryEntry) -> Result<()> {
        let dir = self.dir(app);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let p = dir.join("history.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io(&p))?;
        let mut line = serde_json::to_vec(e).unwrap_or_default();
        line.push(b'\n');
        f.write_all(&line).map_err(io(&p))?;
        f.sync_data().map_err(io(&p))
    }

    fn history(&self, app: &str) -> Result<Vec<HistoryEntry>> {
        let p = self.dir(app).join("history.jsonl");
        let Some(bytes) = read(&p)? else {
            return Ok(vec![]);
        };
        // A line cut by a crash is skipped, not fatal.
        Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }

    fn apps(&self) -> Result<Vec<String>> {
        let Ok(dir) = std::fs::read_dir(self.data.join("apps")) else {
            return Ok(vec![]);
        };
        let mut apps: Vec<String> = dir
            .flatten()
            .filter(|e| e.path().join("history.jsonl").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        apps.sort();
        Ok(apps)
    }

    fn drained(&self) -> Result<(BTreeMap<String, Drained>, i64)> {
        let p = self.data.join("drained.json");
        match read(&p)? {
            Some(b) => Ok((serde_json::from_slice(&b).map_err(corrupt(&p))?, 0)),
            None => Ok((BTreeMap::new(), 0)),
        }
    }

    fn save_drained(&self, hosts: &BTreeMap<String, Drained>, _revision: i64) -> Result<i64> {
        let p = self.data.join("drained.json");
        let json = serde_json::to_vec_pretty(hosts).unwrap_or_default();
        crate::store::write_atomic(&p, &json).map_err(io(&p))?;
        Ok(0)
    }

    fn location(&self) -> String {
        self.data.display().to_string()
    }
}
