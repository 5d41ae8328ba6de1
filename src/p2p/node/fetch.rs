//! Fetching a blob: one download per blob however many callers ask, from
//! the origin's piece table through a `Partial` on disk to the store (by
//! rename, while the blob is still served as a partial, so a peer never
//! finds it held nowhere), then eviction. Also taking a piece off a
//! stream (listed as arriving from its first byte, so it is forwarded
//! cut-through) and writing it once its hash passed, for the chain and
//! the swarm alike.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use super::chain::ChainProgress;
use super::{Inner, NodeError, Result};
use crate::digest::Digest;
use crate::p2p::pieces::Partial;
use crate::p2p::relay::Arriving;
use crate::p2p::wire::{Request, Response};

/// What a fetch did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FetchReport {
    pub pieces: usize,
    /// Verified pieces found on disk from an earlier run.
    pub resumed: usize,
    pub from_origin: usize,
    pub from_peers: usize,
    /// Peers banned for a piece that failed its hash.
    pub banned: Vec<String>,
    /// Blobs evicted from the cache afterwards (least recently used).
    pub evicted: Vec<String>,
    pub seconds: f64,
}

pub(super) fn fetch_err(blob: &Digest, why: impl std::fmt::Display) -> NodeError {
    NodeError::Fetch {
        blob: blob.clone(),
        why: why.to_string(),
    }
}

/// A piece this node is receiving, listed in `Inner::arriving` while the
/// value lives: peers asking for it get its bytes as they come in. Ends
/// the piece as failed if it is dropped before it was verified.
pub(super) struct Receiving {
    node: Arc<Inner>,
    key: (Digest, usize),
    piece: Arc<Arriving>,
}

impl Receiving {
    /// Lists the piece as arriving, unless it already is (a duplicate).
    fn start(node: &Arc<Inner>, blob: &Digest, index: usize, len: usize) -> Option<Receiving> {
        let key = (blob.clone(), index);
        let piece = Arc::new(Arriving::new(len));
        let mut map = node.arriving.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&key) {
            return None;
        }
        map.insert(key.clone(), piece.clone());
        node.news.notify_waiters();
        Some(Receiving {
            node: node.clone(),
            key,
            piece,
        })
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.piece.end(false);
        let mut map = self.node.arriving.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.key).is_some_and(|p| Arc::ptr_eq(p, &self.piece)) {
            map.remove(&self.key);
        }
    }
}

/// How a download stands, for those who follow it (the mirror streams a
/// blob to its client as the pieces come).
#[derive(Clone)]
pub(super) enum Stage {
    /// Asking the origin for the piece table.
    Starting,
    /// The pieces arrive into this partial, each written once verified.
    Arriving(Arc<Mutex<Partial>>),
    /// The blob is in the store.
    Done,
    Failed(String),
}

impl Stage {
    pub(super) fn ended(&self) -> bool {
        matches!(self, Stage::Done | Stage::Failed(_))
    }
}

/// The one download of a blob, listed in `Inner::fetching` while the
/// value lives; those waiting for it or following it watch its stage.
/// Dropped before it ended (its task cancelled), it ends as failed.
pub(super) struct Claim {
    node: Arc<Inner>,
    blob: Digest,
    stage: watch::Sender<Stage>,
}

impl Claim {
    pub(super) fn follow(&self) -> watch::Receiver<Stage> {
        self.stage.subscribe()
    }

    /// Ends the download unless it ended: out of the list first (a waiter
    /// that sees the end claims anew), then its watchers told.
    fn end(&self, stage: Stage) {
        let mine = self.stage.subscribe();
        let mut fetching = self.node.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if fetching.get(&self.blob).is_some_and(|w| w.same_channel(&mine)) {
            fetching.remove(&self.blob);
        }
        drop(fetching);
        self.stage.send_if_modified(|s| {
            let now = !s.ended();
            if now {
                *s = stage;
            }
            now
        });
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.end(Stage::Failed("the download was cancelled".into()));
    }
}

impl Inner {
    /// Claims the download of `blob`, or (`Err`) watches the one running.
    pub(super) fn claim(self: &Arc<Self>, blob: &Digest) -> Result<Claim, watch::Receiver<Stage>> {
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = fetching.get(blob) {
            return Err(running.clone());
        }
        let (stage, watching) = watch::channel(Stage::Starting);
        fetching.insert(blob.clone(), watching);
        Ok(Claim {
            node: self.clone(),
            blob: blob.clone(),
            stage,
        })
    }

    pub(super) async fn fetch(self: Arc<Self>, origin: SocketAddr, blob: &Digest) -> Result<FetchReport> {
        // One download per blob: a second caller (the mirror and a prewarm
        // at once) waits for the first instead of sharing its partial
        // file, and tries again itself if that one failed.
        loop {
            if self.store.has(blob) {
                return Ok(FetchReport::default());
            }
            match self.claim(blob) {
                Ok(claim) => return self.fetch_claimed(origin, claim).await,
                Err(mut running) => {
                    let ended = running.wait_for(Stage::ended);
                    if tokio::time::timeout(Duration::from_secs(3600), ended)
                        .await
                        .is_err()
                    {
                        return Err(fetch_err(
                            blob,
                            "another download of it did not end within an hour",
                        ));
                    }
                }
            }
        }
    }

    /// Runs the download `claim` holds, and tells its followers how it ended.
    pub(super) async fn fetch_claimed(
        self: Arc<Self>,
        origin: SocketAddr,
        claim: Claim,
    ) -> Result<FetchReport> {
        let result = if self.store.has(&claim.blob) {
            // Another download ended between the caller's look and its claim.
            Ok(FetchReport::default())
        } else {
            self.clone().download_claimed(origin, &claim).await
        };
        claim.end(match &result {
            Ok(_) => Stage::Done,
            Err(e) => Stage::Failed(e.to_string()),
        });
        result
    }

    async fn download_claimed(self: Arc<Self>, origin: SocketAddr, claim: &Claim) -> Result<FetchReport> {
        let (blob, started) = (&claim.blob, Instant::now());
        let table = match self
            .request(origin, &Request::Pieces { blob: blob.clone() })
            .await?
        {
            (Response::Pieces { table }, _) if table.digest == *blob && table.is_consistent() => table,
            (Response::Error { message }, _) => {
                return Err(NodeError::NoTable {
                    blob: blob.clone(),
                    why: message,
                });
            }
            (other, _) => {
                return Err(NodeError::NoTable {
                    blob: blob.clone(),
                    why: format!("unexpected answer {other:?}"),
                });
            }
        };
        let n = table.count();
        tracing::debug!(
            "p2p: {blob}: piece table after {:.3} s",
            started.elapsed().as_secs_f64()
        );
        let dir = self.partial_dir.clone();
        let partial = tokio::task::spawn_blocking(move || Partial::open(&dir, table))
            .await
            .map_err(|e| fetch_err(blob, e))??;
        let mut report = FetchReport {
            pieces: n,
            resumed: partial.have().count(),
            ..Default::default()
        };
        let partial = Arc::new(Mutex::new(partial));
        self.partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(blob.clone(), partial.clone());
        claim.stage.send_replace(Stage::Arriving(partial.clone()));
        tracing::debug!(
            "p2p: {blob}: partial open after {:.3} s",
            started.elapsed().as_secs_f64()
        );
        let mut result = self.download(origin, blob, &partial, &mut report).await;
        tracing::debug!(
            "p2p: {blob}: downloaded after {:.3} s",
            started.elapsed().as_secs_f64()
        );
        if result.is_ok() {
            // Into the store while still registered as a partial: peers
            // asking for pieces never find the blob held nowhere.
            let (p, store) = (partial.clone(), self.store.clone());
            result = tokio::task::spawn_blocking(move || {
                p.lock().unwrap_or_else(|e| e.into_inner()).finish(&store)
            })
            .await
            .map_err(|e| fetch_err(blob, e))
            .and_then(|r| r.map_err(NodeError::from));
        }
        self.partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(blob);
        if result.is_ok() {
            let node = self.clone();
            let evicted = tokio::task::spawn_blocking(move || node.evict())
                .await
                .map_err(|e| fetch_err(blob, e))?;
            report.evicted = evicted.iter().map(|d| d.to_string()).collect();
            crate::metrics::P2P_BLOBS_COMPLETED.add(1);
        }
        report.seconds = started.elapsed().as_secs_f64();
        result.map(|_| report)
    }

    /// Takes the `len` bytes of piece `index` of `blob` off `recv`, listed
    /// among the arriving pieces as they come (unless the piece already
    /// is: a duplicate), the tracker told at the first byte; `moved` runs
    /// for every chunk. The piece comes as the chunks quinn hands out,
    /// shared (not copied) with the forwards of it. `Err(None)`: the
    /// stream ended early.
    pub(super) async fn take_piece(
        self: &Arc<Self>,
        origin: SocketAddr,
        blob: &Digest,
        index: usize,
        len: usize,
        recv: &mut quinn::RecvStream,
        moved: impl Fn(),
    ) -> Result<(Vec<Bytes>, Option<Receiving>), Option<quinn::ReadError>> {
        let receiving = Receiving::start(self, blob, index, len);
        if receiving.is_some() {
            self.tell(
                origin,
                Request::Got {
                    blob: blob.clone(),
                    node: self.name.clone(),
                    index,
                },
            )
            .await;
        }
        let (mut parts, mut got) = (Vec::new(), 0);
        while got < len {
            let c = recv.read_chunk(len - got, true).await?.ok_or(None)?;
            got += c.bytes.len();
            if let Some(r) = &receiving {
                r.piece.push(c.bytes.clone());
            }
            parts.push(c.bytes);
            moved();
        }
        Ok((parts, receiving))
    }

    /// Writes a piece that came (checking its hash) unless it is already
    /// here (`Ok(false)`: a duplicate); once written, forwards of it may
    /// send its last byte. Fails with `InvalidData` for a bad piece. With
    /// `counted` (a chain's progress, and whether the piece came from the
    /// origin), the piece is counted as it is written.
    pub(super) async fn write_taken(
        &self,
        partial: &Arc<Mutex<Partial>>,
        index: usize,
        parts: Vec<Bytes>,
        receiving: Option<Receiving>,
        counted: Option<(Arc<ChainProgress>, bool)>,
    ) -> std::io::Result<bool> {
        let p = partial.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            if p.have().get(index) {
                return Ok::<bool, std::io::Error>(false);
            }
            p.write_piece(index, &parts)?;
            if let Some((chain, from_origin)) = counted {
                let len = parts.iter().map(Bytes::len).sum::<usize>() as u64;
                if chain.striped.load(Ordering::Relaxed) {
                    crate::metrics::P2P_BYTES_STRIPED.add(len);
                } else {
                    crate::metrics::P2P_BYTES_CHAINED.add(len);
                }
                if from_origin {
                    chain.from_origin.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::P2P_BYTES_FROM_ORIGIN.add(len);
                } else {
                    chain.from_peers.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::P2P_BYTES_FROM_PEERS.add(len);
                }
            }
            Ok(true)
        })
        .await
        .map_err(std::io::Error::other)??;
        if written {
            if let Some(r) = &receiving {
                r.piece.end(true);
            }
            drop(receiving);
            self.news.notify_waiters();
        }
        Ok(written)
    }
}
