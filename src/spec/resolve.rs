//! Raw `layers.toml` → checked [`Plan`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::plan::*;
use super::raw;
use super::{Result, SpecError};

mod sources;

use sources::{base_image, owner, source};

/// A `--war NAME=FILE` given on the command line.
#[derive(Debug, Clone)]
pub struct AppOverride {
    pub name: String,
    pub war: PathBuf,
}

struct Ctx<'a> {
    file: &'a Path,
    dir: PathBuf,
    lines: LineIndex,
}

impl Ctx<'_> {
    fn at(&self, offset: usize) -> Location {
        self.lines.at(self.file, offset)
    }

    fn loc<T>(&self, s: &Spanned<T>) -> Location {
        self.at(s.span().start)
    }

    fn host_path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    fn image_path(&self, key: &str, s: &Spanned<String>) -> Result<ImagePath> {
        ImagePath::parse(s.get_ref()).map_err(|reason| SpecError::BadPath {
            at: self.loc(s),
            key: key.to_string(),
            path: s.get_ref().clone(),
            reason,
        })
    }

    fn bad(&self, at: Location, key: &str, value: impl ToString, expected: &'static str) -> SpecError {
        SpecError::BadValue {
            at,
            key: key.to_string(),
            value: value.to_string(),
            expected,
        }
    }
}

pub(super) fn resolve(file: &Path, text: &str, apps: &[AppOverride]) -> Result<Plan> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let cx = Ctx {
        file,
        dir,
        lines: LineIndex::new(text),
    };
    let raw: raw::File = toml::from_str(text).map_err(|e| SpecError::Syntax {
        at: cx.at(e.span().map(|s| s.start).unwrap_or(0)),
        message: e.message().trim_end().to_string(),
    })?;

    let settings = settings(&cx, raw.build.as_ref())?;
    let mut tiers: BTreeMap<String, Tier> = BTreeMap::new(); // drained in build order below
    for (name, t) in &raw.tiers {
        check_name(&cx, "tiers", name)?;
        let tier = tier(&cx, name.get_ref(), t, false)?;
        tiers.insert(name.get_ref().clone(), tier);
    }

    // Apps: the `[app]` template plus one `[apps.NAME]` each, with CLI
    // overrides replacing or adding entries.
    let mut app_wars: BTreeMap<String, (PathBuf, Option<String>, Location, &raw::App)> = BTreeMap::new();
    for (name, a) in &raw.apps {
        check_name(&cx, "apps", name)?;
        let war = cx.host_path(a.get_ref().war.get_ref());
        let ctx = a.get_ref().context.as_ref().map(|c| c.get_ref().clone());
        app_wars.insert(name.get_ref().clone(), (war, ctx, cx.loc(name), a.get_ref()));
    }
    let empty_app = raw::App {
        war: Spanned::new(0..0, String::new()),
        context: None,
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
    };
    for o in apps {
        let at = Location {
            file: PathBuf::from("--war"),
            line: 1,
            col: 1,
        };
        let keep = app_wars.remove(&o.name);
        let (ctx, a) = match keep {
            Some((_, ctx, _, a)) => (ctx, a),
            None => (None, &empty_app),
        };
        if !valid_name(&o.name) {
            return Err(cx.bad(at, "--war", &o.name, "a tier name ([a-z0-9][a-z0-9._-]*)"));
        }
        app_wars.insert(o.name.clone(), (o.war.clone(), ctx, at, a));
    }
    for (name, (war, context, at, a)) in app_wars {
        let Some(template) = raw.app.as_ref() else {
            return Err(SpecError::NoAppTemplate { at, name });
        };
        if tiers.contains_key(&name) {
            return Err(SpecError::NameClash { at, name });
        }
        if !war.exists() {
            return Err(SpecError::MissingWar { name, path: war });
        }
        let mut t = tier(&cx, &name, template, true)?;
        if t.parent.is_none() {
            return Err(SpecError::NoAppTemplate { at, name });
        }
        let tr = template.get_ref();
        let webapps = match &tr.webapps {
            Some(w) => cx.image_path("webapps", w)?,
            None => ImagePath::parse("/usr/local/tomcat/webapps").expect("constant path"),
        };
        let context = context.unwrap_or_else(|| "ROOT".to_string());
        let context_path = ImagePath::parse(&context)
            .ok()
            .filter(|p| !p.is_root() && !p.as_str().contains('/'));
        let Some(context_path) = context_path else {
            return Err(cx.bad(at, "context", context, "a single directory name"));
        };
        let owner = match &tr.war_owner {
            Some(o) => Some(owner(&cx, "war_owner", o)?),
            None => None,
        };
        t.sources.push(Source {
            kind: SourceKind::War(war),
            digest: None,
            dest: webapps.join(&context_path),
            filter: Filter::default(),
            attrs: Attrs {
                owner,
                ..Attrs::default()
            },
            at: at.clone(),
        });
        for (k, v) in &a.env {
            t.config.env.insert(k.clone(), v.get_ref().clone());
        }
        for (k, v) in &a.labels {
            t.config.labels.insert(k.clone(), v.get_ref().clone());
        }
        t.at = at;
        tiers.insert(name, t);
    }

    if tiers.is_empty() {
        return Err(SpecError::Empty {
            file: file.to_path_buf(),
        });
    }
    let order = build_order(&tiers)?;
    let tiers = order
        .into_iter()
        .map(|n| tiers.remove(&n).expect("ordered names come from the map"))
        .collect();
    Ok(Plan {
        file: file.to_path_buf(),
        settings,
        tiers,
    })
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some('a'..='z' | '0'..='9'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
        && n.len() <= 128
}

fn check_name(cx: &Ctx, key: &str, name: &Spanned<String>) -> Result<()> {
    if valid_name(name.get_ref()) {
        Ok(())
    } else {
        Err(cx.bad(
            cx.loc(name),
            key,
            name.get_ref(),
            "a tier name ([a-z0-9][a-z0-9._-]*)",
        ))
    }
}

fn settings(cx: &Ctx, b: Option<&Spanned<raw::BuildSection>>) -> Result<Settings> {
    let default_epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok());
    let mut s = Settings {
        source_date_epoch: default_epoch.unwrap_or(0),
        compression: Compression::Zstd { level: 3 },
        repository: "strata".to_string(),
        tag: "latest".to_string(),
        os: "linux".to_string(),
        architecture: "amd64".to_string(),
    };
    let Some(b) = b else { return Ok(s) };
    let b = b.get_ref();
    if let (Some(e), None) = (&b.source_date_epoch, default_epoch) {
        if *e.get_ref() < 0 {
            return Err(cx.bad(
                cx.loc(e),
                "source_date_epoch",
                e.get_ref(),
                "a non-negative number of seconds",
            ));
        }
        s.source_date_epoch = *e.get_ref();
    }
    let level = b.level.as_ref();
    match b.compression.as_ref().map(|c| (c, c.get_ref().as_str())) {
        None | Some((_, "zstd")) => {
            let l = level.map(|l| *l.get_ref()).unwrap_or(3);
            if !(1..=19).contains(&l) {
                return Err(cx.bad(
                    cx.loc(level.expect("checked")),
                    "level",
                    l,
                    "a zstd level from 1 to 19",
                ));
            }
            s.compression = Compression::Zstd { level: l };
        }
        Some((_, "gzip")) => {
            let l = level.map(|l| *l.get_ref()).unwrap_or(6);
            if !(1..=9).contains(&l) {
                return Err(cx.bad(
                    cx.loc(level.expect("checked")),
                    "level",
                    l,
                    "a gzip level from 1 to 9",
                ));
            }
            s.compression = Compression::Gzip { level: l as u32 };
        }
        Some((c, other)) => return Err(cx.bad(cx.loc(c), "compression", other, "`zstd` or `gzip`")),
    }
    if let Some(r) = &b.repository {
        let ok = r.get_ref().split('/').all(valid_name) || r.get_ref().is_empty();
        if !ok {
            return Err(cx.bad(
                cx.loc(r),
                "repository",
                r.get_ref(),
                "a repository path (lowercase names separated by /)",
            ));
        }
        s.repository = r.get_ref().clone();
    }
    if let Some(t) = &b.tag {
        let v = t.get_ref();
        let ok = !v.is_empty()
            && v.len() <= 128
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !v.starts_with(['.', '-']);
        if !ok {
            return Err(cx.bad(cx.loc(t), "tag", v, "a tag ([A-Za-z0-9_][A-Za-z0-9._-]*)"));
        }
        s.tag = v.clone();
    }
    if let Some(p) = &b.platform {
        match p.get_ref().split_once('/') {
            Some((os, arch)) if !os.is_empty() && !arch.is_empty() => {
                s.os = os.to_string();
                s.architecture = arch.to_string();
            }
            _ => return Err(cx.bad(cx.loc(p), "platform", p.get_ref(), "`os/arch`, e.g. linux/amd64")),
        }
    }
    Ok(s)
}

fn tier(cx: &Ctx, name: &str, t: &Spanned<raw::Tier>, is_app: bool) -> Result<Tier> {
    let at = cx.loc(t);
    let r = t.get_ref();
    if !is_app {
        for (key, set) in [
            ("webapps", r.webapps.is_some()),
            ("war_owner", r.war_owner.is_some()),
        ] {
            if set {
                return Err(SpecError::KeyNotForKind {
                    at: at.clone(),
                    key: key.to_string(),
                    kind: "tier (only the [app] template)".to_string(),
                });
            }
        }
    }
    if r.parent.is_some() && r.base.is_some() {
        return Err(SpecError::ParentAndBase {
            at,
            tier: name.to_string(),
        });
    }
    let base = r.base.as_ref().map(|b| base_image(cx, b)).transpose()?;
    let sources = r
        .sources
        .iter()
        .map(|s| source(cx, s))
        .collect::<Result<Vec<_>>>()?;
    let delete = r
        .delete
        .iter()
        .map(|d| {
            let p = cx.image_path("delete", d)?;
            if p.is_root() {
                return Err(cx.bad(cx.loc(d), "delete", d.get_ref(), "a path below the root"));
            }
            Ok(p)
        })
        .collect::<Result<Vec<_>>>()?;
    let fixes = match &r.fixes {
        Some(f) => fixes(cx, f)?,
        None => Fixes::default(),
    };
    let mut config = ConfigChanges::default();
    for (k, v) in &r.env {
        if k.is_empty() || k.contains('=') {
            return Err(cx.bad(cx.loc(v), "env", k, "a variable name without `=`"));
        }
        config.env.insert(k.clone(), v.get_ref().clone());
    }
    config.entrypoint = r.entrypoint.as_ref().map(|v| v.get_ref().clone());
    config.cmd = r.cmd.as_ref().map(|v| v.get_ref().clone());
    config.user = r.user.as_ref().map(|v| v.get_ref().clone());
    if let Some(w) = &r.workdir {
        if !w.get_ref().starts_with('/') {
            return Err(cx.bad(cx.loc(w), "workdir", w.get_ref(), "an absolute path"));
        }
        config.workdir = Some(w.get_ref().clone());
    }
    for p in &r.ports {
        config.ports.push(port(cx, p)?);
    }
    for v in &r.volumes {
        if !v.get_ref().starts_with('/') {
            return Err(cx.bad(cx.loc(v), "volumes", v.get_ref(), "an absolute path"));
        }
        config.volumes.push(v.get_ref().clone());
    }
    for (k, v) in &r.labels {
        config.labels.insert(k.clone(), v.get_ref().clone());
    }
    config.stop_signal = r.stop_signal.as_ref().map(|v| v.get_ref().clone());
    Ok(Tier {
        name: name.to_string(),
        description: r.description.as_ref().map(|d| d.get_ref().clone()),
        parent: r.parent.as_ref().map(|p| p.get_ref().clone()),
        base,
        sources,
        delete,
        run: r.run.iter().map(|c| c.get_ref().clone()).collect(),
        fixes,
        config,
        is_app,
        at,
    })
}

fn port(cx: &Ctx, p: &Spanned<raw::PortSpec>) -> Result<String> {
    let (num, proto) = match p.get_ref() {
        raw::PortSpec::Number(n) => (Some(*n), "tcp".to_string()),
        raw::PortSpec::Text(t) => {
            let (n, proto) = t.split_once('/').unwrap_or((t.as_str(), "tcp"));
            (n.parse::<u16>().ok(), proto.to_string())
        }
    };
    match num {
        Some(n) if n > 0 && (proto == "tcp" || proto == "udp") => Ok(format!("{n}/{proto}")),
        _ => {
            let shown = match p.get_ref() {
                raw::PortSpec::Number(n) => n.to_string(),
                raw::PortSpec::Text(t) => t.clone(),
            };
            Err(cx.bad(cx.loc(p), "ports", shown, "a port like 8080 or \"8080/tcp\""))
        }
    }
}

fn fixes(cx: &Ctx, f: &Spanned<raw::Fixes>) -> Result<Fixes> {
    let r = f.get_ref();
    let mut out = Fixes::default();
    if let Some(tz) = &r.timezone {
        let v = tz.get_ref();
        let ok = !v.is_empty()
            && ImagePath::parse(v).is_ok()
            && !v.starts_with('/')
            && v.chars().all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
        if !ok {
            return Err(cx.bad(
                cx.loc(tz),
                "fixes.timezone",
                v,
                "an IANA zone name such as Asia/Shanghai",
            ));
        }
        out.timezone = Some(v.clone());
    }
    if let Some(e) = &r.encoding {
        let v = e.get_ref();
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(cx.bad(cx.loc(e), "fixes.encoding", v, "a charset name such as UTF-8"));
        }
        out.encoding = Some(v.clone());
    }
    out.hostname = r.hostname.as_ref().map(|h| *h.get_ref()).unwrap_or(false);
    out.init = r.init.as_ref().map(|h| *h.get_ref()).unwrap_or(false);
    if let Some(j) = &r.jvm {
        let jr = j.get_ref();
        let pct = |key: &str, v: &Option<Spanned<f64>>| -> Result<Option<f64>> {
            match v {
                Some(p) if !(1.0..=100.0).contains(p.get_ref()) => {
                    Err(cx.bad(cx.loc(p), key, p.get_ref(), "a percentage from 1 to 100"))
                }
                Some(p) => Ok(Some(*p.get_ref())),
                None => Ok(None),
            }
        };
        out.jvm = Some(JvmFix {
            max_ram_percentage: pct("fixes.jvm.max_ram_percentage", &jr.max_ram_percentage)?.unwrap_or(75.0),
            initial_ram_percentage: pct("fixes.jvm.initial_ram_percentage", &jr.initial_ram_percentage)?,
            exit_on_oom: jr.exit_on_oom.as_ref().map(|b| *b.get_ref()).unwrap_or(true),
            extra: jr.extra.iter().map(|e| e.get_ref().clone()).collect(),
        });
    }
    Ok(out)
}

/// Parents first; among tiers that are ready, by name, so the order is
/// stable. Reports unknown parents and cycles with the offending tier.
fn build_order(tiers: &BTreeMap<String, Tier>) -> Result<Vec<String>> {
    for t in tiers.values() {
        if let Some(p) = &t.parent
            && !tiers.contains_key(p)
        {
            return Err(SpecError::UnknownParent {
                at: t.at.clone(),
                tier: t.name.clone(),
                parent: p.clone(),
            });
        }
    }
    for t in tiers.values() {
        let mut seen = vec![t.name.clone()];
        let mut cur = t.parent.clone();
        while let Some(p) = cur {
            if seen.contains(&p) {
                seen.push(p);
                return Err(SpecError::Cycle {
                    at: t.at.clone(),
                    tier: t.name.clone(),
                    cycle: seen,
                });
            }
            seen.push(p.clone());
            cur = tiers[&p].parent.clone();
        }
    }
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < tiers.len() {
        for t in tiers.values() {
            if done.contains(&t.name) {
                continue;
            }
            if t.parent.as_ref().is_none_or(|p| done.contains(p)) {
                done.insert(t.name.clone());
                order.push(t.name.clone());
            }
        }
    }
    Ok(order)
}
