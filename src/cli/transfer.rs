//! `strata push` and `strata pull`: images between the local store and any
//! OCI registry.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use strata::client::{BlobOutcome, Client, Credential, Event, Options, Reference, Report};
use strata::digest::Digest;
use strata::store::Store;

use super::{StoreArgs, human};

/// How to reach a registry.
#[derive(Debug, clap::Args)]
pub struct RemoteArgs {
    /// Credential: NAME:SECRET (Basic, or for a token endpoint) or a bare
    /// token from `strata token create` (Bearer).
    #[arg(long, env = "STRATA_REGISTRY_AUTH", hide_env_values = true)]
    pub user: Option<String>,
    /// Speak plain HTTP even though the registry is not on loopback
    /// (loopback registries get plain HTTP anyway, as with Docker).
    #[arg(long)]
    pub plain_http: bool,
    /// Accept a TLS certificate that does not verify (test registries only).
    #[arg(long)]
    pub insecure: bool,
    /// Upload blobs larger than this in chunks of this size (MiB); a
    /// dropped connection then costs at most one chunk.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub chunk_mib: u64,
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=32))]
    pub jobs: u64,
    /// Tries per request before giving up (connection errors, 429 and 5xx
    /// are retried with backoff).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub attempts: u32,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl RemoteArgs {
    fn client(&self, r: &Reference) -> Result<Client> {
        let options = Options {
            plain_http: self.plain_http.then_some(true),
            insecure_tls: self.insecure,
            credential: self.user.as_deref().map(Credential::parse),
            chunk_size: self.chunk_mib << 20,
            attempts: self.attempts,
            jobs: self.jobs as usize,
        };
        Ok(Client::new(r, options)?)
    }
}

/// Push an image to an OCI registry.
///
/// IMAGE is a tier or app name in --layout (as `strata build` wrote it),
/// oci:DIR[:NAME], docker-archive:FILE, or a manifest digest in the store.
/// Blobs the registry already has are skipped (HEAD); blobs this machine
/// pushed to another repository of the same registry are mounted, not
/// sent; large blobs go in chunks that resume after a dropped connection.
///
/// Examples:
///   strata push tomcat 127.0.0.1:5000/strata/tomcat:1.0
///   STRATA_REGISTRY_AUTH=$(cat jenkins.token) strata push app registry.test:5000/team/app:42
///   strata push --from strata/tomcat app 127.0.0.1:5000/strata/app:1.0
///   strata push --gzip tomcat 127.0.0.1:5000/strata/tomcat:1.0-gzip   # Docker < 23
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct PushArgs {
    /// The local image.
    pub image: String,
    /// Where to: HOST[:PORT]/REPOSITORY[:TAG].
    pub target: String,
    /// Also try to mount blobs from this repository of the same registry
    /// (repeatable).
    #[arg(long = "from", value_name = "REPOSITORY")]
    pub mount_from: Vec<String>,
    /// Push gzip layers instead of zstd, for Docker engines before 23.0,
    /// which cannot pull zstd layers. Each layer is transcoded once and
    /// cached; the image gets its own (reproducible) manifest digest.
    #[arg(long)]
    pub gzip: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Report on stderr (when another command owns stdout).
    #[arg(skip)]
    pub report_on_stderr: bool,
}

/// Pull an image from an OCI registry into the store and a layout.
///
/// The image lands in the content store (blobs verified against their
/// digests while they stream; what the store has is not fetched again)
/// and is named in --layout, so `strata inspect`, `strata diff` and
/// `strata build` (as a base image: oci:DIR:NAME) can use it.
///
/// Examples:
///   strata pull 127.0.0.1:5000/strata/tomcat:1.0
///   strata pull --name base registry.test:5000/team/base@sha256:…
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct PullArgs {
    /// What: HOST[:PORT]/REPOSITORY[:TAG|@DIGEST].
    pub source: String,
    /// The name in the layout (default: REPOSITORY:TAG).
    #[arg(long)]
    pub name: Option<String>,
    /// For a multi-platform image, which platform.
    #[arg(long, default_value = "linux/amd64")]
    pub platform: String,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub fn push(a: PushArgs) -> Result<()> {
    let target: Reference = a.target.parse()?;
    let store = Store::open(&a.store.store)
        .with_context(|| format!("opening the store at {}", a.store.store.display()))?;
    let mut image = super::images::resolve(&a.store, &store, &a.image)?;
    if a.gzip {
        image.descriptor =
            strata::oci::archive::gzip_image(&store, &image.descriptor, &|what| eprintln!("  {what}"))
                .with_context(|| format!("making the gzip variant of {}", a.image))?;
        image.manifest = store.read_json(&image.descriptor.digest)?;
    }
    let client = a.remote.client(&target)?;
    let total = image.manifest.config.size + image.manifest.layers.iter().map(|l| l.size).sum::<u64>();
    let progress = Progress::new("pushing", total, a.remote.json);
    let started = Instant::now();
    let report = client
        .push(&store, &image.descriptor, &target, &a.mount_from, &|e| {
            progress.event(e)
        })
        .with_context(|| format!("pushing {} to {target}", a.image))?;
    progress.finish();
    if a.report_on_stderr {
        eprintln!(
            "pushed {target} {}: {} bytes transferred",
            report.manifest.digest,
            report.transferred()
        );
        return Ok(());
    }
    summary(
        "pushed",
        &target.to_string(),
        &report,
        started.elapsed(),
        a.remote.json,
    )
}

pub fn pull(a: PullArgs) -> Result<()> {
    let source: Reference = a.source.parse()?;
    let store = Store::open(&a.store.store)
        .with_context(|| format!("opening the store at {}", a.store.store.display()))?;
    let client = a.remote.client(&source)?;
    let progress = Progress::new("pulling", 0, a.remote.json);
    let started = Instant::now();
    let report = client
        .pull(&store, &source, &a.platform, &|e| progress.event(e))
        .with_context(|| format!("pulling {source}"))?;
    progress.finish();
    let name = a.name.clone().unwrap_or_else(|| source.local_name());
    strata::oci::layout::write(
        &a.store.layout,
        &store,
        &[(name.clone(), report.manifest.clone())],
    )
    .with_context(|| format!("writing {} into the layout {}", name, a.store.layout.display()))?;
    if !a.remote.json {
        eprintln!("named {name} in {}", a.store.layout.display());
    }
    summary(
        "pulled",
        &source.to_string(),
        &report,
        started.elapsed(),
        a.remote.json,
    )
}

fn summary(verb: &str, what: &str, r: &Report, took: Duration, json: bool) -> Result<()> {
    let moved = r.count(|o| *o == BlobOutcome::Transferred);
    let present = r.count(|o| *o == BlobOutcome::Present);
    let mounted = r.count(|o| matches!(o, BlobOutcome::Mounted(_)));
    if json {
        let blobs: Vec<_> = r
            .blobs
            .iter()
            .map(|(d, size, o)| {
                let (outcome, from) = match o {
                    BlobOutcome::Present => ("present", None),
                    BlobOutcome::Mounted(f) => ("mounted", Some(f.as_str())),
                    BlobOutcome::Transferred => ("transferred", None),
                };
                serde_json::json!({ "digest": d.to_string(), "size": size, "outcome": outcome, "from": from })
            })
            .collect();
        let v = serde_json::json!({
            "reference": what,
            "manifest": r.manifest,
            "blobs": blobs,
            "bytes_transferred": r.transferred(),
            "seconds": took.as_secs_f64(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{verb} {what} {}: {moved} blob(s) transferred ({}), {present} already there, {mounted} mounted, in {:.1} s",
            r.manifest.digest,
            human(r.transferred()),
            took.as_secs_f64()
        );
    }
    Ok(())
}

/// A byte bar on a terminal; a line per blob (and every few seconds for a
/// long transfer) otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    verb: &'static str,
    quiet: bool,
    /// The total is not known up front (pull): each transfer adds its size.
    grow: bool,
    seen: Mutex<HashMap<Digest, (u64, Instant)>>,
}

impl Progress {
    /// Lines go to stderr even with --json (stdout carries the JSON).
    fn new(verb: &'static str, total: u64, json: bool) -> Progress {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            b.set_prefix(verb);
            b
        });
        Progress {
            bar,
            verb,
            quiet: false,
            grow: total == 0,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn event(&self, e: Event) {
        let line = |s: String| match &self.bar {
            Some(b) => b.println(s),
            None if !self.quiet => eprintln!("{s}"),
            None => {}
        };
        match e {
            Event::Bytes { digest, done, total } => {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                let first = !seen.contains_key(&digest);
                let (before, last_line) = seen.entry(digest.clone()).or_insert((0, Instant::now()));
                if let Some(b) = &self.bar {
                    if first && self.grow {
                        b.inc_length(total);
                    }
                    b.inc(done.saturating_sub(*before));
                } else if !self.quiet && last_line.elapsed() > Duration::from_secs(5) && done < total {
                    *last_line = Instant::now();
                    eprintln!("  {} {} of {}", digest.short(), human(done), human(total));
                }
                *before = done.max(*before);
            }
            Event::Blob {
                digest,
                role,
                size,
                outcome,
                elapsed,
            } => {
                let how = match &outcome {
                    BlobOutcome::Present => "already there".to_string(),
                    BlobOutcome::Mounted(from) => format!("mounted from {from}"),
                    BlobOutcome::Transferred => format!("{} in {:.1} s", self.verb, elapsed.as_secs_f64()),
                };
                if let Some(b) = &self.bar
                    && outcome != BlobOutcome::Transferred
                    && !self.grow
                {
                    b.inc(size);
                }
                line(format!("  {role:6} {} {:>9}  {how}", digest.short(), human(size)));
            }
            Event::Retry {
                what,
                attempt,
                reason,
            } => {
                line(format!("  retrying {what} (failure {attempt}): {reason}"));
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
