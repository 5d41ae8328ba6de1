//! Prometheus metrics of this process, in the text exposition format
//! (`GET /metrics` on `strata serve` and on every agent).
//!
//! The counters are process-wide statics, as in Prometheus' own client
//! libraries: the registry, the P2P node and the prewarm jobs bump them
//! where the work happens, and [`render`] writes them all out. Deploy and
//! hotfix figures are not counters of this process: deploys run in the
//! CLI as often as in the server, so the server reads them from the apps'
//! history files when it is scraped ([`render_deploys`]). Nothing here may
//! block or allocate on the hot path: a bump is one relaxed atomic add.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Counter {
        Counter::new()
    }
}

/// Upper bounds (seconds) of the latency buckets: 1 ms to 5 minutes,
/// enough for a manifest GET and for a prewarm of a large image.
pub const BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// A latency histogram over [`BUCKETS`] (plus `+Inf`).
pub struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when
    /// rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HistogramData {
        let mut h = HistogramData::default();
        for (i, b) in self.buckets.iter().enumerate() {
            h.buckets[i] = b.load(Ordering::Relaxed);
        }
        h.count = self.count.load(Ordering::Relaxed);
        h.sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        h
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new()
    }
}

/// A histogram's figures, from live atomics or computed from a history.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HistogramData {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl HistogramData {
    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Registry operations whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryOp {
    BlobGet,
    BlobUpload,
    ManifestGet,
    ManifestPut,
    Other,
}

impl RegistryOp {
    const ALL: [RegistryOp; 5] = [
        RegistryOp::BlobGet,
        RegistryOp::BlobUpload,
        RegistryOp::ManifestGet,
        RegistryOp::ManifestPut,
        RegistryOp::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            RegistryOp::BlobGet => "blob_get",
            RegistryOp::BlobUpload => "blob_upload",
            RegistryOp::ManifestGet => "manifest_get",
            RegistryOp::ManifestPut => "manifest_put",
            RegistryOp::Other => "other",
        }
    }
}

/// Registry request latency (time to the response head; a blob body
/// streams after it), one histogram per operation.
pub static REGISTRY_LATENCY: [Histogram; 5] = [const { Histogram::new() }; 5];
/// Registry responses with a 4xx or 5xx status.
pub static REGISTRY_ERRORS: [Counter; 5] = [const { Counter::new() }; 5];

pub fn registry_request(op: RegistryOp, took: Duration, status: u16) {
    let i = RegistryOp::ALL.iter().position(|o| *o == op).unwrap_or(4);
    REGISTRY_LATENCY[i].observe(took);
    if status >= 400 {
        REGISTRY_ERRORS[i].add(1);
    }
}

/// Piece bytes this node sent to peers over QUIC.
pub static P2P_BYTES_SERVED: Counter = Counter::new();
/// Verified piece bytes this node received from the origin.
pub static P2P_BYTES_FROM_ORIGIN: Counter = Counter::new();
/// Verified piece bytes this node received from other agents.
pub static P2P_BYTES_FROM_PEERS: Counter = Counter::new();
/// Of those, bytes that came down a chain, or down stripe trees (the
/// rest came by the swarm).
pub static P2P_BYTES_CHAINED: Counter = Counter::new();
pub static P2P_BYTES_STRIPED: Counter = Counter::new();
/// Pieces that failed their sha256 on arrival (the sender is banned).
pub static P2P_PIECE_FAILURES: Counter = Counter::new();
/// Whole blobs completed by P2P download (digest verified).
pub static P2P_BLOBS_COMPLETED: Counter = Counter::new();
/// Piece tables made by hashing a blob (not read back from the store).
pub static P2P_PIECE_TABLES_MADE: Counter = Counter::new();

/// zstd layers an agent's mirror transcoded to gzip (each once; later
/// asks find the variant in its store).
pub static MIRROR_GZIP_LAYERS_MADE: Counter = Counter::new();
/// Manifests an agent's mirror answered with a gzip variant.
pub static MIRROR_GZIP_MANIFESTS_SERVED: Counter = Counter::new();
/// Blob responses an agent's mirror cut off before their end: the
/// download failed, or the blob's digest did not match.
pub static MIRROR_BLOBS_CUT_OFF: Counter = Counter::new();

/// Per-host prewarm durations, by outcome.
pub static PREWARM_OK: Histogram = Histogram::new();
pub static PREWARM_FAILED: Histogram = Histogram::new();

fn help(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramData) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (b, n) in BUCKETS.iter().zip(h.buckets) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!("{{{s}}}")
        }
    };
    let _ = writeln!(out, "{name}_sum{} {}", braces(labels), h.sum);
    let _ = writeln!(out, "{name}_count{} {}", braces(labels), h.count);
}

/// Escapes a label value (backslash, quote, newline).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Every counter of this process in the text exposition format.
pub fn render() -> String {
    let mut out = String::new();
    help(
        &mut out,
        "strata_registry_request_seconds",
        "histogram",
        "Registry request latency to the response head, by operation.",
    );
    for (op, h) in RegistryOp::ALL.iter().zip(&REGISTRY_LATENCY) {
        histogram(
            &mut out,
            "strata_registry_request_seconds",
            &format!("op=\"{}\"", op.label()),
            &h.snapshot(),
        );
    }
    help(
        &mut out,
        "strata_registry_errors_total",
        "counter",
        "Registry responses with a 4xx or 5xx status, by operation.",
    );
    for (op, c) in RegistryOp::ALL.iter().zip(&REGISTRY_ERRORS) {
        let _ = writeln!(
            out,
            "strata_registry_errors_total{{op=\"{}\"}} {}",
            op.label(),
            c.get()
        );
    }
    help(
        &mut out,
        "strata_p2p_bytes_served_total",
        "counter",
        "Piece bytes sent to peers over QUIC.",
    );
    let _ = writeln!(out, "strata_p2p_bytes_served_total {}", P2P_BYTES_SERVED.get());
    help(
        &mut out,
        "strata_p2p_bytes_received_total",
        "counter",
        "Verified piece bytes received, by source (origin or peer).",
    );
    let _ = writeln!(
        out,
        "strata_p2p_bytes_received_total{{source=\"origin\"}} {}",
        P2P_BYTES_FROM_ORIGIN.get()
    );
    let _ = writeln!(
        out,
        "strata_p2p_bytes_received_total{{source=\"peer\"}} {}",
        P2P_BYTES_FROM_PEERS.get()
    );
    help(
        &mut out,
        "strata_p2p_bytes_streamed_total",
        "counter",
        "Of the verified piece bytes received, those that came down a chain or stripe trees (the rest: swarm).",
    );
    let _ = writeln!(
        out,
        "strata_p2p_bytes_streamed_total{{how=\"chain\"}} {}",
        P2P_BYTES_CHAINED.get()
    );
    let _ = writeln!(
        out,
        "strata_p2p_bytes_streamed_total{{how=\"stripes\"}} {}",
        P2P_BYTES_STRIPED.get()
    );
    help(
        &mut out,
        "strata_p2p_piece_failures_total",
        "counter",
        "Pieces that failed their sha256 on arrival; the sender was banned.",
    );
    let _ = writeln!(
        out,
        "strata_p2p_piece_failures_total {}",
        P2P_PIECE_FAILURES.get()
    );
    help(
        &mut out,
        "strata_p2p_blobs_completed_total",
        "counter",
        "Blobs downloaded over P2P with a verified digest.",
    );
    let _ = writeln!(
        out,
        "strata_p2p_blobs_completed_total {}",
        P2P_BLOBS_COMPLETED.get()
    );
    help(
        &mut out,
        "strata_p2p_piece_tables_made_total",
        "counter",
        "Piece tables made by hashing a blob (each blob once; later asks read it back).",
    );
    let _ = writeln!(
        out,
        "strata_p2p_piece_tables_made_total {}",
        P2P_PIECE_TABLES_MADE.get()
    );
    help(
        &mut out,
        "strata_mirror_gzip_layers_made_total",
        "counter",
        "zstd layers the agent's mirror transcoded to gzip for engines that cannot read zstd.",
    );
    let _ = writeln!(
        out,
        "strata_mirror_gzip_layers_made_total {}",
        MIRROR_GZIP_LAYERS_MADE.get()
    );
    help(
        &mut out,
        "strata_mirror_gzip_manifests_served_total",
        "counter",
        "Manifests the agent's mirror answered with their gzip variant.",
    );
    let _ = writeln!(
        out,
        "strata_mirror_gzip_manifests_served_total {}",
        MIRROR_GZIP_MANIFESTS_SERVED.get()
    );
    help(
        &mut out,
        "strata_mirror_blobs_cut_off_total",
        "counter",
        "Blob responses the agent's mirror cut off: the download failed, or the blob's digest did not match.",
    );
    let _ = writeln!(
        out,
        "strata_mirror_blobs_cut_off_total {}",
        MIRROR_BLOBS_CUT_OFF.get()
    );
    help(
        &mut out,
        "strata_prewarm_host_seconds",
        "histogram",
        "Time for one host to hold (and optionally load) a prewarmed image, by outcome.",
    );
    histogram(
        &mut out,
        "strata_prewarm_host_seconds",
        "outcome=\"ok\"",
        &PREWARM_OK.snapshot(),
    );
    histogram(
        &mut out,
        "strata_prewarm_host_seconds",
        "outcome=\"failed\"",
        &PREWARM_FAILED.snapshot(),
    );
    out
}

/// One deploy, hotfix or rollback as its app's history records it.
pub struct DeployRecord<'a> {
    pub app: &'a str,
    /// deploy, hotfix, rollback.
    pub action: &'a str,
    /// ok, rolled-back, failed.
    pub outcome: &'a str,
    pub seconds: f64,
}

/// Deploy durations and outcomes, computed from history records.
pub fn render_deploys<'a>(records: impl IntoIterator<Item = DeployRecord<'a>>) -> String {
    let mut by: std::collections::BTreeMap<(String, String, String), HistogramData> = Default::default();
    for r in records {
        by.entry((r.app.to_string(), r.action.to_string(), r.outcome.to_string()))
            .or_default()
            .observe(r.seconds);
    }
    let mut out = String::new();
    help(
        &mut out,
        "strata_deploy_seconds",
        "histogram",
        "Deploys, hotfixes and rollbacks by app, action and outcome (from the apps' history).",
    );
    for ((app, action, outcome), h) in &by {
        histogram(
            &mut out,
            "strata_deploy_seconds",
            &format!(
                "app=\"{}\",action=\"{}\",outcome=\"{}\"",
                label(app),
                label(action),
                label(outcome)
            ),
            h,
        );
    }
    out
}

/// The HTTP response for `GET /metrics`.
pub fn response(body: String) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf() {
        let mut h = HistogramData::default();
        for s in [0.0005, 0.003, 0.003, 7.0, 1000.0] {
            h.observe(s);
        }
        let mut out = String::new();
        histogram(&mut out, "x", "a=\"b\"", &h);
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"5\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"300\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 5\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 1007.0065"), "{out}");
    }

    #[test]
    fn live_histogram_matches_computed_one() {
        let live = Histogram::new();
        let mut computed = HistogramData::default();
        for ms in [1u64, 40, 900, 70_000] {
            live.observe(Duration::from_millis(ms));
            computed.observe(ms as f64 / 1000.0);
        }
        let snap = live.snapshot();
        assert_eq!(snap.buckets, computed.buckets);
        assert_eq!(snap.count, 4);
        assert!((snap.sum - computed.sum).abs() < 1e-9);
    }

    #[test]
    fn deploys_grouped_and_labels_escaped() {
        let recs = [
            DeployRecord {
                app: "shop",
                action: "deploy",
                outcome: "ok",
                seconds: 4.0,
            },
            DeployRecord {
                app: "shop",
                action: "deploy",
                outcome: "ok",
                seconds: 6.0,
            },
            DeployRecord {
                app: "shop",
                action: "hotfix",
                outcome: "ok",
                seconds: 0.3,
            },
            DeployRecord {
                app: "we\"ird",
                action: "deploy",
                outcome: "rolled-back",
                seconds: 9.0,
            },
        ];
        let out = render_deploys(recs);
        assert!(
            out.contains("strata_deploy_seconds_count{app=\"shop\",action=\"deploy\",outcome=\"ok\"} 2\n")
        );
        assert!(
            out.contains("strata_deploy_seconds_sum{app=\"shop\",action=\"hotfix\",outcome=\"ok\"} 0.3\n")
        );
        assert!(out.contains("app=\"we\\\"ird\",action=\"deploy\",outcome=\"rolled-back\""));
    }
}
