//! Finishing what a dead orchestrator left: every command that takes an
//! app's deploy lock (deploy, hotfix, rollback, remove, status, the
//! server at start) first settles the journal it finds.
//!
//! The step on one instance is settled from what the engine shows now,
//! not from the phase alone: a hotfix's backup goes back (and the files
//! are read back to check they are as before); a redeploy's new
//! container goes unless it is the instance's, and the old one is made
//! to serve its address again. Staging left in containers and on disk
//! goes. Then the interrupted run is recorded as `interrupted` and
//! finished forward on every instance as a `recover` run, so no two
//! instances stay on different versions.

use super::plan::Mode;
use super::state::{self, AppState, HistoryEntry, Operation, Run};
use super::{DeployError, Orchestrator, Result, Target, health, hotfix, verify};

impl Orchestrator<'_> {
    /// Takes the app's lock and settles what a dead process left.
    pub fn recover_now(&self) -> Result<()> {
        let _lock = self.lock()?;
        let mut st = self.state()?;
        self.recover(&mut st)
    }

    /// Settles `st`'s journal, if any. Call only while holding the lock.
    pub(super) fn recover(&self, st: &mut AppState) -> Result<()> {
        if st.operation.is_none() && st.run.is_none() {
            self.dir.clean_hotfix_dirs(None)?;
            self.sweep_strays(st);
            return Ok(());
        }
        if let Some(op) = st.operation.clone() {
            self.say(&format!(
                "recovering: {} was left unfinished",
                op.describe(&self.app.name)
            ));
            self.settle(st, &op)?;
            st.operation = None;
            self.dir.save(st)?;
        }
        self.dir.clean_hotfix_dirs(None)?;
        self.clean_containers(st)?;
        self.sweep_strays(st);
        let Some(run) = st.run.clone() else {
            return Ok(());
        };
        if run.action != "recover" {
            // The interrupted run gets its line (once), and the journal
            // becomes the run that finishes it.
            if !self.history()?.iter().any(|h| h.version == run.version) {
                let image = run
                    .image
                    .clone()
                    .or_else(|| run.from.values().flatten().next().cloned());
                if let Some(image) = image {
                    self.dir.append_history(&HistoryEntry {
                        version: run.version,
                        at: state::now(),
                        action: run.action.clone(),
                        mode: String::new(),
                        image,
                        from: run.from.get(&1).cloned().flatten(),
                        outcome: "interrupted".into(),
                        detail: format!(
                            "{} stopped before the {} finished (started {}); the next entry finishes it",
                            state::process(run.pid, &run.machine),
                            run.action,
                            run.started_at
                        ),
                        seconds: 0.0,
                        by: run.by.clone(),
                    })?;
                }
            }
            st.version = st.version.max(run.version);
            st.run = Some(Run {
                version: run.version + 1,
                action: if run.image.is_some() { "recover" } else { "remove" }.into(),
                pid: std::process::id(),
                machine: state::machine(),
                started_at: state::now(),
                by: self.actor(),
                ..run.clone()
            });
            self.dir.save(st)?;
        }
        self.say(&format!(
            "recovering: finishing the interrupted {} on every instance",
            run.action
        ));
        let target = match &run.image {
            Some(img) => Some(
                Target::from_store(self.store, &img.name, &img.manifest).map_err(|e| {
                    DeployError::MissingImage {
                        image: img.to_string(),
                        why: e.to_string(),
                    }
                })?,
            ),
            None => None,
        };
        // A hotfix-only run is finished by whatever brings the instances
        // to its image: its checks passed when it started.
        let mode = match Mode::parse(&run.mode) {
            Some(Mode::Redeploy) => Mode::Redeploy,
            _ => Mode::Auto,
        };
        let action = st.run.as_ref().map(|r| r.action.clone()).unwrap_or_default();
        self.execute(st, target.as_ref(), mode, &action)?;
        Ok(())
    }

    /// Puts one instance back into a state the run can go on from.
    fn settle(&self, st: &mut AppState, op: &Operation) -> Result<()> {
        let index = op.index();
        match op {
            Operation::Hotfix {
                container,
                backup,
                pid,
                machine,
                ..
            } => {
                let Some(i) = st.instances.get(&index).cloned() else {
                    return Ok(());
                };
                if self.drain.fenced(&i.host) {
                    return Ok(()); // out of reach: the run moves it
                }
                if !hotfix::has_backup(backup) {
                    // The journal is written after the backup, so the
                    // backup exists, on the machine that took it: the
                    // container's files are a mix nobody here can undo.
                    // The run replaces the container (see `decide`).
                    let why = format!(
                        "a hotfix by {} was cut short and its backup ({}) is not on {}",
                        state::process(*pid, machine),
                        backup.display(),
                        state::machine()
                    );
                    self.say(&format!("{}: {why}: its container will be replaced", i.name));
                    if let Some(x) = st.instances.get_mut(&index) {
                        x.tainted = Some(why);
                    }
                    return Ok(());
                }
                let host = self.host_of_instance(&i)?;
                if self.block(host.inspect(container))?.is_none_or(|c| !c.running) {
                    // Nothing to restore into: the run redeploys it.
                    return Ok(());
                }
                hotfix::restore_from_dir(self, &host, container, backup)?;
                hotfix::check_restored(self, &host, container, backup)?;
            }
            Operation::Redeploy { old, new, .. } => {
                let Some(i) = st.instances.get(&index).cloned() else {
                    if let Some(n) = new {
                        self.block(self.host(&self.placed(st, index))?.remove(n))?;
                    }
                    return Ok(());
                };
                if let Some(n) = new
                    && *n != i.container
                {
                    let new_host = self.host(&self.placed(st, index))?;
                    self.block(new_host.remove(n))?;
                }
                if self.drain.fenced(&i.host) {
                    return Ok(()); // out of reach: the run moves it
                }
                let host = self.host_of_instance(&i)?;
                if old.as_deref() == Some(i.container.as_str()) {
                    self.serve_again(&host, &i)?;
                }
            }
            Operation::Remove { container, .. } => {
                if let Some(i) = st.instances.get(&index).cloned() {
                    if !self.drain.fenced(&i.host) {
                        let host = self.host_of_instance(&i)?;
                        self.block(host.remove(container))?;
                    }
                    self.leases.release(&self.app.network.pool, &i.name)?;
                    st.instances.remove(&index);
                }
            }
        }
        Ok(())
    }

    /// Makes an instance's container serve its address again: on the
    /// network with its fixed IP, running, healthy.
    fn serve_again(&self, host: &super::host::Host, i: &state::Instance) -> Result<()> {
        let Some(c) = self.block(host.inspect(&i.container))? else {
            return Ok(()); // gone: the run redeploys the instance
        };
        match c.ip {
            Some(ip) if ip == i.ip => {}
            // Taken off the network by a detach swap.
            None => self.block(host.attach_fixed(&i.container, &self.app.network.name, i.ip, &i.name))?,
            Some(_) => {
                self.block(host.move_to_fixed_ip(&i.container, &self.app.network.name, i.ip, &i.name))?
            }
        }
        if !c.running {
            self.block(host.start(&i.container))?;
        }
        self.block(health::wait_healthy(host, &i.container, i.ip, &self.app.health))
            .map_err(|why| DeployError::Instance {
                instance: i.name.clone(),
                why: format!("restarted after the crash but unhealthy: {why}"),
            })?;
        Ok(())
    }

    /// Removes containers labelled as this app's that no instance owns: a
    /// process killed between creating a container and journaling it
    /// leaves one, a fenced host that comes back still runs the ones that
    /// moved away. Only with nothing journaled (the journal names every
    /// container a run still needs). An engine that cannot be reached is
    /// skipped, with a word.
    fn sweep_strays(&self, st: &AppState) {
        if st.operation.is_some() {
            return;
        }
        // Every host of the spec, drained ones included: a host fenced by
        // a forced drain loses the containers it still runs as soon as it
        // answers again.
        let mut endpoints: Vec<String> = st.instances.values().map(|i| i.host.clone()).collect();
        endpoints.extend(self.app.hosts.iter().map(|h| h.to_string()));
        endpoints.sort();
        endpoints.dedup();
        for e in endpoints {
            match self.sweep_host(st, &e) {
                Ok(0) => {}
                Ok(n) => self.say(&format!(
                    "removed {n} container(s) of {} that no instance owns on {e}",
                    self.app.name
                )),
                Err(err) => self.say(&format!("could not look for stray containers on {e}: {err}")),
            }
        }
    }

    /// The containers of this app on `endpoint` that no instance owns,
    /// removed; how many.
    fn sweep_host(&self, st: &AppState, endpoint: &str) -> Result<usize> {
        let owned: std::collections::BTreeSet<&str> =
            st.instances.values().map(|i| i.container.as_str()).collect();
        let ep = super::spec::Endpoint::parse(endpoint).map_err(|why| DeployError::Instance {
            instance: self.app.name.clone(),
            why,
        })?;
        let host = self.host(&ep)?;
        let mut n = 0;
        for id in self.block(host.containers_of(&self.app.name))? {
            if !owned.contains(id.as_str()) {
                self.block(host.remove(&id))?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// On the fenced hosts of this app that answer again: the containers
    /// that moved away, removed (`strata serve` calls this every few
    /// seconds, so a dead host that comes back serves a moved IP for
    /// seconds at most). Skipped while a run holds the lock or is
    /// unfinished; returns how many went.
    pub fn sweep_fenced(&self) -> Result<usize> {
        let fenced: Vec<String> = self
            .app
            .hosts
            .iter()
            .map(|h| h.to_string())
            .filter(|h| self.drain.fenced(h))
            .collect();
        if fenced.is_empty() {
            return Ok(0);
        }
        let _lock = self.lock()?;
        let st = self.state()?;
        if st.operation.is_some() || st.run.is_some() {
            return Ok(0);
        }
        let mut n = 0;
        for e in fenced {
            if let Ok(k) = self.sweep_host(&st, &e) {
                if k > 0 {
                    self.say(&format!(
                        "{e} answers again: removed {k} container(s) of {} that moved away",
                        self.app.name
                    ));
                }
                n += k;
            }
        }
        Ok(n)
    }

    /// Removes hotfix staging and restore directories from every running
    /// instance.
    fn clean_containers(&self, st: &AppState) -> Result<()> {
        for i in st.instances.values() {
            let host = self.host_of_instance(i)?;
            if !self.block(host.inspect(&i.container))?.is_some_and(|c| c.running) {
                continue;
            }
            let script = format!("rm -rf {}", verify::LEFTOVER_GLOBS);
            let o = self.block(host.exec(&i.container, &hotfix::sh(&script), Some("0")))?;
            if o.code != 0 {
                return Err(DeployError::Instance {
                    instance: i.name.clone(),
                    why: format!("removing hotfix staging exited {}: {}", o.code, o.output.trim()),
                });
            }
        }
        Ok(())
    }
}
