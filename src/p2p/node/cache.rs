//! The cache of complete blobs (agents with watermarks): least recently
//! used blobs go while the store is over its high watermark, down to the
//! low one. A blob being read for a peer (`InUse`) or being downloaded is
//! never evicted.

use super::Inner;
use crate::digest::Digest;

impl Inner {
    /// Evicts least recently used complete blobs while the cache is over
    /// its high watermark, down to the low one; never a blob in use.
    pub(super) fn evict(&self) -> Vec<Digest> {
        let Some((high, low)) = self.cache else {
            return Vec::new();
        };
        let mut blobs = Vec::new();
        for alg in ["sha256", "sha512"] {
            let Ok(rd) = std::fs::read_dir(self.store.root().join("blobs").join(alg)) else {
                continue;
            };
            for e in rd.flatten() {
                let (Ok(md), Ok(d)) = (
                    e.metadata(),
                    format!("{alg}:{}", e.file_name().to_string_lossy()).parse::<Digest>(),
                ) else {
                    continue;
                };
                let used = md.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                blobs.push((used, md.len(), d));
            }
        }
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        if total <= high {
            return Vec::new();
        }
        blobs.sort();
        let mut evicted = Vec::new();
        for (_, size, d) in blobs {
            if total <= low {
                break;
            }
            let busy = self
                .in_use
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&d)
                || self
                    .partials
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&d);
            if busy {
                continue;
            }
            if std::fs::remove_file(self.store.blob_path(&d)).is_ok() {
                total -= size;
                tracing::info!("p2p: evicted {d} ({size} bytes)");
                evicted.push(d);
            }
        }
        evicted
    }
}

/// Marks a blob in use for as long as it lives.
pub(super) struct InUse<'a> {
    node: &'a Inner,
    blob: Digest,
}

impl<'a> InUse<'a> {
    pub(super) fn new(node: &'a Inner, blob: &Digest) -> InUse<'a> {
        *node
            .in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(blob.clone())
            .or_insert(0) += 1;
        InUse {
            node,
            blob: blob.clone(),
        }
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut map = self.node.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.blob) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.blob);
            }
        }
    }
}
