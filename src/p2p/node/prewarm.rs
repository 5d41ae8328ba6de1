//! An agent's side of a prewarm: resolve the image at the origin
//! registry, fetch its blobs through the node (verified, into the store,
//! one download per blob), report progress on the asker's stream, and,
//! when asked, have the local engine pull the image from the agent's own
//! loopback registry, never from the origin.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::{Inner, NodeError, Result};
use crate::digest::Digest;
use crate::p2p::pieces::DEFAULT_PIECE;
use crate::p2p::wire::{Response, write_msg};

impl Inner {
    /// An agent's side of a prewarm: resolve the image at the origin
    /// registry, fetch every blob through the swarm, report progress on
    /// `send`, and pull the image into the local engine when asked.
    pub(super) async fn prewarm_here(
        self: &Arc<Self>,
        image: &str,
        load: bool,
        send: &mut quinn::SendStream,
    ) -> Result<()> {
        let side = self
            .agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| NodeError::Prewarm("this agent runs without --registry".into()))?;
        let (repo, reference) = match image.split_once('@') {
            Some((r, d)) => (r, d),
            None => match image.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t),
                _ => (image, "latest"),
            },
        };
        let http = reqwest::Client::new();
        let manifest = fetch_manifest(&http, &side.upstream, repo, reference).await?;
        let _ = self.store.put(&manifest, None);
        let m: crate::oci::Manifest = serde_json::from_slice(&manifest)
            .map_err(|e| NodeError::Prewarm(format!("{image}: not an image manifest: {e}")))?;
        // Distinct blobs only: two fetches of one blob would share a partial.
        let blobs: Vec<(Digest, u64)> = crate::client::image_blobs(&m)
            .into_iter()
            .map(|(_, d)| (d.digest, d.size))
            .collect();
        let total: u64 = blobs.iter().map(|b| b.1).sum();
        let held = |node: &Inner| -> u64 {
            blobs
                .iter()
                .map(|(d, size)| {
                    if node.store.has(d) {
                        *size
                    } else {
                        let partial = node
                            .partials
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get(d)
                            .cloned();
                        partial.map_or(0, |p| {
                            let n = p.lock().unwrap_or_else(|e| e.into_inner()).have().count() as u64;
                            (n * DEFAULT_PIECE).min(*size)
                        })
                    }
                })
                .sum()
        };
        let frame = |done: u64, message: String| Response::Progress { done, total, message };
        write_msg(send, &frame(held(self), format!("{} blobs", blobs.len()))).await?;
        let mut fetches = JoinSet::new();
        for (d, _) in blobs.iter().filter(|(d, _)| !self.store.has(d)) {
            let (node, d) = (self.clone(), d.clone());
            fetches.spawn(async move { node.fetch(side.origin, &d).await });
        }
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        while !fetches.is_empty() {
            tokio::select! {
                joined = fetches.join_next() => {
                    if let Some(r) = joined {
                        r.map_err(|e| NodeError::Prewarm(e.to_string()))??;
                    }
                }
                _ = tick.tick() => {
                    write_msg(send, &frame(held(self), "fetching".into())).await?;
                }
            }
        }
        write_msg(send, &frame(total, "all blobs held".into())).await?;
        if load {
            let mirror = side.mirror.ok_or_else(|| {
                NodeError::Prewarm("loading needs the agent's pull-through registry".into())
            })?;
            let name = format!("{mirror}/{image}");
            write_msg(send, &frame(total, format!("loading {name} into the engine"))).await?;
            let docker = crate::engine::connect()
                .await
                .map_err(|e| NodeError::Prewarm(e.to_string()))?;
            crate::engine::pull(&docker, &name)
                .await
                .map_err(|e| NodeError::Prewarm(format!("docker pull {name}: {e}")))?;
        }
        Ok(())
    }
}

/// A manifest from the origin registry (an index resolves to linux/amd64).
async fn fetch_manifest(
    http: &reqwest::Client,
    upstream: &str,
    repo: &str,
    reference: &str,
) -> Result<Vec<u8>> {
    let mut reference = reference.to_string();
    for _ in 0..2 {
        let url = format!("{upstream}/v2/{repo}/manifests/{reference}");
        let r = http
            .get(&url)
            .header(reqwest::header::ACCEPT, crate::oci::MANIFEST_ACCEPT)
            .send()
            .await
            .map_err(|e| NodeError::Prewarm(format!("{url}: {e}")))?;
        if !r.status().is_success() {
            return Err(NodeError::Prewarm(format!(
                "{url}: the registry answered {}",
                r.status()
            )));
        }
        let bytes = r
            .bytes()
            .await
            .map_err(|e| NodeError::Prewarm(format!("{url}: {e}")))?
            .to_vec();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let Some(list) = v["manifests"].as_array() else {
            return Ok(bytes);
        };
        let pick = list
            .iter()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64");
        reference = pick
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| NodeError::Prewarm(format!("{url}: no linux/amd64 image in the index")))?
            .to_string();
    }
    Err(NodeError::Prewarm(format!(
        "{repo}:{reference}: an index inside an index"
    )))
}
