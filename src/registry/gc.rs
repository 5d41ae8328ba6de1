//! `strata gc`: mark every blob that a manifest of any repository reaches,
//! then sweep the store's other blobs once they are older than a grace
//! period. The grace period is what makes it safe next to running pushes:
//! a blob uploaded for a manifest that is not pushed yet is young. Upload
//! sessions idle for longer than the upload TTL go too.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::state::{Registry, RegistryError, Result};
use crate::digest::{Algorithm, Digest};

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub manifests: usize,
    pub live_blobs: usize,
    pub swept_blobs: usize,
    pub swept_bytes: u64,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub young_blobs: usize,
    /// Upload sessions idle for longer than the upload TTL.
    pub expired_uploads: usize,
    pub expired_upload_bytes: u64,
    pub dry_run: bool,
}

fn manifests_of(repos: &Path, out: &mut BTreeSet<Digest>) {
    let Ok(rd) = fs::read_dir(repos) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        if e.file_name() == "_manifests" {
            for algo in [Algorithm::Sha256, Algorithm::Sha512] {
                if let Ok(files) = fs::read_dir(p.join(algo.name())) {
                    for f in files.flatten() {
                        if let Ok(d) = Digest::from_hex(algo, &f.file_name().to_string_lossy()) {
                            out.insert(d);
                        }
                    }
                }
            }
        } else if !e.file_name().to_string_lossy().starts_with('_') {
            manifests_of(&p, out);
        }
    }
}

/// Runs a collection over `root` (a `strata serve` data directory).
pub fn collect(root: &Path, grace: Duration, upload_ttl: Duration, dry_run: bool) -> Result<GcReport> {
    let reg = Registry::open(root.to_path_buf())?.with_upload_ttl(upload_ttl);
    let store = reg.store();
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    let now = SystemTime::now();
    let expired = if dry_run {
        reg.expired_uploads(now)?
    } else {
        reg.purge_uploads(now)?
    };
    report.expired_uploads = expired.expired_uploads;
    report.expired_upload_bytes = expired.expired_bytes;
    // Mark: manifests, what they name, and what indexes name, transitively.
    let mut roots = BTreeSet::new();
    manifests_of(&root.join("repos"), &mut roots);
    report.manifests = roots.len();
    let mut live: BTreeSet<Digest> = BTreeSet::new();
    let mut todo: Vec<Digest> = roots.into_iter().collect();
    while let Some(d) = todo.pop() {
        if !live.insert(d.clone()) {
            continue;
        }
        let Ok(bytes) = store.read_blob(&d) else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        let mut refs: Vec<&serde_json::Value> = Vec::new();
        refs.extend(v.get("config"));
        refs.extend(v.get("subject"));
        for key in ["layers", "manifests", "blobs"] {
            if let Some(a) = v.get(key).and_then(|a| a.as_array()) {
                refs.extend(a.iter());
            }
        }
        for r in refs {
            if let Some(child) = r
                .get("digest")
                .and_then(|d| d.as_str())
                .and_then(|d| d.parse().ok())
            {
                todo.push(child);
            }
        }
    }
    report.live_blobs = live.len();
    // Sweep: old, unmarked blobs.
    for algo in [Algorithm::Sha256, Algorithm::Sha512] {
        let dir = store.root().join("blobs").join(algo.name());
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(d) = Digest::from_hex(algo, &e.file_name().to_string_lossy()) else {
                continue;
            };
            if live.contains(&d) {
                continue;
            }
            let Ok(md) = e.metadata() else { continue };
            let age = md
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < grace {
                report.young_blobs += 1;
                continue;
            }
            report.swept_blobs += 1;
            report.swept_bytes += md.len();
            if !dry_run {
                fs::remove_file(e.path()).map_err(|source| RegistryError::Io {
                    path: e.path(),
                    source,
                })?;
            }
        }
    }
    Ok(report)
}
