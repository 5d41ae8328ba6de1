//! The origin's side of the node: the tracker (a swarm per blob: who
//! holds which pieces, and the chain of agents streaming it), agents'
//! registrations and certificate renewals, piece tables, and the rule
//! that the origin sends a piece only while no peer holds it. Nothing is
//! hashed under the tracker's lock: a blob's swarm is sized from the
//! blob's size, and piece tables are made outside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{HostInfo, Inner};
use crate::digest::Digest;
use crate::p2p::Bitfield;
use crate::p2p::pieces::{DEFAULT_PIECE, PieceTable};
use crate::p2p::rng::Rng;
use crate::p2p::stripes::{ORIGIN, Plan};
use crate::p2p::tracker::Swarm;
use crate::p2p::wire::{PeerAddr, Response};

/// An agent whose last heartbeat (every 3 s) is older than this no longer
/// counts towards the cluster's size when the tracker decides on chains.
const LIVE_HOST: Duration = Duration::from_secs(30);
/// An origin reservation of a piece for one requester expires after this.
const ORIGIN_RESERVATION: Duration = Duration::from_secs(10);

/// The tracker: one swarm per blob.
#[derive(Default)]
pub(super) struct Tracker {
    blobs: HashMap<Digest, BlobSwarm>,
}

struct BlobSwarm {
    swarm: Swarm,
    ids: HashMap<String, u32>,
    peers: HashMap<u32, PeerAddr>,
    origin_reserved: HashMap<usize, Instant>,
    rng: Rng,
    /// Agents streaming the blob one from the next, the first from the
    /// origin.
    chain: Vec<u32>,
    /// With more live agents than a chain holds: the agents asking for
    /// the blob from when the first asked, for `GATHER` or until every
    /// live agent asked.
    gathering: Option<(Instant, Vec<PeerAddr>)>,
    /// The stripe trees the agents gathered stream the blob down, when
    /// they are more than a chain holds.
    stripes: Option<StripeTrees>,
}

/// How long the tracker gathers the agents asking for a blob before it
/// places them (in a chain if they fit one, else in stripe trees), when
/// the cluster is larger than a chain: in a pull by every host they all
/// ask within milliseconds, and a deploy to a few hosts of a large
/// cluster gets a chain of those few rather than a plan over hosts that
/// never ask.
const GATHER: Duration = Duration::from_millis(500);

/// Who streams which stripe of a blob from whom: a plan over the agents
/// live when the first of them asked (by name, so every asker sees the
/// same numbering), and where each listens.
struct StripeTrees {
    plan: Plan,
    hosts: Vec<PeerAddr>,
}

impl StripeTrees {
    /// The parents of `node` in every stripe (None: the origin), and the
    /// shift that deals a blob of `pieces` pieces into the stripes.
    fn answer(&self, node: &str, pieces: usize) -> Option<Response> {
        let me = self.hosts.iter().position(|h| h.name == node)? as u32;
        let parents = (0..self.plan.stripes())
            .map(|k| match self.plan.parent(me, k) {
                ORIGIN => None,
                p => Some(self.hosts[p as usize].clone()),
            })
            .collect();
        Some(Response::Stripes {
            shift: self.plan.shift(pieces),
            parents,
        })
    }
}

impl BlobSwarm {
    fn new(pieces: usize) -> BlobSwarm {
        BlobSwarm {
            swarm: Swarm::new(pieces),
            ids: HashMap::new(),
            peers: HashMap::new(),
            origin_reserved: HashMap::new(),
            rng: Rng::new(pieces as u64),
            chain: Vec::new(),
            gathering: None,
            stripes: None,
        }
    }

    fn id(&mut self, name: &str) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(name.to_string()).or_insert(next)
    }

    /// Whether the origin may send `piece` now (no peer holds it, and no
    /// live reservation for another requester).
    fn origin_may_send(&mut self, piece: usize) -> bool {
        if let Some(t) = self.origin_reserved.get(&piece)
            && t.elapsed() > ORIGIN_RESERVATION
        {
            self.origin_reserved.remove(&piece);
            self.swarm.origin_failed(piece);
        }
        let ok = self.swarm.origin_may_send(piece);
        if ok {
            self.origin_reserved.insert(piece, Instant::now());
        }
        ok
    }
}

impl Inner {
    /// `Register`: agent `node` is alive, listens at `addr`, has `labels`.
    pub(super) fn register(&self, node: String, addr: String, zone: u32, labels: Vec<String>) -> Response {
        if self.tracker.is_none() {
            return Response::Error {
                message: "this node is not the origin".into(),
            };
        }
        let info = HostInfo {
            name: node.clone(),
            addr,
            zone,
            labels,
            seen_seconds_ago: 0.0,
        };
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node, (info, Instant::now()));
        Response::Ok
    }

    /// `Renew`: a certificate with the key of `csr` for `from`, the name
    /// of the certificate the asker connected with.
    pub(super) async fn renew(&self, csr: String, from: &str) -> Response {
        let err = |m: String| Response::Error { message: m };
        let Some(authority) = self.authority.clone() else {
            return err("this node does not renew certificates (strata serve --cluster-ca DIR)".into());
        };
        let from = from.to_string();
        match tokio::task::spawn_blocking(move || crate::p2p::renew::sign(&authority, &from, &csr)).await {
            Ok(Ok(cert)) => Response::Renewed { cert },
            Ok(Err(e)) => err(e.to_string()),
            Err(e) => err(e.to_string()),
        }
    }

    /// `Pieces`: the piece table of a blob in the origin's store.
    pub(super) async fn pieces(self: &Arc<Self>, blob: Digest) -> Response {
        let err = |m: String| Response::Error { message: m };
        if self.tracker.is_none() || !self.store.has(&blob) {
            return err(format!("{blob} is not in this node's store"));
        }
        let node = self.clone();
        match tokio::task::spawn_blocking(move || node.piece_table(&blob)).await {
            Ok(Ok(table)) => Response::Pieces { table },
            Ok(Err(e)) => err(e.to_string()),
            Err(e) => err(e.to_string()),
        }
    }

    /// Whether the origin leaves piece `index` of `blob` to the peers that
    /// hold it: it sends a piece only while no peer holds it. A piece it
    /// may send is reserved for this asker (see `origin_may_send`).
    pub(super) fn leave_to_peers(&self, blob: &Digest, index: usize) -> bool {
        if let Some(t) = &self.tracker
            && self.store.has(blob)
        {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = t.blobs.get_mut(blob)
                && index < s.swarm.pieces()
                && !s.origin_may_send(index)
            {
                return true;
            }
        }
        false
    }

    /// `Announce`: all that `node` holds of `blob`, and where it listens.
    pub(super) fn announce(
        &self,
        blob: &Digest,
        node: String,
        addr: String,
        zone: u32,
        have: Vec<u8>,
    ) -> Response {
        self.track(blob, |s| {
            let id = s.id(&node);
            let pieces = s.swarm.pieces();
            let Some(b) = Bitfield::from_bytes(pieces, &have) else {
                return Response::Error {
                    message: "the bitfield does not fit the blob".into(),
                };
            };
            s.swarm.announce(id, zone, &b);
            s.peers.insert(
                id,
                PeerAddr {
                    name: node,
                    addr,
                    have: None,
                },
            );
            Response::Ok
        })
    }

    /// `Got`: `node` holds piece `index` of `blob`, or is receiving it.
    pub(super) fn got(&self, blob: &Digest, node: String, index: usize) -> Response {
        self.track(blob, |s| {
            let id = s.id(&node);
            if index < s.swarm.pieces() {
                s.swarm.add_piece(id, index);
                s.origin_reserved.remove(&index);
            }
            Response::Ok
        })
    }

    /// `Peers`: up to `want` peers of `blob` for `node`, with what each
    /// holds, and which pieces some peer holds.
    pub(super) fn peers(&self, blob: &Digest, node: String, want: usize) -> Response {
        self.track(blob, |s| {
            let id = s.id(&node);
            let mut rng = s.rng.clone();
            let ids = s.swarm.peers_for(id, want.min(64), &mut rng);
            s.rng = rng;
            // With what each holds: the asker need not ask them all.
            let peers = ids
                .iter()
                .filter_map(|i| {
                    let mut p = s.peers.get(i)?.clone();
                    p.have = s.swarm.have_of(*i).map(Bitfield::to_bytes);
                    Some(p)
                })
                .collect();
            Response::Peers {
                peers,
                seeded: s.swarm.seeded().to_bytes(),
            }
        })
    }

    /// `Gone`: `from` says `peer` failed or misbehaved in the swarm of
    /// `blob`; it is handed out no more.
    pub(super) fn gone(&self, blob: &Digest, peer: String, from: &str) -> Response {
        self.track(blob, |s| {
            // Only a member of the swarm can have met `peer` in it.
            if !s.ids.contains_key(from) {
                tracing::warn!("p2p: `{from}` reported `{peer}` gone from {blob}, a swarm it is not in");
                return Response::Error {
                    message: format!(
                        "`{from}` is not in the swarm of {blob}: it cannot report `{peer}` gone"
                    ),
                };
            }
            tracing::info!("p2p: `{from}` reports `{peer}` gone from {blob}");
            if let Some(&id) = s.ids.get(&peer) {
                s.swarm.remove(id);
                s.peers.remove(&id);
                s.chain.retain(|i| *i != id);
            }
            Response::Ok
        })
    }

    /// `Upstream`: where `node` streams `blob` from in its chain (None:
    /// the origin), placing it at the chain's end. With more live agents
    /// than may chain and an asker that can follow `stripes`, the agents
    /// asking are gathered first (`Busy` meanwhile), then placed: in a
    /// chain if they fit one, else in stripe trees, each told its parent
    /// in every tree. An error when chains are off or full, or the asker
    /// came too late to be placed (it swarms then).
    pub(super) fn upstream(&self, blob: &Digest, node: String, addr: String, stripes: bool) -> Response {
        let max = self.chain_max;
        // A chain takes the origin's whole uplink and every member's,
        // so agents outside it would wait for it to end: one chain only
        // while every live registered agent fits in it, or of the agents
        // gathered.
        let hosts = self
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(_, seen)| seen.elapsed() < LIVE_HOST)
            .count();
        self.track(blob, |s| {
            let id = s.id(&node);
            if max > 0 && stripes && hosts > max && s.chain.is_empty() && s.stripes.is_none() {
                let (since, asking) = s.gathering.get_or_insert_with(|| (Instant::now(), Vec::new()));
                if !asking.iter().any(|p| p.name == node) {
                    asking.push(PeerAddr {
                        name: node.clone(),
                        addr: addr.clone(),
                        have: None,
                    });
                }
                let waited = since.elapsed();
                if waited < GATHER && asking.len() < hosts {
                    return Response::Busy {
                        retry_ms: (GATHER - waited).as_millis().max(1) as u64,
                        message: format!("gathering the agents that fetch {blob}"),
                    };
                }
                let mut gathered = std::mem::take(asking);
                if gathered.len() <= max {
                    // In the order they asked.
                    for p in gathered {
                        let id = s.id(&p.name);
                        s.chain.push(id);
                        s.peers.entry(id).or_insert(p);
                    }
                    tracing::info!(
                        "p2p: {blob}: {} of {hosts} agents fetch it: a chain",
                        s.chain.len()
                    );
                } else {
                    gathered.sort_by(|a, b| a.name.cmp(&b.name));
                    let plan = match Plan::new(gathered.len()) {
                        Ok(plan) => plan,
                        Err(e) => {
                            return Response::Error {
                                message: format!("no stripe plan for {} agents: {e}; swarm", gathered.len()),
                            };
                        }
                    };
                    tracing::info!(
                        "p2p: {blob}: {} of {hosts} agents fetch it, {max} may chain: {} stripes",
                        gathered.len(),
                        plan.stripes()
                    );
                    s.stripes = Some(StripeTrees {
                        plan,
                        hosts: gathered,
                    });
                }
            }
            if let Some(trees) = s.stripes.as_ref().filter(|_| stripes) {
                return trees
                    .answer(&node, s.swarm.pieces())
                    .unwrap_or_else(|| Response::Error {
                        message: format!("{node} asked too late to be in the stripe plan of {blob}; swarm"),
                    });
            }
            let pos = match s.chain.iter().position(|i| *i == id) {
                Some(pos) => pos,
                None if s.chain.len() >= max || hosts > max || s.stripes.is_some() => {
                    return Response::Error {
                        message: format!(
                            "no chain for {node}: {} agents, {max} may chain; swarm",
                            hosts.max(s.chain.len() + 1)
                        ),
                    };
                }
                // At the end: an agent in the middle would give the
                // one before it a second stream to carry (a chain
                // runs at full rate only while every agent feeds
                // one other). Zones count in the swarm, not here.
                None => {
                    s.chain.push(id);
                    s.chain.len() - 1
                }
            };
            s.peers.entry(id).or_insert(PeerAddr {
                name: node,
                addr,
                have: None,
            });
            let peer = pos
                .checked_sub(1)
                .and_then(|p| s.peers.get(&s.chain[p]))
                .map(|p| PeerAddr {
                    have: None,
                    ..p.clone()
                });
            Response::Upstream { peer }
        })
    }

    /// What the tracker knows agent `name` holds: each blob it announced
    /// and the percentage of its pieces (the origin only).
    pub(super) fn host_blobs(&self, name: &str) -> Vec<(Digest, f64)> {
        let Some(t) = &self.tracker else {
            return vec![];
        };
        let t = t.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(Digest, f64)> = t
            .blobs
            .iter()
            .filter_map(|(d, b)| {
                let id = b.ids.get(name)?;
                Some((d.clone(), b.swarm.share_of(*id)? * 100.0))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Runs `f` on the swarm of `blob` (creating it from the piece table
    /// on first use). Only the origin tracks.
    fn track(&self, blob: &Digest, f: impl FnOnce(&mut BlobSwarm) -> Response) -> Response {
        let Some(t) = &self.tracker else {
            return Response::Error {
                message: "this node is not a tracker".into(),
            };
        };
        let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
        let s = match t.blobs.entry(blob.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            // First message about this blob: its piece count, from its
            // size (no hashing under the tracker's lock).
            std::collections::hash_map::Entry::Vacant(e) => match self.store.size(blob) {
                Ok(size) => e.insert(BlobSwarm::new(size.div_ceil(DEFAULT_PIECE) as usize)),
                Err(err) => {
                    return Response::Error {
                        message: err.to_string(),
                    };
                }
            },
        };
        f(s)
    }

    /// The piece table of a blob in the store: made once (and kept in the
    /// store's metadata) however many ask at the same time.
    pub(super) fn piece_table(&self, blob: &Digest) -> Result<PieceTable, crate::store::StoreError> {
        self.tables.get(&self.store, blob, DEFAULT_PIECE)
    }
}
