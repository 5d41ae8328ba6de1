//! `strata build`: layers.toml → images.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use strata::build::{self, Event, Progress, TierOutcome};
use strata::spec::{self, AppOverride};
use strata::store::Store;

use super::{StoreArgs, human};

/// Build the tiers declared in a layers.toml into images.
///
/// Every tier becomes one image: its parent's layers plus one layer of its
/// own. A tier whose inputs did not change is taken from the cache, so a
/// new WAR rebuilds only its app tier. Output is an OCI image layout
/// (--layout, default out/oci), tagged with each tier's name, and, on
/// request, a docker-archive that `docker load` accepts.
///
/// Examples:
///   strata build                                  # ./layers.toml, all tiers
///   strata build -c deploy/examples/offline.toml --docker-archive out/stack.tar --load
///   strata build --tier tomcat --json
///   strata build --war shop=target/shop.war       # an app tier from the [app] template
///
/// Only `run` steps and --load need a Docker engine.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The tier declarations.
    #[arg(short, long, default_value = "layers.toml")]
    pub config: PathBuf,
    /// Build only this tier and its ancestors (repeatable).
    #[arg(long = "tier", value_name = "TIER")]
    pub tiers: Vec<String>,
    /// Add or replace an app tier built from the [app] template: NAME=FILE.war
    #[arg(long = "war", value_name = "NAME=FILE", value_parser = parse_war)]
    pub wars: Vec<AppOverride>,
    /// Also write a docker-archive with every built tier (gzip layers, for
    /// engines that cannot load zstd from an archive, like Docker 20.10).
    #[arg(long, value_name = "FILE")]
    pub docker_archive: Option<PathBuf>,
    /// Load the built images into the local Docker engine.
    #[arg(long)]
    pub load: bool,
    /// Tag images REPOSITORY/TIER:TAG with this tag instead of the config's.
    #[arg(long, value_parser = parse_tag)]
    pub tag: Option<String>,
    /// Rebuild every tier, ignoring the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print a JSON report on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_tag(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !s.starts_with(['.', '-']);
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}` is not a tag ([A-Za-z0-9_][A-Za-z0-9._-]*)"))
    }
}

fn parse_war(s: &str) -> Result<AppOverride, String> {
    let (name, war) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=FILE.war"))?;
    Ok(AppOverride {
        name: name.to_string(),
        war: PathBuf::from(war),
    })
}

/// Progress: a spinner on a terminal, plain lines otherwise.
struct Display {
    bar: Option<ProgressBar>,
    lines: Mutex<()>,
}

impl Progress for Display {
    fn event(&self, e: Event<'_>) {
        let _guard = self.lines.lock();
        match (e, &self.bar) {
            (Event::TierStart { tier }, Some(b)) => b.set_prefix(tier.to_string()),
            (Event::TierStart { tier }, None) => eprintln!("[{tier}] start"),
            (Event::Step { what, .. }, Some(b)) => b.set_message(what),
            (Event::Step { tier, what }, None) => eprintln!("[{tier}] {what}"),
            (Event::TierDone(o), Some(b)) => b.println(summary(o)),
            (Event::TierDone(o), None) => eprintln!("{}", summary(o)),
        }
    }
}

fn summary(o: &TierOutcome) -> String {
    let layer = o
        .layer
        .as_ref()
        .map(|l| human(l.size))
        .unwrap_or_else(|| "-".into());
    format!(
        "{:<12} {:<7} layer {:>9}  image {:>9}  {:>6.2}s  {}",
        o.tier,
        if o.cached { "cached" } else { "built" },
        layer,
        human(o.image_size),
        o.seconds,
        o.reference
    )
}

pub fn run(a: Args) -> Result<()> {
    let mut plan = spec::load(&a.config, &a.wars)?;
    if let Some(t) = &a.tag {
        plan.settings.tag = t.clone();
    }
    let store = Store::open(&a.store.store)
        .with_context(|| format!("opening the store at {}", a.store.store.display()))?;
    let bar = (!a.json && std::io::stderr().is_terminal()).then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(ProgressStyle::with_template("{spinner} {prefix:.bold} {msg}").expect("static template"));
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    });
    let display = Display {
        bar,
        lines: Mutex::new(()),
    };
    let needs_engine = plan.tiers.iter().any(|t| !t.run.is_empty());
    let engine = if needs_engine {
        Some(strata::engine::BlockingEngine::connect()?)
    } else {
        None
    };
    let opts = build::Options {
        store: &store,
        only: a.tiers.clone(),
        no_cache: a.no_cache,
        progress: &display,
        engine: engine.as_ref().map(|e| e as &dyn build::run::RunEngine),
    };
    let started = std::time::Instant::now();
    let outcomes = build::build(&plan, &opts);
    if let Some(b) = &display.bar {
        b.finish_and_clear();
    }
    let outcomes = outcomes?;

    let images: Vec<(String, strata::oci::Descriptor)> = outcomes
        .iter()
        .map(|o| (o.tier.clone(), o.manifest.clone()))
        .collect();
    let mut tagged = images.clone();
    if plan.settings.tag != "latest" {
        tagged.extend(
            outcomes
                .iter()
                .map(|o| (format!("{}:{}", o.tier, plan.settings.tag), o.manifest.clone())),
        );
    }
    strata::oci::layout::write(&a.store.layout, &store, &tagged)
        .with_context(|| format!("writing the image layout {}", a.store.layout.display()))?;

    let archive = match (&a.docker_archive, a.load) {
        (Some(p), _) => Some((p.clone(), None)),
        (None, true) => {
            let dir = store.temp_dir("load-")?;
            Some((dir.path().join("images.tar"), Some(dir)))
        }
        (None, false) => None,
    };
    if let Some((path, _keep)) = &archive {
        let refs: Vec<(String, strata::oci::Descriptor)> = outcomes
            .iter()
            .map(|o| (o.reference.clone(), o.manifest.clone()))
            .collect();
        if !a.json {
            eprintln!("writing docker-archive {}", path.display());
        }
        let quiet = a.json;
        strata::oci::archive::write(path, &store, &refs, &|what| {
            if !quiet {
                eprintln!("  {what}");
            }
        })?;
        if a.load {
            if !a.json {
                eprintln!("loading {} image(s) into the Docker engine", refs.len());
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let docker = strata::engine::connect().await?;
                strata::engine::load(&docker, path).await
            })?;
        }
    }

    if a.json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            config: &'a std::path::Path,
            layout: &'a std::path::Path,
            docker_archive: Option<&'a std::path::Path>,
            loaded: bool,
            seconds: f64,
            tiers: &'a [TierOutcome],
        }
        let r = Report {
            config: &a.config,
            layout: &a.store.layout,
            docker_archive: a.docker_archive.as_deref(),
            loaded: a.load,
            seconds: started.elapsed().as_secs_f64(),
            tiers: &outcomes,
        };
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let built = outcomes.iter().filter(|o| !o.cached).count();
        eprintln!(
            "{} tier(s), {} built, {} cached, in {:.2}s → {}",
            outcomes.len(),
            built,
            outcomes.len() - built,
            started.elapsed().as_secs_f64(),
            a.store.layout.display()
        );
    }
    if outcomes.is_empty() {
        bail!("nothing was built");
    }
    Ok(())
}
