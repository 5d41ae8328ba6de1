//! Following a download piece by piece: the mirror sends a blob to its
//! client as the pieces come in, each only once it was verified and
//! written (read back from the download's partial file, whose handle
//! stays valid when the file is renamed into the store or evicted).
//! Following never starts a second download of a blob, and never reads a
//! piece that has not passed its hash; the whole blob's verdict is the
//! download's (`done`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::fetch::{Stage, fetch_err};
use super::{Inner, Result};
use crate::digest::Digest;
use crate::p2p::pieces::{Partial, PieceTable};

/// A download of one blob as it goes (see [`Node::follow`](super::Node::follow)).
pub struct Following {
    node: Arc<Inner>,
    blob: Digest,
    stage: watch::Receiver<Stage>,
    /// Where the pieces are, once the download has its piece table.
    partial: Option<Arc<Mutex<Partial>>>,
}

impl Inner {
    /// Follows the download of `blob` from the swarm at `origin`, starting
    /// it (on a task of its own, so it ends even when no one follows any
    /// more) unless one runs.
    pub(super) fn following(self: &Arc<Self>, origin: SocketAddr, blob: &Digest) -> Following {
        let stage = match self.claim(blob) {
            Err(running) => running,
            Ok(claim) => {
                let watching = claim.follow();
                let node = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = node.fetch_claimed(origin, claim).await {
                        tracing::warn!("p2p: {e}");
                    }
                });
                watching
            }
        };
        Following {
            node: self.clone(),
            blob: blob.clone(),
            stage,
            partial: None,
        }
    }
}

impl Following {
    /// The blob's piece table once the download has it; `None` when the
    /// blob is whole in the store (read it there).
    pub async fn table(&mut self) -> Result<Option<PieceTable>> {
        let stage = self
            .stage
            .wait_for(|s| !matches!(s, Stage::Starting))
            .await
            .map(|s| s.clone())
            .unwrap_or_else(|_| Stage::Failed("the download ended".into()));
        match stage {
            Stage::Arriving(p) => {
                let table = p.lock().unwrap_or_else(|e| e.into_inner()).table.clone();
                self.partial = Some(p);
                Ok(Some(table))
            }
            Stage::Done => Ok(None),
            Stage::Failed(why) => Err(fetch_err(&self.blob, why)),
            Stage::Starting => Err(fetch_err(&self.blob, "the download never started")),
        }
    }

    /// Waits for the download to end: `Ok` once the blob is in the store
    /// (adopted only after its whole digest, computed as the pieces came,
    /// matched), the error when it failed (a wrong whole digest among
    /// other reasons).
    pub async fn done(&mut self) -> Result<()> {
        let stage = self
            .stage
            .wait_for(Stage::ended)
            .await
            .map(|s| s.clone())
            .unwrap_or_else(|_| Stage::Failed("the download vanished".into()));
        match stage {
            Stage::Done => Ok(()),
            Stage::Failed(why) => Err(fetch_err(&self.blob, why)),
            Stage::Starting | Stage::Arriving(_) => Err(fetch_err(&self.blob, "the download never ended")),
        }
    }

    /// Piece `i`, once it is here and passed its hash; an error when the
    /// download fails first. Call [`table`](Self::table) first.
    pub async fn piece(&mut self, i: usize) -> Result<Vec<u8>> {
        let Some(partial) = self.partial.clone() else {
            return Err(fetch_err(&self.blob, "its piece table is not known yet"));
        };
        loop {
            // Listening before looking: a piece written in between still wakes this.
            let news = self.node.news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            let here = partial.lock().unwrap_or_else(|e| e.into_inner()).have().get(i);
            if here {
                let p = partial.clone();
                return tokio::task::spawn_blocking(move || {
                    p.lock().unwrap_or_else(|e| e.into_inner()).read_piece(i)
                })
                .await
                .map_err(|e| fetch_err(&self.blob, e))?
                .map_err(Into::into);
            }
            match &*self.stage.borrow_and_update() {
                Stage::Failed(why) => return Err(fetch_err(&self.blob, why)),
                Stage::Done => return Err(fetch_err(&self.blob, format!("piece {i} never came"))),
                Stage::Starting | Stage::Arriving(_) => {}
            }
            tokio::select! {
                _ = &mut news => {}
                changed = self.stage.changed() => {
                    if changed.is_err() && !self.stage.borrow().ended() {
                        return Err(fetch_err(&self.blob, "the download vanished"));
                    }
                }
            }
        }
    }
}
