//! A run: one image onto every instance of an app, all or nothing.
//!
//! Everything is checked before any host changes (every engine reached,
//! enough addresses in the pool, a decision for every instance, hotfix
//! archives validated); a refused run changes nothing and is recorded as
//! `refused`. Then the run is journaled in the app's state (`Run`: the
//! version it will be, what every instance ran before) and each instance
//! is brought to the image — unchanged, hotfixed in place or redeployed —
//! one at a time. When one fails, the instances already changed go back
//! to what they ran before, so no two instances are left on different
//! versions. The history entry is written last; until then a crash
//! leaves the journal, which the next command finishes (`recover.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::desired::{self, Desired};
use super::plan::{self, Decision, Mode};
use super::state::{self, AppState, HistoryEntry, ImageRef, Operation, Run};
use super::{DeployError, InstanceReport, Orchestrator, Report, Result, Target};
use crate::oci::ImageConfig;

impl Orchestrator<'_> {
    /// Deploys `target` to every instance: hotfix where eligible (or as
    /// `mode` demands), redeploy otherwise. Finishes an interrupted run
    /// first. When an instance fails, it is rolled back or restored, and
    /// the instances already changed go back too.
    pub fn deploy(&self, target: &Target, mode: Mode, action: &str) -> Result<Report> {
        let _lock = self.lock()?;
        let mut st = self.state()?;
        self.recover(&mut st)?;
        self.execute(&mut st, Some(target), mode, action)
    }

    /// Stops and removes every instance and releases their addresses; the
    /// history stays, and the logs volumes too unless `purge`.
    pub fn remove(&self, purge: bool) -> Result<Report> {
        let _lock = self.lock()?;
        let mut st = self.state()?;
        self.recover(&mut st)?;
        if st.instances.is_empty() {
            return Err(DeployError::NothingToRemove(self.app.name.clone()));
        }
        let action = if purge { "remove --purge" } else { "remove" };
        let r = self.execute(&mut st, None, Mode::Auto, action)?;
        if purge {
            for i in &r.instances {
                let e = super::spec::Endpoint::parse(&i.host).map_err(|why| DeployError::Instance {
                    instance: i.instance.clone(),
                    why,
                })?;
                let host = self.host(&e)?;
                let vol = format!("strata-{}-logs", i.instance);
                self.block(host.remove_volume(&vol))?;
            }
        }
        Ok(r)
    }

    /// Plans and carries out a run of `target` (None: remove every
    /// instance). A run already journaled in `st` is resumed: its version
    /// and its record of what each instance ran before are kept.
    pub(super) fn execute(
        &self,
        st: &mut AppState,
        target: Option<&Target>,
        mode: Mode,
        action: &str,
    ) -> Result<Report> {
        let started = Instant::now();
        let resumed = st.run.is_some();
        let keep = if target.is_some() { self.app.instances } else { 0 };
        let plans = match target {
            Some(t) => self.plan(st, t, mode),
            None => Ok(vec![]),
        };
        let plans = match plans {
            Ok(p) => p,
            Err(e) => {
                if !resumed && let Some(t) = target {
                    self.refused(st, t, action, &e, started)?;
                }
                return Err(e);
            }
        };
        if !resumed {
            let from: BTreeMap<u32, Option<ImageRef>> = (1..=self.app.instances.max(last_index(st)))
                .map(|i| (i, st.instances.get(&i).map(|x| x.effective().clone())))
                .collect();
            st.run = Some(Run {
                version: st.version + 1,
                action: action.to_string(),
                image: target.map(|t| t.image.clone()),
                mode: mode.name().into(),
                from,
                pid: std::process::id(),
                machine: state::machine(),
                started_at: state::now(),
                by: self.actor(),
            });
            self.dir.save(st)?;
        }
        let run = st.run.clone().expect("journaled above");

        let mut reports = Vec::new();
        let mut failure = None;
        let mut next = 0;
        while next < plans.len() {
            let t = target.expect("plans only with a target");
            // Redeploys of running instances, up to max_unavailable of
            // them in a row, warm up side by side.
            let batch: Vec<(u32, String)> = plans[next..]
                .iter()
                .take(self.app.max_unavailable as usize)
                .map_while(|(index, d)| match d {
                    Decision::Redeploy { reason } if st.instances.contains_key(index) => {
                        Some((*index, reason.clone()))
                    }
                    _ => None,
                })
                .collect();
            if batch.len() > 1 {
                next += batch.len();
                let (done, failed) = self.redeploy_batch(st, &batch, t);
                reports.extend(done);
                if let Some((index, reason, e)) = failed {
                    reports.push(self.failed_report(st, index, &Decision::Redeploy { reason }, &e));
                    failure = Some(e);
                    break;
                }
                continue;
            }
            let (index, d) = &plans[next];
            next += 1;
            match self.step(st, *index, d, t) {
                Ok(rep) => reports.push(rep),
                Err(e) => {
                    reports.push(self.failed_report(st, *index, d, &e));
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            match self.scale_down(st, keep) {
                Ok(r) => reports.extend(r),
                Err(e) => failure = Some(e),
            }
        }
        let mut detail = failure.as_ref().map(|e| e.to_string()).unwrap_or_default();
        if failure.is_some() {
            match self.put_back(st, &run.from) {
                Ok(back) if !back.is_empty() => {
                    detail.push_str(&format!(
                        "; {} went back to what they ran before",
                        back.iter()
                            .map(|r| r.instance.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    reports.extend(back);
                }
                Ok(_) => {}
                Err(e) => detail.push_str(&format!("; putting the other instances back failed: {e}")),
            }
        }

        let modes: BTreeSet<&str> = reports.iter().map(|r| r.mode.as_str()).collect();
        let image = target
            .map(|t| t.image.clone())
            .or_else(|| run.from.values().flatten().next().cloned());
        let Some(image) = image else {
            return Err(DeployError::NothingToRemove(self.app.name.clone()));
        };
        let entry = HistoryEntry {
            version: run.version,
            at: state::now(),
            action: run.action.clone(),
            mode: modes.into_iter().collect::<Vec<_>>().join("+"),
            image,
            from: run.from.get(&1).cloned().flatten(),
            outcome: match &failure {
                None => "ok".into(),
                Some(DeployError::RolledBack { .. }) => "rolled-back".into(),
                Some(DeployError::HotfixRestored { .. }) => "restored".into(),
                Some(_) => "failed".into(),
            },
            detail,
            seconds: started.elapsed().as_secs_f64(),
            by: run.by.clone(),
        };
        self.record(st, &entry)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(Report {
                app: self.app.name.clone(),
                version: entry.version,
                action: entry.action,
                image: entry.image.to_string(),
                seconds: entry.seconds,
                instances: reports,
            }),
        }
    }

    /// Writes a run's history entry, then clears its journal.
    pub(super) fn record(&self, st: &mut AppState, entry: &HistoryEntry) -> Result<()> {
        self.dir.append_history(entry)?;
        st.version = st.version.max(entry.version);
        st.run = None;
        self.dir.save(st)
    }

    /// A run refused before anything changed still gets its line.
    fn refused(
        &self,
        st: &mut AppState,
        target: &Target,
        action: &str,
        e: &DeployError,
        started: Instant,
    ) -> Result<()> {
        let entry = HistoryEntry {
            version: st.version + 1,
            at: state::now(),
            action: action.to_string(),
            mode: String::new(),
            image: target.image.clone(),
            from: st.instances.get(&1).map(|i| i.effective().clone()),
            outcome: "refused".into(),
            detail: format!("{e}; nothing was changed"),
            seconds: started.elapsed().as_secs_f64(),
            by: self.actor(),
        };
        self.record(st, &entry)
    }

    /// Reaches every engine, checks the pool and decides for every
    /// instance, touching nothing.
    fn plan(&self, st: &AppState, target: &Target, mode: Mode) -> Result<Vec<(u32, Decision)>> {
        if self.app.hosts.iter().all(|h| self.drain.drained(&h.to_string())) {
            return Err(DeployError::AllDrained(self.app.name.clone()));
        }
        // Where instances run now must answer (a moving one is handed
        // over from there), unless a forced drain fenced the host.
        for i in st.instances.values() {
            if self.drain.fenced(&i.host) {
                continue;
            }
            if let Err(e) = self.host_of_instance(i) {
                return Err(match e {
                    DeployError::Engine { host, reason, .. } => DeployError::HostDown {
                        instance: i.name.clone(),
                        host,
                        ip: i.ip,
                        reason,
                    },
                    e => e,
                });
            }
        }
        for index in 1..=self.app.instances {
            self.host(&self.placed(st, index))?;
        }
        self.check_pool()?;
        let want = Desired::of(&self.app);
        let mut plans = Vec::new();
        for index in 1..=self.app.instances {
            let d = match (mode, self.decide(st, index, target, &want)?) {
                (Mode::Hotfix, Decision::Redeploy { reason }) => {
                    return Err(DeployError::NotHotfixable {
                        image: target.image.to_string(),
                        reason: format!("{}: {reason}", self.app.instance_name(index)),
                    });
                }
                (Mode::Redeploy, Decision::Hotfix | Decision::Nothing) => Decision::Redeploy {
                    reason: "a redeploy was asked for".into(),
                },
                (_, d) => d,
            };
            if d == Decision::Hotfix {
                let from = st.instances[&index].effective().clone();
                self.check_hotfix(&from, target)?;
            }
            plans.push((index, d));
        }
        Ok(plans)
    }

    /// What instance `index` needs to run `target` as the spec says.
    pub(super) fn decide(
        &self,
        st: &AppState,
        index: u32,
        target: &Target,
        want: &Desired,
    ) -> Result<Decision> {
        let redeploy = |reason: String| Ok(Decision::Redeploy { reason });
        let Some(i) = st.instances.get(&index) else {
            return redeploy("no running instance yet".into());
        };
        if let Some(why) = &i.tainted {
            return redeploy(format!("its files are unknown: {why}"));
        }
        let endpoint = self.placed(st, index).to_string();
        if i.host != endpoint {
            return redeploy(format!("it moves from {} to {endpoint}", i.host));
        }
        let host = self.host_of_instance(i)?;
        let c = match self.block(host.inspect(&i.container))? {
            None => return redeploy("its container is gone".into()),
            Some(c) if !c.running => return redeploy("the container is not running".into()),
            Some(c) => c,
        };
        match Desired::from_labels(&c.labels) {
            None => return redeploy("the container records no spec (made by an older strata)".into()),
            Some(have) => {
                let diffs = desired::differences(&have, want);
                if !diffs.is_empty() {
                    return redeploy(format!("spec changed: {}", diffs.join(", ")));
                }
            }
        }
        let old: ImageConfig = self.store.read_json(&i.effective().config)?;
        Ok(plan::decide(
            &old.config,
            &target.config.config,
            &self.changes(i.effective(), target)?,
            &self.app.hotfix,
        ))
    }

    /// Refuses a run that would need more addresses than the pool has
    /// free, before any container is touched.
    fn check_pool(&self) -> Result<()> {
        let pool = &self.app.network.pool;
        let leases = self.leases.list(pool)?;
        let held: BTreeSet<&str> = leases.values().map(String::as_str).collect();
        let need = (1..=self.app.instances)
            .filter(|i| !held.contains(self.app.instance_name(*i).as_str()))
            .count() as u64;
        let free = pool.size().saturating_sub(leases.len() as u64);
        if need > free {
            return Err(DeployError::PoolShort {
                pool: pool.name.clone(),
                free,
                need,
            });
        }
        Ok(())
    }

    /// Carries out one instance's decision. A hotfix whose result could
    /// not be verified becomes a redeploy of the same image.
    fn step(&self, st: &mut AppState, index: u32, d: &Decision, target: &Target) -> Result<InstanceReport> {
        let name = self.app.instance_name(index);
        let t = Instant::now();
        let mut rep = match d {
            Decision::Nothing => {
                let i = &st.instances[&index];
                InstanceReport {
                    instance: name.clone(),
                    host: i.host.clone(),
                    ip: i.ip.to_string(),
                    mode: "unchanged".into(),
                    outcome: "ok".into(),
                    seconds: 0.0,
                    gap_seconds: None,
                    files: None,
                    detail: format!("already runs {}", i.effective()),
                }
            }
            Decision::Hotfix => {
                self.say(&format!("{name}: hotfix in place"));
                match self.hotfix_instance(st, index, target) {
                    Err(DeployError::Unverified { instance, why }) => {
                        self.say(&format!(
                            "{instance}: the hotfix did not hold ({why}); redeploying it on the same IP"
                        ));
                        let mut r = self.redeploy_instance(st, index, target)?;
                        r.detail = format!("hotfix did not hold ({why}); redeployed: {}", r.detail);
                        r
                    }
                    r => r?,
                }
            }
            Decision::Redeploy { reason } => {
                self.say(&format!("{name}: redeploy ({reason})"));
                let mut r = self.redeploy_instance(st, index, target)?;
                r.detail = format!("{reason}; {}", r.detail);
                r
            }
        };
        rep.seconds = t.elapsed().as_secs_f64();
        self.say_done(&rep);
        Ok(rep)
    }

    /// `shop-2: redeploy ok in 3.10s, gap 0.18s`.
    fn say_done(&self, rep: &InstanceReport) {
        self.say(&format!(
            "{}: {} {} in {:.2}s{}",
            rep.instance,
            rep.mode,
            rep.outcome,
            rep.seconds,
            rep.gap_seconds
                .map(|g| format!(", gap {g:.2}s"))
                .unwrap_or_default()
        ));
    }

    /// Redeploys the running instances of `batch` (index, reason) at
    /// once: their new containers are created and warmed up in parallel
    /// while the old ones serve (nothing journaled yet: a crash leaves
    /// containers no instance owns, which the next sweep removes), then
    /// each takes its IP over in turn, journaled as a single redeploy.
    /// Stops at the first failure, removing the new containers not handed
    /// over yet; returns what was done and that failure.
    fn redeploy_batch(
        &self,
        st: &mut AppState,
        batch: &[(u32, String)],
        target: &Target,
    ) -> (Vec<InstanceReport>, Option<(u32, String, DeployError)>) {
        let names: Vec<String> = batch.iter().map(|(i, _)| self.app.instance_name(*i)).collect();
        self.say(&format!(
            "{}: redeploy side by side (max_unavailable = {}; {})",
            names.join(", "),
            self.app.max_unavailable,
            batch[0].1
        ));
        let t = Instant::now();
        let snapshot = st.clone();
        let prepared: Vec<_> = std::thread::scope(|s| {
            let jobs: Vec<_> = batch
                .iter()
                .map(|(index, _)| {
                    let snapshot = &snapshot;
                    s.spawn(move || {
                        let p = self.create_new(snapshot, *index, target)?;
                        let warmed = if p.warm() { self.warm_up(&p) } else { Ok(()) };
                        Ok::<_, DeployError>((p, warmed))
                    })
                })
                .collect();
            jobs.into_iter()
                .map(|j| j.join().expect("a warm-up thread panicked"))
                .collect()
        });
        let mut done = Vec::new();
        let mut failed = None;
        let mut left = prepared.into_iter().zip(batch);
        for (p, (index, reason)) in left.by_ref() {
            let r = p.and_then(|(p, warmed)| self.hand_over(st, p, warmed, target));
            match r {
                Ok(mut rep) => {
                    rep.detail = format!("{reason}; {}", rep.detail);
                    rep.seconds = t.elapsed().as_secs_f64();
                    self.say_done(&rep);
                    done.push(rep);
                }
                Err(e) => {
                    failed = Some((*index, reason.clone(), e));
                    break;
                }
            }
        }
        for (p, _) in left {
            if let Ok((p, _)) = p {
                let (host, id) = p.new_container();
                if let Err(e) = self.block(host.remove(id)) {
                    self.say(&format!("could not remove the unused container {id}: {e}"));
                }
            }
        }
        (done, failed)
    }

    fn failed_report(&self, st: &AppState, index: u32, d: &Decision, e: &DeployError) -> InstanceReport {
        InstanceReport {
            instance: self.app.instance_name(index),
            host: self.placed(st, index).to_string(),
            ip: st
                .instances
                .get(&index)
                .map(|i| i.ip.to_string())
                .unwrap_or_default(),
            mode: match d {
                Decision::Hotfix => "hotfix".into(),
                _ => "redeploy".into(),
            },
            outcome: match e {
                DeployError::RolledBack { .. } => "rolled-back".into(),
                DeployError::HotfixRestored { .. } => "restored".into(),
                _ => "failed".into(),
            },
            seconds: 0.0,
            gap_seconds: None,
            files: None,
            detail: e.to_string(),
        }
    }

    /// After a failed run: every instance that runs something else than
    /// it did before the run goes back (a new one goes away).
    pub(super) fn put_back(
        &self,
        st: &mut AppState,
        from: &BTreeMap<u32, Option<ImageRef>>,
    ) -> Result<Vec<InstanceReport>> {
        let want = Desired::of(&self.app);
        let mut out = Vec::new();
        for (index, before) in from {
            let now = st.instances.get(index).map(|i| i.effective().clone());
            let tainted = st.instances.get(index).is_some_and(|i| i.tainted.is_some());
            if now == *before && !tainted {
                continue;
            }
            match before {
                None => out.push(self.remove_instance(st, *index, "it did not exist before the run")?),
                Some(img) => {
                    let t = Target::from_store(self.store, &img.name, &img.manifest)?;
                    let d = match self.decide(st, *index, &t, &want)? {
                        Decision::Nothing => continue,
                        d => d,
                    };
                    let mut r = self.step(st, *index, &d, &t)?;
                    r.detail = format!("back to {img}: {}", r.detail);
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Instances above `keep`: containers removed, leases freed.
    fn scale_down(&self, st: &mut AppState, keep: u32) -> Result<Vec<InstanceReport>> {
        let extra: Vec<u32> = st.instances.keys().copied().filter(|i| *i > keep).collect();
        let mut out = Vec::new();
        for index in extra {
            let why = if keep == 0 { "removed" } else { "scaled down" };
            out.push(self.remove_instance(st, index, why)?);
        }
        Ok(out)
    }

    /// Stops and removes one instance's container and frees its address,
    /// journaled so a crash midway is finished by the next command.
    pub(super) fn remove_instance(&self, st: &mut AppState, index: u32, why: &str) -> Result<InstanceReport> {
        let Some(i) = st.instances.get(&index).cloned() else {
            return Err(DeployError::Instance {
                instance: self.app.instance_name(index),
                why: "no such instance".into(),
            });
        };
        self.say(&format!("{}: removing ({why})", i.name));
        st.operation = Some(Operation::Remove {
            index,
            pid: std::process::id(),
            machine: state::machine(),
            started_at: state::now(),
            container: i.container.clone(),
            phase: "stopping".into(),
        });
        self.dir.save(st)?;
        // A fenced host's containers go when it answers again (sweep).
        if !self.drain.fenced(&i.host) {
            let host = self.host_of_instance(&i)?;
            self.block(host.stop(&i.container, self.app.stop_grace))?;
            self.block(host.remove(&i.container))?;
        }
        self.leases.release(&self.app.network.pool, &i.name)?;
        st.instances.remove(&index);
        st.operation = None;
        self.dir.save(st)?;
        Ok(InstanceReport {
            instance: i.name,
            host: i.host,
            ip: i.ip.to_string(),
            mode: "removed".into(),
            outcome: "ok".into(),
            seconds: 0.0,
            gap_seconds: None,
            files: None,
            detail: format!("{why}; lease released"),
        })
    }
}

/// The highest instance index the state knows.
fn last_index(st: &AppState) -> u32 {
    st.instances.keys().max().copied().unwrap_or(0)
}
