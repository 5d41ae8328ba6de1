//! Pacing on capped links: pieces leave (and are asked for) one after
//! another on one timeline per direction, like a link shaped by a token
//! bucket, so each piece arrives (and becomes useful to the swarm) as
//! early as possible; an uplink with more than a piece time of work
//! queued says so, and the asker goes elsewhere. No lock is held while
//! waiting for a slot.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Inner;
use crate::p2p::pieces::DEFAULT_PIECE;

/// Piece times of work an uplink queues before it answers "busy".
const UPLINK_QUEUE_PIECES: f64 = 1.0;

impl Inner {
    /// Waits for the slot of a piece of `len` bytes on the capped uplink's
    /// timeline: pieces leave one after another at the capped rate instead
    /// of sharing the link, so each one arrives (and becomes useful to the
    /// swarm) as early as possible.
    pub(super) async fn upload_slot(&self, len: usize) {
        slot(&self.upload_free_at, len, self.upload_rate).await;
    }

    /// Waits for this piece's slot under the download cap, if any.
    pub(super) async fn download_slot(&self) {
        slot(&self.download_free_at, DEFAULT_PIECE as usize, self.download_rate).await;
    }

    /// Whether the uplink already has about a piece's worth of work
    /// queued on its timeline, and if so how long until it has less.
    pub(super) fn uplink_full(&self) -> Option<Duration> {
        let rate = self.upload_rate?;
        let free = *self.upload_free_at.lock().unwrap_or_else(|e| e.into_inner());
        let queued = free.saturating_duration_since(Instant::now());
        let limit = Duration::from_secs_f64(UPLINK_QUEUE_PIECES * DEFAULT_PIECE as f64 / rate);
        (queued > limit).then(|| queued - limit)
    }
}

/// Waits for the slot of `len` bytes on a link capped at `rate` bytes a
/// second (None: no cap), whose timeline is free again at `free`.
async fn slot(free: &Mutex<Instant>, len: usize, rate: Option<f64>) {
    let Some(rate) = rate else { return };
    let start = {
        let mut free = free.lock().unwrap_or_else(|e| e.into_inner());
        let start = (*free).max(Instant::now());
        *free = start + Duration::from_secs_f64(len as f64 / rate);
        start
    };
    tokio::time::sleep_until(start.into()).await;
}
