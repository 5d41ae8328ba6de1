//! `strata serve`: the origin registry.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

/// Serve an OCI distribution-spec registry (the origin) over a data directory.
///
/// Any OCI client can push to it and pull from it: docker, podman, skopeo,
/// containerd. Blobs are verified while they stream and become visible only
/// after their digest matched; upload sessions survive a restart.
///
/// Beside the registry it serves the deployment center: the API
/// (/strata/api/...), the dashboard (/ui) and /metrics. Reading any of
/// them needs a token with the read role (or deploy, or admin), unless
/// --public-read; changing anything through them always needs a token.
/// Registry pulls (/v2/...) stay anonymous unless --pull-auth; pushes need
/// a deploy token unless --open-push.
///
/// Examples:
///   strata token create jenkins --data /var/lib/strata   # prints a push token once
///   strata token create me --role read --data /var/lib/strata   # to read the API and the dashboard
///   strata serve                                  # 127.0.0.1:5000, data in ./strata-data
///   strata serve --listen 0.0.0.0:5000 --data /var/lib/strata
///   skopeo copy --dest-creds jenkins:TOKEN --dest-tls-verify=false oci:out/oci:tomcat docker://127.0.0.1:5000/strata/tomcat:1
///   docker pull 127.0.0.1:5000/strata/tomcat:1     # loopback needs no TLS
///   curl -H "Authorization: Bearer TOKEN" http://127.0.0.1:5000/strata/api/apps
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is
    /// printed on the first line of stdout).
    /// [default: 127.0.0.1:5000]
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory: blobs, repositories, tags, upload sessions
    /// [default: strata-data].
    #[arg(long, env = "STRATA_DATA")]
    pub data: Option<PathBuf>,
    /// A TOML config file (listen, data, [auth], [tls], [storage]); flags
    /// override it. See deploy/examples/serve.toml.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Credentials file (`NAME:SHA256:ROLE` lines from `strata token
    /// create`); default DATA/credentials. Pushes, and the API and the
    /// dashboard (reads too, unless --public-read), need one of its
    /// tokens; the file is read again when it changes, so a new token
    /// works at once.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Accept registry pushes without a credential (for demos and
    /// throwaway setups). The API's deploys, rollbacks and prewarms still
    /// need a token.
    #[arg(long)]
    pub open_push: bool,
    /// Require a credential for registry pulls too (anonymous pulls by
    /// default).
    #[arg(long)]
    pub pull_auth: bool,
    /// Let anyone read the API, the dashboard and /metrics without a token
    /// (apps, their IPs, history, logs, hosts, the audit log): for a
    /// server only trusted people can reach. By default every read there
    /// needs a token with the read role (`strata token create NAME --role
    /// read`). Deploys, rollbacks and prewarms still need a token; the
    /// registry's pulls do not depend on it (see --pull-auth).
    #[arg(long)]
    pub public_read: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow DELETE of manifests, tags and blob links (pushers only).
    #[arg(long)]
    pub allow_delete: bool,
    /// Refuse blobs larger than this (MiB) with 413 SIZE_INVALID; the
    /// upload's bytes are freed. No limit by default.
    #[arg(long)]
    pub max_blob_mib: Option<u64>,
    /// Purge upload sessions idle for longer than this (s, m, h suffixes);
    /// the server checks every quarter of it (at most every 15 min).
    /// `strata gc --upload-ttl` purges them too. [default: 24h]
    #[arg(long, value_parser = strata::registry::config::parse_duration)]
    pub upload_ttl: Option<std::time::Duration>,
    /// Refuse manifests whose foreign (non-distributable) layers were not
    /// pushed; by default such layers are accepted when they carry `urls`
    /// (clients fetch them from there).
    #[arg(long)]
    pub refuse_foreign_layers: bool,
    /// Accept an image index that names manifests not in the repository
    /// (e.g. `skopeo copy --multi-arch=index-only`); refused by default.
    #[arg(long)]
    pub allow_sparse_index: bool,
    /// Also run the P2P origin and tracker on this UDP address (QUIC,
    /// mutual TLS); needs --p2p-certs.
    #[arg(long, requires = "p2p_certs")]
    pub p2p_listen: Option<SocketAddr>,
    /// Directory with origin.pem, origin.key and ca.pem (from `strata
    /// cluster issue origin`).
    #[arg(long)]
    pub p2p_certs: Option<PathBuf>,
    /// The cluster CA directory (`strata cluster init`): agents may then
    /// join with a token (`strata cluster token`) and get a certificate.
    #[arg(long)]
    pub cluster_ca: Option<PathBuf>,
    /// How long the node certificates this server signs (joins with
    /// --cluster-ca, and renewals: agents renew when a third is left)
    /// are valid (s, m, h, d).
    #[arg(long, default_value = "365d", value_parser = strata::registry::config::parse_duration)]
    pub cert_lifetime: std::time::Duration,
    /// Cap on the origin's P2P egress, Mbit/s (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub p2p_upload_mbit: f64,
    /// How many agents fetching one blob form a chain: each streams it
    /// from the one before (the first from the origin), piece by piece as
    /// they arrive, so every link carries one stream at full rate. With
    /// more live agents than this (a heartbeat in the last 30 s), the
    /// agents asking for a blob within half a second form a chain if they
    /// fit one, else the blob goes down ⌈log2(N+1)⌉ stripe trees over
    /// them, streamed the same way. Late askers, and agents whose chain or
    /// stripe breaks or stalls, swarm (rarest first among peers). 0:
    /// always swarm.
    #[arg(long, default_value_t = strata::p2p::node::CHAIN_MAX)]
    pub p2p_chain: usize,
    /// Folder of app specs the API and dashboard deploy (as `strata deploy
    /// --apps`); their state and history live under --data, or in etcd
    /// (see --state).
    #[arg(long, env = "STRATA_APPS", default_value = "deploy/apps")]
    pub apps: PathBuf,
    /// IP leases and deploy locks: `file` (under --data) or
    /// `etcd://HOST:PORT[,HOST:PORT…]`, as `strata deploy --leases`.
    #[arg(long, env = "STRATA_LEASES", default_value = "file")]
    pub leases: String,
    /// Deploy state (apps' state and journals, history, drained hosts):
    /// `file` (under --data) or `etcd://HOST:PORT[,…]`, as `strata deploy
    /// --state`. Default: the same as --leases. Two servers given the same
    /// etcd share it: a deploy through one shows in the other's status,
    /// history and dashboard, and when one dies in the middle of a run,
    /// the other finishes it (or puts it back) by itself once the dead
    /// one's lock expires (15 s); each server still deploys from its own
    /// registry, so push the images to both.
    #[arg(long, env = "STRATA_STATE", value_name = "STORE")]
    pub state: Option<String>,
}

pub fn run(mut a: Args) -> Result<()> {
    let cfg = match &a.config {
        Some(p) => strata::registry::config::ServeConfig::load(p)?,
        None => Default::default(),
    };
    let listen = a
        .listen
        .or(cfg.listen)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 5000)));
    let data = a
        .data
        .clone()
        .or(cfg.data)
        .unwrap_or_else(|| PathBuf::from("strata-data"));
    a.credentials = a.credentials.or(cfg.auth.credentials);
    a.open_push |= cfg.auth.open_push;
    a.pull_auth |= cfg.auth.pull_auth;
    a.public_read |= cfg.auth.public_read;
    a.allow_delete |= cfg.storage.allow_delete;
    a.max_blob_mib = a.max_blob_mib.or(cfg.storage.max_blob_mib);
    a.upload_ttl = a.upload_ttl.or(cfg.storage.upload_ttl);
    a.refuse_foreign_layers |= cfg.storage.refuse_foreign_layers;
    a.allow_sparse_index |= cfg.storage.allow_sparse_index;
    if a.tls_cert.is_none()
        && let Some(t) = cfg.tls
    {
        a.tls_cert = Some(t.cert);
        a.tls_key = Some(t.key);
    }
    let state_spec = a.state.clone().unwrap_or_else(|| a.leases.clone());
    let state = strata::deploy::state::open(&state_spec, &a.leases, &data)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let cred_path = a.credentials.clone().unwrap_or_else(|| data.join("credentials"));
        let credentials = strata::registry::auth::Credentials::load(&cred_path)?;
        let no_tokens = credentials.is_empty();
        let access = strata::registry::Access {
            credentials,
            open_push: a.open_push,
            pull_auth: a.pull_auth,
            public_read: a.public_read,
            allow_delete: a.allow_delete,
            max_blob_mib: a.max_blob_mib,
            upload_ttl: a.upload_ttl,
            manifest_policy: strata::registry::ManifestPolicy {
                refuse_foreign_layers: a.refuse_foreign_layers,
                allow_sparse_index: a.allow_sparse_index,
            },
        };
        let tls = a
            .tls_cert
            .clone()
            .zip(a.tls_key.clone())
            .map(|(cert, key)| strata::registry::TlsFiles { cert, key });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut server = strata::registry::Server::bind(listen, data.clone(), access, tls)
            .await
            .with_context(|| {
                format!(
                    "starting the registry on {} with data in {}",
                    listen,
                    data.display()
                )
            })?;
        let addr = server.local_addr()?;
        println!("listening on {scheme}://{addr}");
        let node = match (a.p2p_listen, &a.p2p_certs) {
            (Some(listen), Some(certs)) => {
                let identity = strata::p2p::tls::Identity::from_dir(certs, "origin")
                    .context("loading the origin's cluster certificate (strata cluster issue origin)")?;
                let node = strata::p2p::node::Node::start(strata::p2p::node::NodeConfig {
                    name: "origin".into(),
                    zone: 0,
                    listen,
                    store: strata::store::Store::open(data.join("store"))?,
                    partial_dir: data.join("p2p-partial"),
                    origin: true,
                    identity,
                    upload_rate: Some(a.p2p_upload_mbit * 1e6 / 8.0),
                    cache: None,
                    download_rate: None,
                    chain_max: a.p2p_chain,
                    revoked: Some(std::sync::Arc::new(strata::p2p::revoke::Revoked::open(&data))),
                    authority: a.cluster_ca.clone().map(|ca_dir| strata::p2p::renew::Authority {
                        ca_dir,
                        lifetime: a.cert_lifetime,
                    }),
                })
                .await?;
                println!("p2p listening on {}", node.local_addr());
                Some(std::sync::Arc::new(node))
            }
            _ => None,
        };
        let (registry, access) = (server.registry(), server.access());
        if let Some(n) = &node {
            // A pushed blob gets its piece table at once, off the fan-out.
            let n = n.clone();
            registry.on_new_blob(move |d| n.prepare(d));
        }
        server = server.with_routes(strata::api::router(strata::api::ApiConfig {
            access,
            registry,
            node: node.clone(),
            ca_dir: a.cluster_ca.clone(),
            cert_lifetime: a.cert_lifetime,
            data: data.clone(),
            apps: a.apps.clone(),
            leases: a.leases.clone(),
            state: state.clone(),
            credentials_file: cred_path.clone(),
            https: scheme == "https",
        }));
        std::io::stdout().flush()?;
        for line in access_lines(&a, &data, &cred_path, no_tokens) {
            eprintln!("strata serve: {line}");
        }
        eprintln!(
            "strata serve: data in {}, deploy state in {}; Ctrl-C stops",
            data.display(),
            state.location()
        );
        server.run(shutdown_signal()).await?;
        eprintln!("strata serve: stopped");
        Ok(())
    })
}

/// What the server tells at startup about who may do what.
fn access_lines(
    a: &Args,
    data: &std::path::Path,
    cred_path: &std::path::Path,
    no_tokens: bool,
) -> Vec<String> {
    let make = |role: &str| {
        format!(
            "`strata token create NAME --role {role} --data {}`",
            data.display()
        )
    };
    let mut out = vec![if a.public_read {
        "reads of the API, the dashboard and /metrics are open to anyone (--public-read); \
         deploys, rollbacks and prewarms need a deploy token"
            .to_string()
    } else {
        format!(
            "reads of the API, the dashboard (/ui) and /metrics need a token with the read role: {} \
             makes one (it works at once; --public-read would open reads to anyone)",
            make("read")
        )
    }];
    out.push(format!(
        "registry pulls: {}; pushes: {}",
        if a.pull_auth {
            "need a read token (--pull-auth)"
        } else {
            "anonymous"
        },
        if a.open_push {
            "anonymous (--open-push)"
        } else {
            "need a deploy token"
        }
    ));
    if no_tokens {
        out.push(format!(
            "no tokens in {} yet: {}",
            cred_path.display(),
            make("read|deploy|admin")
        ));
    }
    out
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn wait_for_shutdown() {
    shutdown_signal().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
