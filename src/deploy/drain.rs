//! Drained hosts: engines that take no instances, whose instances move to
//! the other hosts of their apps with their IPs (`strata drain HOST`).
//!
//! The list lives in the deploy state store beside the apps' state
//! (`DATA/drained.json`, or `strata/drained` in etcd), so every app's
//! placement sees it, on every orchestrator sharing the store. A host is drained in one of two ways:
//! - **gracefully** (it answers): each instance is handed over like a
//!   warm redeploy — the new container warms up on another host, the old
//!   one leaves the IP, the new one takes it and announces it;
//! - **forced** (`--force`, for a host that is down for good): strata
//!   cannot stop what the host still runs, so it is *fenced*: its
//!   instances start on other hosts with their IPs, and every later
//!   command that reaches the host again removes the apps' containers
//!   there before anything else, so a host that comes back does not serve
//!   an IP that moved (between its return and that command, it can:
//!   `strata serve` runs that sweep every few seconds).
//!
//! Without `--force`, an unreachable host is never drained: its containers
//! may still be serving their IPs, and starting the same IPs elsewhere
//! would put one address on two machines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Result;
use super::state::{self, StateStore};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Drained {
    pub at: String,
    pub by: String,
    /// Drained while it did not answer: its containers are removed as
    /// soon as it answers again.
    #[serde(default)]
    pub forced: bool,
}

/// Endpoint → how it was drained, as read from the deploy state store
/// (`DATA/drained.json`, or `strata/drained` in etcd).
#[derive(Debug, Clone, Default)]
pub struct DrainList {
    pub hosts: BTreeMap<String, Drained>,
    /// The revision read: a save over a newer one is refused.
    revision: i64,
}

impl DrainList {
    pub fn load(store: &dyn StateStore) -> Result<DrainList> {
        let (hosts, revision) = store.drained()?;
        Ok(DrainList { hosts, revision })
    }

    pub fn save(&mut self, store: &dyn StateStore) -> Result<()> {
        self.revision = store.save_drained(&self.hosts, self.revision)?;
        Ok(())
    }

    pub fn drained(&self, endpoint: &str) -> bool {
        self.hosts.contains_key(endpoint)
    }

    pub fn fenced(&self, endpoint: &str) -> bool {
        self.hosts.get(endpoint).is_some_and(|d| d.forced)
    }

    pub fn add(&mut self, endpoint: &str, by: String, forced: bool) {
        let d = Drained {
            at: state::now(),
            by,
            forced,
        };
        // A forced drain stays forced until undone.
        let forced = forced || self.fenced(endpoint);
        self.hosts.insert(endpoint.to_string(), Drained { forced, ..d });
    }

    pub fn remove(&mut self, endpoint: &str) -> bool {
        self.hosts.remove(endpoint).is_some()
    }
}

impl super::Orchestrator<'_> {
    /// Moves this app's instances off `host` (drained: see the module
    /// doc) in a run of the image they run now, action `drain HOST`.
    /// `None` when none runs there.
    pub fn evacuate(&self, host: &str) -> Result<Option<super::Report>> {
        let _lock = self.lock()?;
        let mut st = self.state()?;
        self.recover(&mut st)?;
        let Some(i) = st.instances.values().find(|i| i.host == host) else {
            return Ok(None);
        };
        let img = i.effective().clone();
        let t = super::Target::from_store(self.store, &img.name, &img.manifest)?;
        self.execute(
            &mut st,
            Some(&t),
            super::plan::Mode::Auto,
            &format!("drain {host}"),
        )
        .map(Some)
    }

    /// The drained hosts, as this orchestrator sees them.
    pub fn drained(&self) -> &DrainList {
        &self.drain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_round_trips_and_a_forced_drain_stays_forced() {
        let dir = tempfile::tempdir().unwrap();
        let store = state::FileState::new(dir.path());
        let mut l = DrainList::load(&store).unwrap();
        assert!(l.hosts.is_empty());
        l.add("tcp://10.0.0.4:2376", "ops@a".into(), true);
        l.add("tcp://10.0.0.4:2376", "ops@b".into(), false);
        l.add("unix:///var/run/docker.sock", "ops@a".into(), false);
        l.save(&store).unwrap();
        let l = DrainList::load(&store).unwrap();
        assert!(l.fenced("tcp://10.0.0.4:2376"), "{:?}", l.hosts);
        assert!(l.drained("unix:///var/run/docker.sock"));
        assert!(!l.fenced("unix:///var/run/docker.sock"));
        assert!(!l.drained("tcp://10.0.0.5:2376"));
        std::fs::write(dir.path().join("drained.json"), "{").unwrap();
        let e = DrainList::load(&store).unwrap_err().to_string();
        assert!(e.contains("drained.json"), "{e}");
    }
}
