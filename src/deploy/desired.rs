//! The desired state of an instance's container that is not in its
//! image: what the app spec says about env, volumes, log dir, memory,
//! command, user, network, stop grace and health. Recorded on every
//! container strata creates (label `org.strata.spec`), so a deploy can
//! tell that the spec changed since the container was made and redeploy,
//! saying what changed. Pure functions over data: no engine calls here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::spec::{App, Check};

/// The label that holds [`Desired`] as JSON on each container.
pub const LABEL: &str = "org.strata.spec";

/// What the spec asks of a container beyond its image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub env: BTreeMap<String, String>,
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `NAME driver SUBNET`.
    pub network: String,
    pub stop_grace_s: u64,
    /// The health check as text (`http :8080/health.txt every 150ms …`).
    pub health: String,
}

impl Desired {
    pub fn of(app: &App) -> Desired {
        let net = &app.network;
        let driver = match &net.driver {
            super::spec::Driver::Bridge => "bridge".to_string(),
            super::spec::Driver::Macvlan { parent } => format!("macvlan on {parent}"),
        };
        let h = &app.health;
        let check = match &h.check {
            Check::Http { port, path } => format!("http :{port}{path}"),
            Check::Tcp { port } => format!("tcp :{port}"),
            Check::Exec(cmd) => format!("exec {cmd:?}"),
        };
        Desired {
            env: app.env.clone(),
            volumes: app.volumes.iter().map(|v| v.0.clone()).collect(),
            log_dir: app.log_dir.clone(),
            memory_mib: app.memory_mib,
            command: app.command.clone(),
            user: app.user.clone(),
            network: format!("{} {driver} {}", net.name, net.subnet),
            stop_grace_s: app.stop_grace.as_secs().max(1),
            health: format!(
                "{check} every {:?}, timeout {:?}, {} tries",
                h.interval, h.timeout, h.retries
            ),
        }
    }

    pub fn to_label(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The desired state recorded on a container; None when the label is
    /// missing or unreadable (a container made by an older strata).
    pub fn from_labels(labels: &std::collections::HashMap<String, String>) -> Option<Desired> {
        serde_json::from_str(labels.get(LABEL)?).ok()
    }
}

/// What changed from `old` to `new`, one phrase each (`env DV_MARKER
/// added`, `memory 400 MiB → 512 MiB`); empty when nothing did.
pub fn differences(old: &Desired, new: &Desired) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &new.env {
        match old.env.get(k) {
            None => out.push(format!("env {k} added")),
            Some(o) if o != v => out.push(format!("env {k} changed")),
            Some(_) => {}
        }
    }
    for k in old.env.keys().filter(|k| !new.env.contains_key(*k)) {
        out.push(format!("env {k} removed"));
    }
    for v in new.volumes.iter().filter(|v| !old.volumes.contains(v)) {
        out.push(format!("volume {v} added"));
    }
    for v in old.volumes.iter().filter(|v| !new.volumes.contains(v)) {
        out.push(format!("volume {v} removed"));
    }
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "none".into());
    if old.log_dir != new.log_dir {
        out.push(format!("log_dir {} → {}", opt(&old.log_dir), opt(&new.log_dir)));
    }
    if old.memory_mib != new.memory_mib {
        let m = |m: Option<u64>| {
            m.map(|m| format!("{m} MiB"))
                .unwrap_or_else(|| "unlimited".into())
        };
        out.push(format!("memory {} → {}", m(old.memory_mib), m(new.memory_mib)));
    }
    if old.command != new.command {
        out.push("command changed".into());
    }
    if old.user != new.user {
        out.push(format!("user {} → {}", opt(&old.user), opt(&new.user)));
    }
    if old.network != new.network {
        out.push(format!("network {} → {}", old.network, new.network));
    }
    if old.stop_grace_s != new.stop_grace_s {
        out.push(format!(
            "stop_grace {}s → {}s",
            old.stop_grace_s, new.stop_grace_s
        ));
    }
    if old.health != new.health {
        out.push(format!("health {} → {}", old.health, new.health));
    }
    out
}

/// How a running container differs from the desired state it records:
/// env entries, binds and memory as the engine reports them.
pub fn drift(desired: &Desired, live: &Live) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in &desired.env {
        let want = format!("{k}={v}");
        if !live.env.contains(&want) {
            out.push(format!("env {k} is not {v:?} in the container"));
        }
    }
    for v in &desired.volumes {
        if !live.binds.contains(v) {
            out.push(format!("volume {v} is not mounted"));
        }
    }
    let want_mem = desired.memory_mib.map(|m| m * 1024 * 1024).unwrap_or(0);
    if live.memory_bytes != want_mem {
        out.push(format!(
            "memory limit is {} bytes, the spec says {want_mem}",
            live.memory_bytes
        ));
    }
    out
}

/// What the engine reports of a container's config.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub env: Vec<String>,
    pub binds: Vec<String>,
    pub memory_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(extra: &str) -> App {
        let text = format!(
            "name = \"a\"\n{extra}\n[network]\nname = \"n\"\nsubnet = \"10.0.0.0/24\"\npool = \"10.0.0.10-10.0.0.20\"\n"
        );
        super::super::spec::parse(std::path::Path::new("a.toml"), &text).unwrap()
    }

    #[test]
    fn every_kind_of_spec_change_is_named() {
        let base = Desired::of(&app("env = { A = \"1\" }\nmemory_mib = 400"));
        assert!(differences(&base, &base).is_empty());
        let cases = [
            (
                "env = { A = \"1\", DV_MARKER = \"x\" }\nmemory_mib = 400",
                "env DV_MARKER added",
            ),
            ("env = { A = \"2\" }\nmemory_mib = 400", "env A changed"),
            ("memory_mib = 400", "env A removed"),
            (
                "env = { A = \"1\" }\nmemory_mib = 512",
                "memory 400 MiB → 512 MiB",
            ),
            (
                "env = { A = \"1\" }\nmemory_mib = 400\nvolumes = [\"v:/data\"]",
                "volume v:/data added",
            ),
            (
                "env = { A = \"1\" }\nmemory_mib = 400\ncommand = [\"sleep\", \"1\"]",
                "command changed",
            ),
            (
                "env = { A = \"1\" }\nmemory_mib = 400\nuser = \"101\"",
                "user none → 101",
            ),
            (
                "env = { A = \"1\" }\nmemory_mib = 400\nlog_dir = \"/logs\"",
                "log_dir none → /logs",
            ),
            (
                "env = { A = \"1\" }\nmemory_mib = 400\nstop_grace = \"3s\"",
                "stop_grace 10s → 3s",
            ),
        ];
        for (spec, want) in cases {
            let d = differences(&base, &Desired::of(&app(spec)));
            assert_eq!(d, [want], "{spec}");
        }
        let mut h = app("env = { A = \"1\" }\nmemory_mib = 400");
        h.health.retries = 3;
        assert!(differences(&base, &Desired::of(&h))[0].starts_with("health "));
        let mut n = app("env = { A = \"1\" }\nmemory_mib = 400");
        n.network.name = "other".into();
        assert!(differences(&base, &Desired::of(&n))[0].starts_with("network n "));
        // The label round-trips.
        let labels = std::collections::HashMap::from([(LABEL.to_string(), base.to_label())]);
        assert_eq!(Desired::from_labels(&labels), Some(base));
    }

    #[test]
    fn drift_names_what_the_engine_reports_otherwise() {
        let d = Desired::of(&app(
            "env = { A = \"1\" }\nmemory_mib = 1\nvolumes = [\"v:/data\"]",
        ));
        let live = Live {
            env: vec!["A=1".into(), "PATH=/bin".into()],
            binds: vec!["v:/data".into()],
            memory_bytes: 1024 * 1024,
        };
        assert!(drift(&d, &live).is_empty());
        let bad = Live {
            env: vec!["A=2".into()],
            binds: vec![],
            memory_bytes: 0,
        };
        assert_eq!(drift(&d, &bad).len(), 3, "{:?}", drift(&d, &bad));
    }
}
