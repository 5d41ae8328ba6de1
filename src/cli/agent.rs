//! `strata agent` and `strata cluster`: the P2P side of a host.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use strata::digest::Digest;
use strata::p2p::node::{Node, NodeConfig};
use strata::p2p::register;
use strata::p2p::tls::Identity;
use strata::p2p::transcode::EngineGzip;
use strata::p2p::wire::Request;
use strata::store::Store;

/// Run a host's P2P agent: fetch and serve blobs piece by piece.
///
/// Pieces come from peers first, the origin only as a last resort, and
/// the agent serves what it holds to others.
///
/// All traffic is QUIC with mutual TLS: the agent presents
/// CERTS/NAME.pem and trusts only peers signed by CERTS/ca.pem (make them
/// with `strata cluster issue NAME`). Pieces are verified on arrival and
/// the whole blob at the end; a peer that sends a bad piece is banned; a
/// restarted agent resumes from the verified pieces on disk. The agent
/// keeps serving until stopped.
///
/// Examples:
///   strata agent --name host-7 --certs /etc/strata/p2p --origin 10.0.0.1:5001
///   strata agent --name host-7 --certs certs --origin 127.0.0.1:5001 --fetch sha256:…
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// This host's name in the cluster (its certificate's name).
    #[arg(long)]
    pub name: String,
    /// Directory with NAME.pem, NAME.key and ca.pem.
    #[arg(long)]
    pub certs: PathBuf,
    /// The origin's P2P address (`strata serve --p2p-listen`).
    #[arg(long)]
    pub origin: SocketAddr,
    /// UDP address to serve peers on.
    #[arg(long, default_value = "0.0.0.0:5001")]
    pub listen: SocketAddr,
    /// The agent's cache (blobs and partial downloads).
    #[arg(long, env = "STRATA_AGENT_DATA", default_value = "strata-agent")]
    pub data: PathBuf,
    /// Zone (rack) label: peers in the same zone are preferred.
    #[arg(long, default_value_t = 0)]
    pub zone: u32,
    /// Blobs to fetch at start (repeatable); each prints a JSON line when done.
    #[arg(long)]
    pub fetch: Vec<Digest>,
    /// The origin registry's URL (`strata serve`), e.g. http://10.0.0.1:5000:
    /// with it the agent runs a read-only registry on --mirror-listen that
    /// the local engine pulls through (`docker pull 127.0.0.1:5002/app:1`).
    #[arg(long)]
    pub registry: Option<String>,
    /// Where the pull-through registry listens (loopback by default).
    #[arg(long, default_value = "127.0.0.1:5002")]
    pub mirror_listen: SocketAddr,
    /// The address the local engine reaches the pull-through registry at,
    /// when it is not --mirror-listen (an agent in a container with its
    /// port published on the host: `127.0.0.1:5101`). Used by `prewarm
    /// --load`.
    #[arg(long)]
    pub mirror_advertise: Option<SocketAddr>,
    /// Join the cluster with this token when --certs has no certificate
    /// for --name yet: a key is made here, the server (--registry URL)
    /// signs it. See `strata cluster token`.
    #[arg(
        long,
        env = "STRATA_JOIN_TOKEN",
        hide_env_values = true,
        requires = "registry"
    )]
    pub join: Option<String>,
    /// Labels for prewarm targeting, KEY=VALUE (repeatable), e.g. rack=a.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Evict least recently used blobs when the cache grows past this (MiB).
    #[arg(long)]
    pub cache_high_mib: Option<u64>,
    /// ... down to this (MiB; default 80 % of the high watermark).
    #[arg(long, requires = "cache_high_mib")]
    pub cache_low_mib: Option<u64>,
    /// Cap on what this agent downloads, Mbit/s (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub download_mbit: f64,
    /// Cap on what this agent uploads to peers, Mbit/s (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub upload_mbit: f64,
    /// Exit with an error when the origin has not accepted this agent's
    /// registration within this long (s, m, h), so a supervisor restarts
    /// it and people see it; a certificate the origin refuses is reported
    /// at once. 0: keep trying for ever.
    #[arg(long, default_value = "60s", value_parser = strata::registry::config::parse_duration)]
    pub register_timeout: std::time::Duration,
    /// Which clients of the pull-through registry get gzip variants of
    /// zstd images: `auto`, Docker engines before 23.0 (API 1.42), which
    /// cannot read zstd layers, known by the version in their User-Agent;
    /// `always`, every client; `never`, none. A variant is made here from
    /// the zstd blobs the swarm brought, once, with the digests `strata
    /// push --gzip` gives. A pull by digest of a zstd manifest by such a
    /// client is refused, naming the variant's digest.
    #[arg(long, default_value = "auto", value_parser = parse_engine_gzip)]
    pub engine_gzip: EngineGzip,
    /// Serve Prometheus metrics (`GET /metrics`) on this TCP address too;
    /// the pull-through registry (--registry) always serves them.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Threads that move pieces (0: one per core). `--threads 1` runs the
    /// agent on one thread: no wake-ups between threads, about 5 % less
    /// CPU per byte in benches/fanout.sh, for hosts where the agent's CPU
    /// is taken from the applications; more threads keep up with faster
    /// links (a single thread moves a few hundred MB/s at most).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

pub fn run(a: Args) -> Result<()> {
    if let (Some(h), Some(l)) = (a.cache_high_mib, a.cache_low_mib) {
        anyhow::ensure!(
            l < h,
            "--cache-low-mib ({l}) must be below --cache-high-mib ({h})"
        );
    }
    if let Some(token) = &a.join
        && !a.certs.join(format!("{}.pem", a.name)).is_file()
    {
        join(&a, token)?;
    }
    let identity = Identity::from_dir(&a.certs, &a.name).with_context(|| {
        format!(
            "loading the certificate of `{}` (strata cluster issue {})",
            a.name, a.name
        )
    })?;
    let store = Store::open(a.data.join("store"))?;
    let rt = match a.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    rt.block_on(async {
        let node = Node::start(NodeConfig {
            name: a.name.clone(),
            zone: a.zone,
            listen: a.listen,
            store,
            partial_dir: a.data.join("partial"),
            origin: false,
            identity,
            upload_rate: Some(a.upload_mbit * 1e6 / 8.0),
            download_rate: Some(a.download_mbit * 1e6 / 8.0),
            cache: a
                .cache_high_mib
                .map(|h| (h << 20, a.cache_low_mib.unwrap_or(h * 8 / 10) << 20)),
            chain_max: 0,
            revoked: None,
            authority: None,
        })
        .await?;
        println!("p2p listening on {}", node.local_addr());
        let node = std::sync::Arc::new(node);
        if let Some(upstream) = &a.registry {
            let mirror = std::sync::Arc::new(strata::p2p::mirror::Mirror::new(
                node.clone(),
                a.origin,
                upstream,
                Store::open(a.data.join("store"))?,
                a.engine_gzip,
            ));
            let listener = tokio::net::TcpListener::bind(a.mirror_listen)
                .await
                .with_context(|| format!("binding the pull-through registry on {}", a.mirror_listen))?;
            let mirror_addr = listener.local_addr()?;
            println!("mirror listening on http://{mirror_addr}");
            node.set_agent(strata::p2p::node::AgentSide {
                origin: a.origin,
                upstream: upstream.trim_end_matches('/').to_string(),
                mirror: Some(a.mirror_advertise.unwrap_or(mirror_addr)),
            });
            let routes = strata::p2p::mirror::router(mirror).merge(strata::api::metrics_router());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, routes).await {
                    eprintln!("strata agent: pull-through registry: {e}");
                }
            });
        }
        if let Some(addr) = a.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint on {addr}"))?;
            println!("metrics on http://{}/metrics", listener.local_addr()?);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, strata::api::metrics_router()).await {
                    eprintln!("strata agent: metrics endpoint: {e}");
                }
            });
        }
        let (status, registered) =
            tokio::sync::watch::channel(register::Status::Pending("not tried yet".into()));
        let registering = tokio::spawn(register::keep_registered(
            node.clone(),
            a.origin,
            Request::Register {
                node: a.name.clone(),
                addr: node.local_addr().to_string(),
                zone: a.zone,
                labels: a.labels.clone(),
            },
            a.certs.clone(),
            status,
        ));
        // Not let in within the bound: exit with the reason (the error was
        // logged the moment it was known).
        let limit = (!a.register_timeout.is_zero()).then_some(a.register_timeout);
        let (origin, timeout) = (a.origin, a.register_timeout);
        let watchdog = async move {
            match register::wait_registered(registered, limit).await {
                Ok(()) => std::future::pending::<Result<()>>().await,
                Err(why) => Err(anyhow::anyhow!(
                    "not registered with the origin at {origin} within {}: {why}",
                    humantime(timeout)
                )),
            }
        };
        let r = tokio::select! {
            r = serve_agent(&a, &node) => r,
            r = watchdog => r,
        };
        registering.abort();
        node.close();
        r
    })
}

fn parse_engine_gzip(s: &str) -> Result<EngineGzip, String> {
    s.parse()
}

/// `90s`, `5m`, `2h`, `7d`: a duration as the flags take it.
fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86400 && s % 86400 == 0 => format!("{}d", s / 86400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The agent's work once it runs: the `--fetch` blobs, then serving
/// until stopped.
async fn serve_agent(a: &Args, node: &std::sync::Arc<Node>) -> Result<()> {
    std::io::stdout().flush()?;
    let mut fetches = tokio::task::JoinSet::new();
    for blob in a.fetch.clone() {
        let node = node.clone();
        let origin = a.origin;
        fetches.spawn(async move { (blob.clone(), node.fetch(origin, &blob).await) });
    }
    let mut failed = false;
    while let Some(done) = fetches.join_next().await {
        let (blob, r) = done?;
        match r {
            Ok(report) => {
                let line = serde_json::json!({ "complete": blob.to_string(), "report": report });
                println!("{line}");
                std::io::stdout().flush()?;
            }
            Err(e) => {
                eprintln!("strata agent: {e}");
                failed = true;
            }
        }
    }
    if failed {
        anyhow::bail!("some fetches failed");
    }
    super::serve::wait_for_shutdown().await;
    Ok(())
}

/// Manage the cluster CA and node certificates for P2P traffic.
///
/// Examples:
///   strata cluster init --dir /var/lib/strata/cluster
///   strata cluster issue host-7 --dir /var/lib/strata/cluster --out host-7-certs
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub what: Cluster,
}

#[derive(Debug, clap::Subcommand)]
pub enum Cluster {
    /// Create the cluster CA (ca.pem, ca.key) in --dir; refuses to replace one.
    Init {
        #[arg(long, default_value = "strata-data/cluster")]
        dir: PathBuf,
    },
    /// Create a join token: an agent started with `--join TOKEN` gets its
    /// certificate from the server (`strata serve --cluster-ca DIR`); its
    /// private key never leaves the host. Only the token's hash is kept.
    Token {
        #[arg(long, default_value = "strata-data/cluster")]
        dir: PathBuf,
        /// How long the token is valid (s, m, h, d). [default: 1h]
        #[arg(long, value_parser = strata::registry::config::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// How many agents may join with it. [default: any number]
        #[arg(long)]
        uses: Option<u32>,
    },
    /// Revoke node NAME: the origin (`strata serve --data DATA`) refuses
    /// its certificates from now on, in the handshake and on connections
    /// already open, and the name can no longer join or renew. Kept in
    /// DATA/revoked-nodes; a running server sees it at once.
    Revoke {
        name: String,
        /// The origin's data directory.
        #[arg(long, env = "STRATA_DATA", default_value = "strata-data")]
        data: PathBuf,
    },
    /// Issue a certificate for node NAME (`origin` for the server) into
    /// --out: NAME.pem, NAME.key (0600) and ca.pem.
    Issue {
        name: String,
        #[arg(long, default_value = "strata-data/cluster")]
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// How long the certificate is valid (s, m, h, d); an agent renews
        /// it through the origin when a third is left.
        #[arg(long, default_value = "365d", value_parser = strata::registry::config::parse_duration)]
        lifetime: std::time::Duration,
    },
}

pub fn cluster(a: ClusterArgs) -> Result<()> {
    match a.what {
        Cluster::Init { dir } => {
            let p = strata::p2p::tls::init_ca(&dir)?;
            println!("{}", p.display());
            eprintln!("cluster CA created; keep {} secret", dir.join("ca.key").display());
        }
        Cluster::Token { dir, ttl, uses } => {
            let ttl = ttl.unwrap_or(strata::p2p::tokens::DEFAULT_TTL);
            anyhow::ensure!(uses != Some(0), "--uses 0 would make a token nobody can use");
            let t = strata::p2p::tokens::create(&dir, ttl, uses)?;
            println!("{t}");
            let uses = uses.map_or("any number of".to_string(), |u| u.to_string());
            eprintln!(
                "join token created (shown once), valid for {} and {uses} joins; agents: strata agent --join TOKEN --registry URL …",
                humantime(ttl)
            );
        }
        Cluster::Revoke { name, data } => {
            if strata::p2p::revoke::revoke(&data, &name)? {
                eprintln!(
                    "revoked `{name}`: the origin with data in {} refuses its certificates from now on",
                    data.display()
                );
            } else {
                eprintln!("`{name}` was already revoked");
            }
        }
        Cluster::Issue {
            name,
            dir,
            out,
            lifetime,
        } => {
            anyhow::ensure!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
                "node name `{name}` must be letters, digits, '.', '_' or '-'"
            );
            let (c, k) = strata::p2p::tls::issue(&dir, &name, &out, lifetime)?;
            println!("{}\n{}", c.display(), k.display());
        }
    }
    Ok(())
}

/// Gets this agent's certificate from the server with a join token.
fn join(a: &Args, token: &str) -> Result<()> {
    let server = a
        .registry
        .as_deref()
        .context("--join needs --registry URL (the server)")?;
    let (key, csr) = strata::p2p::tls::make_csr(&a.name)?;
    let body = serde_json::json!({ "name": a.name, "token": token, "csr": csr });
    let url = format!("{}/strata/api/join", server.trim_end_matches('/'));
    let r = reqwest::blocking::Client::new()
        .post(&url)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .with_context(|| format!("joining the cluster at {url}"))?;
    let status = r.status();
    let v: serde_json::Value = serde_json::from_slice(&r.bytes()?).unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "joining the cluster at {url}: {status}: {}",
            v["error"].as_str().unwrap_or("no reason given")
        );
    }
    let (Some(cert), Some(ca)) = (v["cert"].as_str(), v["ca"].as_str()) else {
        anyhow::bail!("joining the cluster at {url}: the answer has no certificate");
    };
    std::fs::create_dir_all(&a.certs)?;
    let write = |file: String, bytes: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = a.certs.join(file);
        strata::store::write_atomic(&p, bytes.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    strata::p2p::tls::write_private(&a.certs.join(format!("{}.key", a.name)), key.as_bytes())?;
    write("ca.pem".into(), ca, 0o644)?;
    // The certificate last: its presence means the join completed.
    write(format!("{}.pem", a.name), cert, 0o644)?;
    eprintln!(
        "joined the cluster as `{}`; certificate in {}",
        a.name,
        a.certs.display()
    );
    Ok(())
}
