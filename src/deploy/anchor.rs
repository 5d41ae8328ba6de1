//! The bridge anchor: a placeholder container that keeps a bridge
//! network's carrier up while an instance's IP changes hands.
//!
//! Why: a Linux bridge whose last port goes away drops its carrier, and
//! the kernel then flushes the bridge's whole ARP cache. During a warm
//! swap the app's network on that engine can hold no container at all for
//! ~0.1 s (the old one is off, the new one not yet on). The host's next
//! packet to the IP then finds no ARP entry, asks once into an empty
//! bridge, and waits for the kernel's next ARP try — one second later —
//! although the new container answers within 0.1 s: every client on the
//! host sees a 1.1 s gap. Measured on this machine's engine (20.10, see
//! BENCHMARKS.md): with any other container on the network the gap is the
//! handover itself (~0.17 s); without, 1.1 s.
//!
//! So when no other running container is on the network (on that engine),
//! the swap first starts one: the new image with `sleep` as its command,
//! on an address of the dynamic range, removed right after the new
//! container is on the IP. It carries the app's label, so a crash leaves
//! nothing the next run's sweep does not remove. An image without `sleep`
//! gets no anchor (the swap still works, with the 1 s gap), and says so.
//! `STRATA_BRIDGE_ANCHOR=off` turns it off (to measure the difference).

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, EndpointSettings, HostConfig, NetworkingConfig};
use bollard::query_parameters::CreateContainerOptionsBuilder;

use super::host::Host;
use super::spec::Driver;
use super::{Orchestrator, Result};

/// How long the placeholder lives if nobody removes it (a crash; the next
/// run's sweep removes it earlier).
const LIFETIME_S: u32 = 600;

impl Orchestrator<'_> {
    /// Starts the anchor for a swap on `host` when the app's network needs
    /// one: a bridge with no running container besides `old` and `new`.
    /// Returns its id; `None` when not needed or not possible (said why).
    pub(super) fn start_anchor(
        &self,
        host: &Host,
        image: &str,
        base: &str,
        old: &str,
        new: &str,
    ) -> Option<String> {
        // `off`: for measuring the gap without it (benches/deploy.sh).
        if !matches!(self.app.network.driver, Driver::Bridge)
            || std::env::var("STRATA_BRIDGE_ANCHOR").is_ok_and(|v| v == "off")
        {
            return None;
        }
        let net = self.app.network.name.as_str();
        match self.block(others_on(host, net, &[old, new])) {
            Ok(true) => return None,
            Ok(false) => {}
            Err(e) => {
                self.say(&format!("could not list the containers on {net}: {e}"));
                return None;
            }
        }
        let name = format!("{base}-anchor");
        let labels = HashMap::from([
            ("org.strata.app".to_string(), self.app.name.clone()),
            ("org.strata.role".to_string(), "anchor".to_string()),
        ]);
        let started = self.block(async {
            // A leftover of a crash holds the name.
            host.remove(&name).await?;
            let id = create(host, image, net, &name, labels).await?;
            host.start(&id).await?;
            Ok::<_, super::DeployError>(id)
        });
        let id = match started {
            Ok(id) => id,
            Err(e) => {
                self.say(&format!("no bridge anchor on {net} ({e}): expect a ~1 s gap"));
                return None;
            }
        };
        // An image without `sleep` exits at once.
        match self.block(host.inspect(&id)) {
            Ok(Some(c)) if c.running => Some(id),
            _ => {
                self.say(&format!(
                    "no bridge anchor on {net}: `sleep` does not run in {image}; expect a ~1 s gap"
                ));
                let _ = self.block(host.remove(&id));
                None
            }
        }
    }

    /// Removes the anchor (once the new container is on the IP).
    pub(super) fn drop_anchor(&self, host: &Host, anchor: Option<String>) {
        if let Some(id) = anchor
            && let Err(e) = self.block(host.remove(&id))
        {
            self.say(&format!(
                "could not remove the bridge anchor: {e} (the next run removes it)"
            ));
        }
    }
}

/// Whether a running container other than `except` is attached to `net`
/// on this engine.
async fn others_on(host: &Host, net: &str, except: &[&str]) -> Result<bool> {
    let n = host
        .docker()
        .inspect_network(net, None::<bollard::query_parameters::InspectNetworkOptions>)
        .await
        .map_err(|e| super::DeployError::Engine {
            host: host.endpoint.to_string(),
            what: format!("inspect network {net}"),
            reason: e.to_string(),
        })?;
    Ok(n.containers
        .unwrap_or_default()
        .keys()
        .any(|id| !except.contains(&id.as_str())))
}

async fn create(
    host: &Host,
    image: &str,
    net: &str,
    name: &str,
    labels: HashMap<String, String>,
) -> Result<String> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        entrypoint: Some(vec!["sleep".into()]),
        cmd: Some(vec![LIFETIME_S.to_string()]),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(net.to_string()),
            memory: Some(32 * 1024 * 1024),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(net.to_string(), EndpointSettings::default())])),
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    host.docker()
        .create_container(Some(opts), body)
        .await
        .map(|r| r.id)
        .map_err(|e| super::DeployError::Engine {
            host: host.endpoint.to_string(),
            what: format!("create container {name}"),
            reason: e.to_string(),
        })
}
