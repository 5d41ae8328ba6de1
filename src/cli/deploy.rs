//! `strata deploy`, `strata hotfix`, `strata rollback`, `strata status`,
//! `strata history` and `strata logs`: an app's instances on its Docker
//! hosts, as declared in `deploy/apps/APP.toml`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use strata::api::client::ApiClient;
use strata::deploy::plan::Mode;
use strata::deploy::state::{self, HistoryEntry, StateStore};
use strata::deploy::{Orchestrator, Report, Status, Target, spec};
use strata::lease::{self, LeaseStore};
use strata::store::Store;

use super::{StoreArgs, images};

/// One app: its name, and where apps are declared and their state lives.
#[derive(Debug, clap::Args)]
pub struct AppArgs {
    /// The app's name: its spec is APPS/NAME.toml.
    pub app: String,
    #[command(flatten)]
    pub site: SiteArgs,
}

/// `AppArgs` reads as the site options it carries (`a.apps`, `a.data`…).
impl std::ops::Deref for AppArgs {
    type Target = SiteArgs;
    fn deref(&self) -> &SiteArgs {
        &self.site
    }
}

/// Where apps are declared and where their state lives: what every
/// command about apps shares (`deploy`, `status`, `drain` …).
#[derive(Debug, Clone, clap::Args)]
pub struct SiteArgs {
    /// Folder of app specs.
    #[arg(long, env = "STRATA_APPS", default_value = "deploy/apps")]
    pub apps: PathBuf,
    /// Data directory: deploy state and history (unless --state is
    /// etcd), file leases and locks, hotfix backups.
    #[arg(long, env = "STRATA_DATA", default_value = "strata-data")]
    pub data: PathBuf,
    /// IP leases and deploy locks: `file` (under --data) or
    /// `etcd://HOST:PORT[,HOST:PORT…]` when several orchestrators share hosts.
    #[arg(long, env = "STRATA_LEASES", default_value = "file")]
    pub leases: String,
    /// Deploy state (each app's state and journal, its history, the
    /// drained hosts): `file` (under --data) or
    /// `etcd://HOST:PORT[,HOST:PORT…]`. Default: the same as --leases, so
    /// orchestrators sharing etcd share what was deployed, and one
    /// finishes a run another left. etcd state needs etcd leases (the
    /// deploy lock lives there); `--state file` keeps it per machine.
    #[arg(long, env = "STRATA_STATE", value_name = "STORE")]
    pub state: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Who the history names for this run (default: $USER@HOST).
    #[arg(long, env = "STRATA_ACTOR")]
    pub actor: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Doing it through a strata server instead of from this machine.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Run through this strata server's API (`strata serve --apps …`):
    /// its app specs, state and registry are used, and --image is a
    /// REPO:TAG of its registry.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// A token for --server (`strata token create NAME --role deploy`).
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true, requires = "server")]
    pub token: Option<String>,
}

impl ServerArgs {
    fn client(&self) -> Result<Option<ApiClient>> {
        match &self.server {
            Some(s) => Ok(Some(ApiClient::new(s, self.token.clone())?)),
            None => Ok(None),
        }
    }
}

impl SiteArgs {
    /// The deploy state store: --state, else where --leases points.
    pub fn state_store(&self) -> Result<Arc<dyn StateStore>> {
        let spec = self.state.as_deref().unwrap_or(&self.leases);
        Ok(state::open(spec, &self.leases, &self.data)?)
    }
}

pub struct Opened {
    pub app: spec::App,
    pub store: Store,
    pub leases: Box<dyn LeaseStore>,
    pub state: Arc<dyn StateStore>,
}

impl AppArgs {
    pub fn open(&self) -> Result<Opened> {
        let app = spec::find(&self.apps, &self.app)?;
        let store = Store::open(&self.store.store)
            .with_context(|| format!("opening the store at {}", self.store.store.display()))?;
        let leases = lease::open(&self.leases, &self.data)?;
        let state = self.state_store()?;
        Ok(Opened {
            app,
            store,
            leases,
            state,
        })
    }
}

fn say(s: &str) {
    eprintln!("{s}");
}

fn quiet(_: &str) {}

pub fn orchestrator<'a>(a: &AppArgs, o: &'a Opened) -> Result<Orchestrator<'a>> {
    let progress: &(dyn Fn(&str) + Sync) = if a.json { &quiet } else { &say };
    let mut orch = Orchestrator::new(
        o.app.clone(),
        &a.data,
        o.state.clone(),
        &o.store,
        o.leases.as_ref(),
        progress,
    )?;
    if let Some(actor) = a.actor.as_ref().filter(|s| !s.trim().is_empty()) {
        orch.set_actor(actor.trim().to_string());
    }
    Ok(orch)
}

/// An image given on the command line (or the spec's default), from the
/// store: a tag in --layout, `oci:DIR[:NAME]`, `docker-archive:FILE` or a
/// manifest digest.
fn target(a: &AppArgs, o: &Opened, image: Option<&str>) -> Result<Target> {
    let name = image
        .map(str::to_string)
        .or_else(|| o.app.image.clone())
        .ok_or_else(|| strata::deploy::DeployError::NoImage(o.app.name.clone()))?;
    let img = images::resolve(&a.store, &o.store, &name)?;
    Ok(Target::from_store(&o.store, &name, &img.descriptor.digest)?)
}

/// Deploy an image to every instance of an app.
///
/// Each instance gets the image as an in-place hotfix when only files
/// matching the app's `[hotfix] paths` changed (no restart: the container,
/// its PID 1 and the JVM stay), and as a full redeploy otherwise: a new
/// container on the same IP (leased from the app's pool, kept across
/// redeploys), a health check, and an automatic rollback to the previous
/// container if it fails. One deploy per app runs at a time.
///
/// Examples:
///   strata deploy shop --image shop                 # a tag in out/oci
///   strata deploy shop --image oci:build/oci:shop --redeploy
///   strata deploy shop --image sha256:4f1c… --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct DeployArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub remote: ServerArgs,
    /// The image (default: the spec's `image`).
    #[arg(long)]
    pub image: Option<String>,
    /// Always redeploy, even when a hotfix would do (also converges a
    /// hotfixed instance to a clean container of its image).
    #[arg(long, conflicts_with = "hotfix")]
    pub redeploy: bool,
    /// Hotfix or fail: never replace a container.
    #[arg(long)]
    pub hotfix: bool,
}

/// Apply an image's changed files into the running containers, without a
/// restart.
///
/// Refused, with the reason and nothing changed, when the change is not
/// hotfix-eligible (a path outside `[hotfix] paths`, or a different env,
/// command or user). The affected files are backed up first and put back
/// on any failure. Same as `strata deploy --hotfix`.
///
/// Examples:
///   strata hotfix shop --image shop
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct HotfixArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub remote: ServerArgs,
    /// The image whose files to apply.
    #[arg(long)]
    pub image: String,
}

/// Go back to an earlier deploy of an app.
///
/// Without --to, the last successful deploy whose image differs from the
/// one running now. Hotfix or redeploy is chosen as for `strata deploy`.
///
/// Examples:
///   strata rollback shop
///   strata rollback shop --to 12      # a version from `strata history shop`
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub remote: ServerArgs,
    /// The history version to return to.
    #[arg(long)]
    pub to: Option<u64>,
}

/// Stop and remove every instance of an app and release its addresses.
///
/// The history stays (a `remove` entry is added), and so do the
/// instances' log volumes unless --purge. Deploying the app again later
/// starts fresh instances. Scaling to `instances = 0` in the spec and
/// deploying does the same, without --purge.
///
/// Examples:
///   strata remove shop
///   strata remove shop --purge      # the logs volumes go too
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct RemoveArgs {
    #[command(flatten)]
    pub app: AppArgs,
    /// Also remove each instance's logs volume.
    #[arg(long)]
    pub purge: bool,
}

pub fn remove(a: RemoveArgs) -> Result<()> {
    let o = a.app.open()?;
    let orch = orchestrator(&a.app, &o)?;
    print_report(&a.app, orch.remove(a.purge))
}

pub fn deploy(a: DeployArgs) -> Result<()> {
    let mode = match (a.redeploy, a.hotfix) {
        (true, _) => Mode::Redeploy,
        (_, true) => Mode::Hotfix,
        _ => Mode::Auto,
    };
    if let Some(c) = a.remote.client()? {
        let mode = match mode {
            Mode::Auto => "auto",
            Mode::Hotfix => "hotfix",
            Mode::Redeploy => "redeploy",
        };
        return print_report(&a.app, Ok(c.deploy(&a.app.app, a.image.as_deref(), mode)?));
    }
    let o = a.app.open()?;
    let t = target(&a.app, &o, a.image.as_deref())?;
    let orch = orchestrator(&a.app, &o)?;
    print_report(&a.app, orch.deploy(&t, mode, "deploy"))
}

pub fn hotfix(a: HotfixArgs) -> Result<()> {
    if let Some(c) = a.remote.client()? {
        return print_report(&a.app, Ok(c.deploy(&a.app.app, Some(&a.image), "hotfix")?));
    }
    let o = a.app.open()?;
    let t = target(&a.app, &o, Some(&a.image))?;
    let orch = orchestrator(&a.app, &o)?;
    print_report(&a.app, orch.deploy(&t, Mode::Hotfix, "hotfix"))
}

pub fn rollback(a: RollbackArgs) -> Result<()> {
    if let Some(c) = a.remote.client()? {
        return print_report(&a.app, Ok(c.rollback(&a.app.app, a.to)?));
    }
    let o = a.app.open()?;
    let orch = orchestrator(&a.app, &o)?;
    print_report(&a.app, orch.rollback(a.to))
}

pub fn print_report(a: &AppArgs, r: strata::deploy::Result<Report>) -> Result<()> {
    let r = r?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} version {}: {} {} in {:.2}s",
        r.app, r.version, r.action, r.image, r.seconds
    );
    for i in &r.instances {
        let extra = match (i.gap_seconds, i.files) {
            (Some(g), _) => format!("gap {g:.2}s"),
            (_, Some(f)) => format!("{f} file(s)"),
            _ => String::new(),
        };
        println!(
            "  {:<16} {:<15} {:<9} {:<3} {:>6.2}s  {extra}",
            i.instance, i.ip, i.mode, i.outcome, i.seconds
        );
    }
    Ok(())
}

/// Show an app's instances: host, IP, image, hotfix, container state and
/// a live health probe.
///
/// Also reports an operation a crashed orchestrator left unfinished (the
/// next deploy finishes or undoes it).
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub remote: ServerArgs,
    /// Also read every instance back and report drift from what the
    /// history says it runs: its image, the env, volumes and memory
    /// strata gave it, and every file under the hotfix paths. Exits 1
    /// when any instance drifted.
    #[arg(long)]
    pub verify: bool,
}

pub fn status(a: StatusArgs) -> Result<()> {
    let s = match a.remote.client()? {
        Some(c) => c.status(&a.app.app, a.verify)?,
        None => {
            let o = a.app.open()?;
            orchestrator(&a.app, &o)?.status(a.verify)?
        }
    };
    print_status(&s, a.app.json)?;
    let drifted: Vec<&str> = s
        .instances
        .iter()
        .filter(|i| i.drift.as_ref().is_some_and(|d| !d.is_empty()))
        .map(|i| i.instance.name.as_str())
        .collect();
    if !drifted.is_empty() {
        bail!("drift found on {}", drifted.join(", "));
    }
    Ok(())
}

fn print_status(s: &Status, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("{} version {}", s.app, s.version);
    if !s.recovery.is_empty() {
        println!("  recovery: {}", s.recovery);
    }
    if let Some(op) = &s.unfinished {
        println!("  unfinished: {}", op.describe(&s.app));
    }
    if s.instances.is_empty() {
        println!("  no instances deployed (strata deploy {})", s.app);
    }
    for i in &s.instances {
        let image = match &i.instance.hotfix {
            Some(h) => format!("{} + hotfix {}", i.instance.image, h),
            None => i.instance.image.to_string(),
        };
        let state = if i.running {
            format!("running since {}", i.started_at)
        } else if !i.stopped_at.is_empty() {
            format!("STOPPED since {}", i.stopped_at)
        } else {
            "NOT RUNNING".to_string()
        };
        println!(
            "  {:<16} {:<15} {} {}\n      {image}\n      {}, {state}",
            i.instance.name, i.instance.ip, i.instance.host, i.instance.container_name, i.instance.health,
        );
        match &i.drift {
            Some(d) if d.is_empty() => println!("      verified: no drift"),
            Some(d) => {
                for line in d {
                    println!("      DRIFT: {line}");
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// Every deploy, hotfix and rollback of an app: version, when, who, what
/// and how it ended.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub remote: ServerArgs,
}

pub fn history(a: HistoryArgs) -> Result<()> {
    let h = match a.remote.client()? {
        Some(c) => c.history(&a.app.app)?,
        None => {
            let o = a.app.open()?;
            orchestrator(&a.app, &o)?.history()?
        }
    };
    print_history(&a.app.app, &h, a.app.json)
}

fn print_history(app: &str, h: &[HistoryEntry], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&h)?);
        return Ok(());
    }
    if !h.is_empty() {
        println!(
            "{:>4}  {:<20}  {:<8} {:<16} {:<11} {:>7}  IMAGE  BY",
            "VER", "AT", "ACTION", "MODE", "OUTCOME", "TIME"
        );
    }
    for e in h {
        println!(
            "{:>4}  {:<20}  {:<8} {:<16} {:<11} {:>6.1}s  {}  {}",
            e.version, e.at, e.action, e.mode, e.outcome, e.seconds, e.image, e.by
        );
        if !e.detail.is_empty() {
            println!("      {}", e.detail.lines().next().unwrap_or(""));
        }
    }
    if h.is_empty() {
        println!("no deploys of {app} yet");
    }
    Ok(())
}

/// Stream an app's logs from every instance on every host (`NAME | line`).
///
/// Examples:
///   strata logs shop --follow
///   strata logs shop --instance 2 --tail 100
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct LogsArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub remote: ServerArgs,
    /// Keep streaming new lines.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this instance (1, 2, …).
    #[arg(long)]
    pub instance: Option<u32>,
    /// Start with the last N lines of each instance.
    #[arg(long)]
    pub tail: Option<usize>,
}

pub fn logs(a: LogsArgs) -> Result<()> {
    if let Some(c) = a.remote.client()? {
        let out = std::io::stdout();
        c.logs(&a.app.app, a.instance, a.tail, a.follow, &mut |line| {
            let _ = writeln!(out.lock(), "{line}");
        })?;
        return Ok(());
    }
    let o = a.app.open()?;
    if let Some(i) = a.instance
        && (i == 0 || i > o.app.instances)
    {
        bail!("{} has instances 1 to {}, not {i}", o.app.name, o.app.instances);
    }
    let orch = orchestrator(&a.app, &o)?;
    let out = std::io::stdout();
    let width = o.app.instance_name(o.app.instances).len();
    orch.logs(
        a.instance,
        a.follow,
        a.tail,
        &|name, line| {
            let mut w = out.lock();
            let _ = writeln!(w, "{name:<width$} | {line}");
        },
        &|| false,
    )?;
    Ok(())
}
