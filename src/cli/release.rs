//! `strata release`: the one command Jenkins calls. Builds the app tier
//! from a WAR on the cached tier stack, pushes it to the origin, prewarms
//! the app's hosts, deploys (hotfix when eligible, redeploy otherwise) and
//! prints a summary; any failed stage exits non-zero.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use strata::build;
use strata::deploy::Target;
use strata::deploy::plan::Mode;
use strata::spec::{self, AppOverride};

use super::deploy::{AppArgs, orchestrator, print_report};
use super::transfer::{PushArgs, RemoteArgs};

/// Build, push, prewarm and deploy a WAR: what CI runs after every build.
///
/// 1. build: the app tier APP from --war on the tiers of --config (cached
///    tiers are reused, so this is one small layer);
/// 2. push: to --push REGISTRY/REPO:TAG (skipped without --push);
/// 3. prewarm: every host of --server fetches it peer-to-peer (skipped
///    without --server);
/// 4. deploy: hotfix when only hotfix-eligible files changed, a full
///    redeploy that keeps each instance's IP otherwise.
///
/// Examples:
///   strata release sample --war target/shop.war -c layers.toml
///   strata release shop --war shop.war --push 10.0.0.1:5000/shop:build-42 \
///       --server http://10.0.0.1:5000 --token "$STRATA_TOKEN" --load
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub app: AppArgs,
    /// The WAR (a file or an exploded directory).
    #[arg(long)]
    pub war: PathBuf,
    /// The tier declarations with the `[app]` template.
    #[arg(short, long, default_value = "layers.toml")]
    pub config: PathBuf,
    /// Push the built image here (REGISTRY/REPO:TAG).
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// Push gzip layers (for Docker engines older than 23 pulling from the registry).
    #[arg(long)]
    pub gzip: bool,
    /// The strata server whose agents prewarm the image before the deploy.
    #[arg(long, env = "STRATA_SERVER")]
    pub server: Option<String>,
    /// With --server: each host's engine also pulls the image from its
    /// agent during the prewarm, so the deploy finds it there (by its ID)
    /// and sends no image to any engine.
    #[arg(long, requires = "server")]
    pub load: bool,
    /// Push over plain HTTP to a registry that is not on loopback (a lab's
    /// or a test network's origin); loopback registries are always plain.
    #[arg(long)]
    pub plain_http: bool,
    /// A push token for --server (`strata token create`).
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Registry credentials for --push, USER:PASSWORD.
    #[arg(long, env = "STRATA_REGISTRY_AUTH", hide_env_values = true)]
    pub user: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let o = a.app.open()?;
    let name = o.app.name.clone();
    let stage = |what: &str| {
        if !a.app.json {
            eprintln!("==> {what}");
        }
    };

    stage(&format!("build {name} from {}", a.war.display()));
    let t = Instant::now();
    let plan = spec::load(
        &a.config,
        &[AppOverride {
            name: name.clone(),
            war: a.war.clone(),
        }],
    )?;
    let engine = if plan.tiers.iter().any(|t| !t.run.is_empty()) {
        Some(strata::engine::BlockingEngine::connect()?)
    } else {
        None
    };
    let opts = build::Options {
        store: &o.store,
        only: vec![name.clone()],
        no_cache: false,
        progress: &build::Quiet,
        engine: engine.as_ref().map(|e| e as &dyn build::run::RunEngine),
    };
    let outcomes = build::build(&plan, &opts).with_context(|| format!("building the app tier `{name}`"))?;
    let built = outcomes
        .iter()
        .find(|x| x.tier == name)
        .ok_or_else(|| anyhow!("{} declares no tier `{name}`", a.config.display()))?;
    let manifest = built.manifest.clone();
    strata::oci::layout::write(&a.app.store.layout, &o.store, &[(name.clone(), manifest.clone())])
        .with_context(|| format!("writing {name} into {}", a.app.store.layout.display()))?;
    let build_secs = t.elapsed().as_secs_f64();
    let mut summary = vec![format!(
        "build    {:>6.2}s  {} {}",
        build_secs,
        manifest.digest.short(),
        if built.cached { "(cached)" } else { "" }
    )];

    let mut pushed = None;
    if let Some(target) = &a.push {
        stage(&format!("push {target}"));
        let t = Instant::now();
        super::transfer::push(PushArgs {
            image: name.clone(),
            target: target.clone(),
            mount_from: vec![],
            gzip: a.gzip,
            store: super::StoreArgs {
                store: a.app.store.store.clone(),
                layout: a.app.store.layout.clone(),
            },
            remote: RemoteArgs {
                user: a.user.clone(),
                plain_http: a.plain_http,
                insecure: false,
                chunk_mib: 32,
                jobs: 3,
                attempts: 5,
                json: false,
            },
            report_on_stderr: true,
        })
        .with_context(|| format!("pushing {name} to {target}"))?;
        summary.push(format!("push     {:>6.2}s  {target}", t.elapsed().as_secs_f64()));
        pushed = Some(target.clone());
    } else {
        summary.push("push        -     skipped (no --push)".into());
    }

    match (&a.server, &pushed) {
        (Some(server), Some(target)) => {
            stage(&format!("prewarm through {server}"));
            let t = Instant::now();
            let image = target
                .split_once('/')
                .map(|(_, r)| r.to_string())
                .unwrap_or(target.clone());
            super::prewarm::run(super::prewarm::Args {
                image,
                server: server.clone(),
                hosts: vec![],
                label: None,
                load: a.load,
                token: a.token.clone(),
                timeout: 3600,
                json: false,
                report_on_stderr: true,
            })
            .context("prewarming the app's hosts")?;
            summary.push(format!("prewarm  {:>6.2}s  {server}", t.elapsed().as_secs_f64()));
        }
        (Some(_), None) => summary.push("prewarm     -     skipped (nothing pushed)".into()),
        (None, _) => summary.push("prewarm     -     skipped (no --server)".into()),
    }

    stage(&format!("deploy {name}"));
    let target = Target::from_store(&o.store, &name, &manifest.digest)?;
    let orch = orchestrator(&a.app, &o)?;
    let report = orch.deploy(&target, Mode::Auto, "release");
    if !a.app.json {
        for line in &summary {
            eprintln!("  {line}");
        }
        match &report {
            Ok(r) => eprintln!(
                "  deploy   {:>6.2}s  version {} ({})",
                r.seconds,
                r.version,
                r.instances
                    .iter()
                    .map(|i| i.mode.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Err(e) => eprintln!("  deploy   FAILED   {e}"),
        }
        eprintln!("released {name} in {:.2}s", started.elapsed().as_secs_f64());
    }
    print_report(&a.app, report)
}
