//! `strata status`: every instance as its engine shows it now, a live
//! health probe, and with `verify` the drift between what the container
//! runs and what the history says it runs — its image, the env, binds
//! and memory strata gave it, and every file under the hotfix paths read
//! back and compared with the image. An unfinished run is finished
//! first, unless its process is still at work (the lock says so).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::desired::{self, Desired};
use super::host::Host;
use super::state::{Instance, Operation, Run};
use super::{Orchestrator, Result, health, verify};
use crate::lease::LeaseError;

#[derive(Debug, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The instance as recorded, with `health` the live probe's answer.
    #[serde(flatten)]
    pub instance: Instance,
    pub running: bool,
    pub started_at: String,
    /// When a stopped container stopped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stopped_at: String,
    /// With `--verify`: how the container differs from what the history
    /// says it runs (empty: no drift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub app: String,
    pub version: u64,
    /// A step still in progress (its process holds the app's lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<Operation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    /// What this call did about an interrupted run, or why it could not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recovery: String,
    pub instances: Vec<InstanceStatus>,
}

impl Orchestrator<'_> {
    /// Every instance as the engines see it now; `verify` adds drift.
    pub fn status(&self, verify: bool) -> Result<Status> {
        // Settle what a dead process left (and sweep its leftovers) unless
        // a live one holds the lock.
        let mut recovery = String::new();
        match self.lock() {
            Ok(_lock) => {
                let mut st = self.state()?;
                let journaled = st.operation.is_some() || st.run.is_some();
                match self.recover(&mut st) {
                    Ok(()) if journaled => {
                        recovery = "an interrupted run was finished (see the history)".into();
                    }
                    Ok(()) => {}
                    Err(e) => recovery = format!("finishing the interrupted run failed: {e}"),
                }
            }
            Err(super::DeployError::Lease(LeaseError::Locked { holder, .. })) => {
                recovery = format!("a run is in progress: {holder}");
            }
            Err(e) => return Err(e),
        }
        let st = self.state()?;
        let mut instances = Vec::new();
        for i in st.instances.values() {
            let mut s = InstanceStatus {
                instance: i.clone(),
                running: false,
                started_at: String::new(),
                stopped_at: String::new(),
                drift: None,
            };
            let host = match self.host_of_instance(i) {
                Ok(h) => h,
                Err(e) => {
                    s.instance.health = format!("engine unreachable: {e}");
                    instances.push(s);
                    continue;
                }
            };
            match self.block(host.inspect(&i.container)) {
                Err(e) => s.instance.health = e.to_string(),
                Ok(None) => s.instance.health = "container missing".into(),
                Ok(Some(c)) => {
                    s.running = c.running;
                    s.started_at = c.started_at.clone();
                    if c.running {
                        let h = self.block(health::probe(
                            &host,
                            &i.container,
                            i.ip,
                            &self.app.health.check,
                            self.app.health.timeout,
                        ));
                        s.instance.health = match h {
                            Ok(()) => "healthy".into(),
                            Err(e) => format!("unhealthy: {e}"),
                        };
                    } else {
                        s.stopped_at = c.finished_at.clone();
                        s.instance.health = "stopped".into();
                    }
                    if verify {
                        s.drift = Some(self.drift(&host, i, &c)?);
                    }
                }
            }
            instances.push(s);
        }
        Ok(Status {
            app: self.app.name.clone(),
            version: st.version,
            unfinished: st.operation.clone(),
            run: st.run.clone(),
            recovery,
            instances,
        })
    }

    /// How a container differs from what the history says it runs.
    fn drift(&self, host: &Host, i: &Instance, c: &super::host::Container) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if c.image != i.image.config.to_string() {
            out.push(format!(
                "the container runs image {}, the history says {}",
                c.image, i.image
            ));
        }
        match Desired::from_labels(&c.labels) {
            None => out.push("the container records no spec (made by an older strata)".into()),
            Some(d) => out.extend(desired::drift(&d, &c.live)),
        }
        if !c.running || self.app.hotfix.patterns.is_empty() {
            return Ok(out);
        }
        // Every file under the hotfix paths, read back and compared with
        // the image the instance runs (its hotfix, if any).
        let tree = self.tree(&i.effective().manifest)?;
        let roots: BTreeSet<String> = self.app.hotfix.patterns.iter().map(|p| glob_root(p)).collect();
        let roots: Vec<String> = roots.into_iter().collect();
        let o = self.block(host.exec(
            &i.container,
            &super::hotfix::sh(&verify::list_script(&roots)),
            Some("0"),
        ))?;
        let mut paths: BTreeSet<String> = o
            .output
            .lines()
            .filter(|p| !p.is_empty() && self.app.hotfix.eligible(p))
            .map(str::to_string)
            .collect();
        paths.extend(
            tree.keys()
                .filter(|p| self.app.hotfix.eligible(p))
                .filter(|p| roots.iter().any(|r| format!("/{p}").starts_with(r.as_str())))
                .cloned(),
        );
        let paths: Vec<String> = paths.into_iter().collect();
        let want: Vec<String> = paths.iter().map(|p| verify::expected(tree.get(p))).collect();
        let got = verify::parse(&self.describe(host, &i.container, &paths)?);
        out.extend(verify::mismatches(&paths, &want, &got));
        Ok(out)
    }
}

/// The directory a hotfix pattern starts at: everything before the
/// first component with a glob character (`/srv/www/**` → `/srv/www`).
fn glob_root(pattern: &str) -> String {
    let mut root = String::new();
    for c in pattern.split('/').filter(|c| !c.is_empty()) {
        if c.contains(['*', '?', '[', '{']) {
            break;
        }
        root.push('/');
        root.push_str(c);
    }
    if root.is_empty() { "/".into() } else { root }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_glob_starts_at_its_literal_directory() {
        assert_eq!(
            super::glob_root("/var/lib/tomcat10/webapps/**"),
            "/var/lib/tomcat10/webapps"
        );
        assert_eq!(super::glob_root("/srv/*.html"), "/srv");
        assert_eq!(super::glob_root("/srv/app.war"), "/srv/app.war");
        assert_eq!(super::glob_root("/**"), "/");
    }
}
