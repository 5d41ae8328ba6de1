//! Full redeploy of one instance with its IP kept: the new container is
//! created first (a fixed IP is only claimed at start), the old one is
//! stopped gracefully, the new one started on the same address and health
//! checked; on failure it goes and the old container starts again. The
//! gap — old stopped to new healthy — is measured and reported.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use super::host::{NewContainer, short};
use super::hotfix::crash_point;
use super::spec::Swap;
use super::state::{self, AppState, Instance, Operation};
use super::{DeployError, InstanceReport, Orchestrator, Result, Target, health, secs};

/// A new container for one instance, created (and, warm, started and
/// health checked on a warm-up address) but not yet on the instance's IP.
pub(super) struct Prepared {
    index: u32,
    name: String,
    endpoint: super::spec::Endpoint,
    host: Arc<super::host::Host>,
    ip: Ipv4Addr,
    prev: Option<Instance>,
    prev_host: Option<Arc<super::host::Host>>,
    generation: u64,
    cname: String,
    image: String,
    new_id: String,
    warm: bool,
}

impl Prepared {
    pub(super) fn new_container(&self) -> (&Arc<super::host::Host>, &str) {
        (&self.host, &self.new_id)
    }

    /// Whether it warms up beside the old container (else: a cold swap).
    pub(super) fn warm(&self) -> bool {
        self.warm
    }
}

impl Orchestrator<'_> {
    pub(super) fn redeploy_instance(
        &self,
        st: &mut AppState,
        index: u32,
        target: &Target,
    ) -> Result<InstanceReport> {
        let p = self.create_new(st, index, target)?;
        self.journal_redeploy(st, &p, "created")?;
        crash_point("redeploy-created");
        let warmed = if p.warm() { self.warm_up(&p) } else { Ok(()) };
        self.hand_over(st, p, warmed, target)
    }

    /// Leases the IP, makes sure of the network and the image, and
    /// creates the new container (on a warm-up address when the swap can
    /// be warm). Changes no state: a container made here that no journal
    /// names is removed by the next sweep (recover.rs) after a crash.
    pub(super) fn create_new(&self, st: &AppState, index: u32, target: &Target) -> Result<Prepared> {
        let name = self.app.instance_name(index);
        let endpoint = &self.placed(st, index);
        let host = self.host(endpoint)?;
        let ip = self.leases.acquire(&self.app.network.pool, &name)?;
        self.block(host.ensure_network(&self.app.network, self.app.dynamic_range_of(endpoint)))?;
        let image = self.ensure_image(&host, target)?;
        let prev = st.instances.get(&index).cloned();
        // On a fenced host (a forced drain) the old container is out of
        // reach: the new one starts cold; the sweep removes the old one
        // when the host answers again.
        let prev_host = match &prev {
            Some(p) if !self.drain.fenced(&p.host) => Some(self.host_of_instance(p)?),
            _ => None,
        };
        let generation = prev.as_ref().map(|p| p.generation + 1).unwrap_or(1);
        let cname = format!("{name}-g{generation}");
        // A container of that name can only be a leftover of a crash.
        if let Some(c) = self.block(host.inspect(&cname))?
            && c.labels.get("org.strata.instance") == Some(&name)
            && prev.as_ref().is_none_or(|p| p.container != c.id)
        {
            self.block(host.remove(&c.id))?;
        }

        let mut env: Vec<String> = self.app.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("STRATA_APP={}", self.app.name));
        env.push(format!("STRATA_INSTANCE={name}"));
        let mut binds: Vec<String> = self.app.volumes.iter().map(|v| v.0.clone()).collect();
        if let Some(d) = &self.app.log_dir {
            binds.push(format!("strata-{name}-logs:{d}"));
        }
        let labels = HashMap::from([
            ("org.strata.app".to_string(), self.app.name.clone()),
            ("org.strata.instance".to_string(), name.clone()),
            ("org.strata.image".to_string(), target.image.manifest.to_string()),
            (
                super::desired::LABEL.to_string(),
                super::desired::Desired::of(&self.app).to_label(),
            ),
        ]);
        let spec = NewContainer {
            name: cname.clone(),
            image,
            hostname: name.clone(),
            ip,
            env,
            binds,
            labels,
            stop_grace: self.app.stop_grace,
            memory_mib: self.app.memory_mib,
            command: self.app.command.clone(),
            user: self.app.user.clone(),
        };
        // Warm swap: the new container starts on an address of the
        // engine's dynamic range and is health checked while the old one
        // still serves; then the old one stops and the fixed IP moves over,
        // so the gap is a graceful stop plus a network reattach instead of
        // a whole application start. Needs `dynamic_range` (so the warm-up
        // address never is a leased one; on macvlan, this host's slice of
        // it) and the old container running, on this host or another (an
        // instance moving to another host is handed over the same way);
        // otherwise: stop, then start on the fixed IP.
        let old_running = match (&prev, &prev_host) {
            (Some(p), Some(h)) => self.block(h.inspect(&p.container))?.is_some_and(|c| c.running),
            _ => false,
        };
        let warm = self.app.dynamic_range_of(endpoint).is_some() && old_running;
        let new_id = self.block(host.create(&spec, &self.app.network, warm))?;
        Ok(Prepared {
            index,
            name,
            endpoint: endpoint.clone(),
            host,
            ip,
            prev,
            prev_host,
            generation,
            cname,
            image: spec.image,
            new_id,
            warm,
        })
    }

    /// The redeploy's step on `p` in the journal.
    fn journal_redeploy(&self, st: &mut AppState, p: &Prepared, phase: &str) -> Result<()> {
        st.operation = Some(redeploy_op(p.index, p.prev.as_ref(), &p.new_id, phase));
        self.dir.save(st)
    }

    /// Starts a warm new container on its warm-up address and waits for
    /// it to be healthy while the old one still serves the IP.
    pub(super) fn warm_up(&self, p: &Prepared) -> std::result::Result<(), String> {
        let (host, new_id, name, ip) = (&p.host, &p.new_id, &p.name, p.ip);
        self.block(async {
            host.start(new_id).await.map_err(|e| e.to_string())?;
            let tmp = host
                .inspect(new_id)
                .await
                .map_err(|e| e.to_string())?
                .and_then(|c| c.ip)
                .ok_or_else(|| "the new container got no address".to_string())?;
            self.say(&format!(
                "{name}: warming up on {tmp} while the old container serves {ip}"
            ));
            health::wait_healthy(host, new_id, tmp, &self.app.health).await
        })
        .map(|_| ())
    }

    /// Moves the instance's IP to `p`'s container (warm: from the old
    /// one, which then stops; cold: the old one stops first), checks it is
    /// healthy there and records it; rolls back to the old container when
    /// it is not. `warmed` is how `p`'s warm-up went.
    pub(super) fn hand_over(
        &self,
        st: &mut AppState,
        p: Prepared,
        warmed: std::result::Result<(), String>,
        target: &Target,
    ) -> Result<InstanceReport> {
        let Prepared {
            index,
            name,
            endpoint,
            host,
            ip,
            prev,
            prev_host,
            generation,
            cname,
            image,
            new_id,
            warm,
        } = p;
        let endpoint = &endpoint;
        let journal = |st: &mut AppState, phase: &str| {
            st.operation = Some(redeploy_op(index, prev.as_ref(), &new_id, phase));
            self.dir.save(st)
        };
        if warm && let Err(why) = warmed {
            let tail = self.block(crate::engine::logs(host.docker(), &new_id, 15));
            self.block(host.remove(&new_id))?;
            st.operation = None;
            self.dir.save(st)?;
            let p = prev.as_ref().expect("warm implies a previous instance");
            return Err(DeployError::RolledBack {
                instance: name,
                why: with_tail(format!("{why}; the old container never stopped"), &tail),
                previous: p.effective().to_string(),
                ip: p.ip,
            });
        }

        if warm {
            journal(st, "warmed")?;
            crash_point("redeploy-warmed");
        }
        // Detach swap: the new container leaves its warm-up address first
        // (nobody uses it), so the handover itself is two engine calls:
        // the old container off the network, the new one on at the IP.
        // The old one then stops gracefully, off the network. Drain swap
        // (and the cold path): the old container stops first.
        let detach = warm && self.app.swap == Swap::Detach;
        let net = self.app.network.name.as_str();
        // Keeps the bridge up while no container holds a port on it (see
        // anchor.rs): else the host's ARP cache is flushed and clients wait
        // a second for the kernel's next ARP try.
        let anchor = match &prev {
            Some(p) if warm => self.start_anchor(&host, &image, &cname, &p.container, &new_id),
            _ => None,
        };
        if detach {
            self.block(host.detach(&new_id, net))?;
            journal(st, "swapping")?;
        }
        let gap = Instant::now();
        let on_ip = if detach {
            let p = prev.as_ref().expect("warm implies a previous instance");
            self.say(&format!(
                "{name}: handing {ip} from {} to {}",
                short(&p.container),
                short(&new_id)
            ));
            let h = prev_host.as_ref().expect("warm implies a previous instance");
            self.block(h.detach(&p.container, net))?;
            crash_point("redeploy-old-detached");
            self.block(host.attach_fixed(&new_id, net, ip, &name))
        } else {
            if let (Some(p), Some(h)) = (&prev, &prev_host) {
                self.say(&format!(
                    "{name}: stopping {} (grace {:?})",
                    short(&p.container),
                    self.app.stop_grace
                ));
                self.block(h.stop(&p.container, self.app.stop_grace))?;
            }
            journal(st, "old-stopped")?;
            crash_point("redeploy-old-stopped");
            if warm {
                self.block(host.move_to_fixed_ip(&new_id, net, ip, &name))
            } else {
                self.block(host.start(&new_id))
            }
        };
        self.drop_anchor(&host, anchor);
        crash_point("redeploy-on-ip");
        let healthy = match on_ip {
            Ok(()) => self.block(health::wait_healthy(&host, &new_id, ip, &self.app.health)),
            Err(e) => Err(e.to_string()),
        };
        let why = match healthy {
            Ok(_) => {
                let gap = gap.elapsed();
                journal(st, "healthy")?;
                crash_point("redeploy-healthy");
                if let (Some(p), Some(h)) = (&prev, &prev_host) {
                    if detach {
                        // Off the network already: its requests are done.
                        self.block(h.stop(&p.container, self.app.stop_grace))?;
                    }
                    self.block(h.remove(&p.container))?;
                }
                crash_point("redeploy-old-removed");
                st.instances.insert(
                    index,
                    Instance {
                        index,
                        name: name.clone(),
                        host: endpoint.to_string(),
                        ip,
                        container: new_id.clone(),
                        container_name: cname,
                        generation,
                        image: target.image.clone(),
                        hotfix: None,
                        health: "healthy".into(),
                        since: state::now(),
                        tainted: None,
                    },
                );
                st.operation = None;
                self.dir.save(st)?;
                return Ok(InstanceReport {
                    instance: name,
                    host: endpoint.to_string(),
                    ip: ip.to_string(),
                    mode: "redeploy".into(),
                    outcome: "ok".into(),
                    seconds: 0.0,
                    gap_seconds: prev.is_some().then(|| secs(gap)),
                    files: None,
                    detail: format!("container {} ({}) on {ip}", short(&new_id), target.image),
                });
            }
            Err(why) => why,
        };

        // Roll back: the new container goes, the old one comes back.
        let tail = self.block(crate::engine::logs(host.docker(), &new_id, 15));
        let why = with_tail(why, &tail);
        self.say(&format!("{name}: unhealthy, rolling back"));
        self.block(host.remove(&new_id))?;
        let result = match (&prev, &prev_host) {
            (Some(p), Some(h)) => {
                if detach {
                    // Still running, off the network: back on its IP.
                    self.block(h.attach_fixed(&p.container, net, p.ip, &p.name))?;
                } else {
                    self.block(h.start(&p.container))?;
                }
                match self.block(health::wait_healthy(h, &p.container, p.ip, &self.app.health)) {
                    Ok(_) => Err(DeployError::RolledBack {
                        instance: name,
                        why,
                        previous: p.effective().to_string(),
                        ip: p.ip,
                    }),
                    Err(again) => Err(DeployError::Instance {
                        instance: name,
                        why: format!(
                            "{why}; the previous container was restarted but is unhealthy too: {again}"
                        ),
                    }),
                }
            }
            _ => Err(DeployError::Unhealthy { instance: name, why }),
        };
        st.operation = None;
        self.dir.save(st)?;
        result
    }
}

/// The journal of a redeploy of instance `index` from `prev`'s container
/// to `new`, at `phase`.
fn redeploy_op(index: u32, prev: Option<&Instance>, new: &str, phase: &str) -> Operation {
    Operation::Redeploy {
        index,
        pid: std::process::id(),
        machine: state::machine(),
        started_at: state::now(),
        old: prev.map(|p| p.container.clone()),
        new: Some(new.to_string()),
        phase: phase.to_string(),
    }
}

fn with_tail(why: String, tail: &str) -> String {
    if tail.trim().is_empty() {
        why
    } else {
        format!("{why}; last log lines:\n{}", tail.trim_end())
    }
}
