//! The deploy state in etcd, shared by orchestrators on several machines:
//!
//! - `strata/apps/APP/state`: the app's state (JSON), written only by a
//!   transaction that compares the key's `mod_revision` with the one the
//!   writer read, so two writers never silently overwrite each other;
//! - `strata/apps/APP/history/000000000042`: one key per history entry
//!   (the version, zero-padded so keys sort as versions; a second entry
//!   of one version, as a crash between writing the entry and clearing
//!   the journal can leave, gets `.1`), created, never replaced;
//! - `strata/app-names/APP`: one key per app with a history (what
//!   `histories()` and `/metrics` list), written with its first entry;
//! - `strata/drained`: the drained hosts (JSON), compared like a state.

use std::collections::BTreeMap;

use super::{AppState, Drained, HistoryEntry, StateStore};
use crate::deploy::{DeployError, Result};
use crate::etcd::{self, Etcd};

pub struct EtcdState {
    etcd: Etcd,
}

const DRAINED: &str = "strata/drained";
const NAMES: &str = "strata/app-names/";

fn state_key(app: &str) -> String {
    format!("strata/apps/{app}/state")
}

fn history_prefix(app: &str) -> String {
    format!("strata/apps/{app}/history/")
}

impl EtcdState {
    pub fn new(etcd: Etcd) -> EtcdState {
        EtcdState { etcd }
    }

    fn corrupt(&self, key: &str, e: serde_json::Error) -> DeployError {
        DeployError::Corrupt {
            path: format!("{}/{key}", self.etcd.describe()).into(),
            why: e.to_string(),
        }
    }

    /// Writes `value` at `key` if it is still at `revision`.
    fn compare_and_put(&self, key: &str, what: &str, value: &str, revision: i64) -> Result<i64> {
        match self.etcd.txn(
            vec![etcd::mod_is(key, revision)],
            vec![etcd::put(key, value)],
            vec![],
        )? {
            Some(rev) => Ok(rev),
            None => {
                let now = self.etcd.get_kv(key)?.map(|kv| kv.mod_revision).unwrap_or(0);
                Err(DeployError::StateConflict {
                    what: what.to_string(),
                    location: self.etcd.describe(),
                    read: revision,
                    now,
                })
            }
        }
    }
}

impl EtcdState {
    /// Copies into etcd the apps of `files` (an orchestrator's state from
    /// before it shared etcd) that etcd knows nothing of: their state and
    /// history, each key created only if absent, so a second machine
    /// importing at once changes nothing. Without this, an app deployed
    /// before would look undeployed and its running containers would be
    /// taken for strays. The files stay as they are. Returns the apps
    /// imported.
    pub fn import(&self, files: &super::FileState) -> Result<Vec<String>> {
        let mut done = Vec::new();
        for app in files.apps()? {
            if self.etcd.get_kv(&state_key(&app))?.is_some()
                || !self.etcd.keys(&history_prefix(&app))?.is_empty()
            {
                continue;
            }
            let (st, _) = files.load(&app)?;
            if let Some(st) = st {
                let json = serde_json::to_string_pretty(&st).unwrap_or_default();
                let key = state_key(&app);
                if self
                    .etcd
                    .txn(vec![etcd::absent(&key)], vec![etcd::put(&key, &json)], vec![])?
                    .is_none()
                {
                    continue; // another machine imported it just now
                }
            }
            for e in files.history(&app)? {
                self.append_history(&app, &e)?;
            }
            done.push(app);
        }
        Ok(done)
    }
}

impl StateStore for EtcdState {
    fn load(&self, app: &str) -> Result<(Option<AppState>, i64)> {
        let key = state_key(app);
        match self.etcd.get_kv(&key)? {
            Some(kv) => {
                let st = serde_json::from_str(&kv.value).map_err(|e| self.corrupt(&key, e))?;
                Ok((Some(st), kv.mod_revision))
            }
            None => Ok((None, 0)),
        }
    }

    fn save(&self, app: &str, state: &AppState, revision: i64) -> Result<i64> {
        let json = serde_json::to_string_pretty(state).unwrap_or_default();
        self.compare_and_put(&state_key(app), &format!("app `{app}`"), &json, revision)
    }

    fn append_history(&self, app: &str, e: &HistoryEntry) -> Result<()> {
        let json = serde_json::to_string(e).unwrap_or_default();
        let base = format!("{}{:012}", history_prefix(app), e.version);
        for n in 0..64 {
            let key = if n == 0 {
                base.clone()
            } else {
                format!("{base}.{n}")
            };
            let created = self.etcd.txn(
                vec![etcd::absent(&key)],
                vec![etcd::put(&key, &json), etcd::put(&format!("{NAMES}{app}"), "")],
                vec![],
            )?;
            if created.is_some() {
                return Ok(());
            }
        }
        Err(self
            .etcd
            .error(format!(
                "{base}: 64 history entries of version {} already",
                e.version
            ))
            .into())
    }

    fn history(&self, app: &str) -> Result<Vec<HistoryEntry>> {
        let mut out = Vec::new();
        for kv in self.etcd.prefix(&history_prefix(app))? {
            out.push(serde_json::from_str(&kv.value).map_err(|e| self.corrupt(&kv.key, e))?);
        }
        Ok(out)
    }

    fn apps(&self) -> Result<Vec<String>> {
        Ok(self
            .etcd
            .keys(NAMES)?
            .into_iter()
            .filter_map(|k| k.strip_prefix(NAMES).map(str::to_string))
            .collect())
    }

    fn drained(&self) -> Result<(BTreeMap<String, Drained>, i64)> {
        match self.etcd.get_kv(DRAINED)? {
            Some(kv) => Ok((
                serde_json::from_str(&kv.value).map_err(|e| self.corrupt(DRAINED, e))?,
                kv.mod_revision,
            )),
            None => Ok((BTreeMap::new(), 0)),
        }
    }

    fn save_drained(&self, hosts: &BTreeMap<String, Drained>, revision: i64) -> Result<i64> {
        let json = serde_json::to_string_pretty(hosts).unwrap_or_default();
        self.compare_and_put(DRAINED, "the drained hosts", &json, revision)
    }

    fn location(&self) -> String {
        self.etcd.describe()
    }
}
