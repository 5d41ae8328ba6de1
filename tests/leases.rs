//! IP leases under concurrency: three `strata lease` processes lease 200
//! addresses at once through a real etcd (Debian's etcd-server, started
//! here), and through the file store; no address twice, none lost.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const RANGE: &str = "10.90.0.10-10.90.0.209";

/// `strata lease VERB web --range RANGE --store STORE --data DATA OWNERS…`
fn lease(verb: &str, store: &str, data: &Path, owners: &[&str]) -> Command {
    let mut c = strata();
    c.args(["lease", verb, "web", "--range", RANGE, "--store", store, "--data"])
        .arg(data)
        .args(owners);
    c
}

/// Three processes take 66/67/67 owners each from a pool of 200 at once.
fn race(store: &str, data: &Path) -> BTreeMap<String, String> {
    let children: Vec<_> = [(0, 66), (66, 133), (133, 200)]
        .iter()
        .map(|&(a, b)| {
            let owners: Vec<String> = (a..b).map(|i| format!("app-{i}")).collect();
            let owners: Vec<&str> = owners.iter().map(String::as_str).collect();
            lease("take", store, data, &owners)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut leases = BTreeMap::new();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        for line in stdout(&o).lines() {
            let (owner, ip) = line.split_once(' ').unwrap();
            leases.insert(owner.to_string(), ip.to_string());
        }
    }
    assert_eq!(leases.len(), 200, "every owner got an address");
    let distinct: HashSet<_> = leases.values().collect();
    assert_eq!(distinct.len(), 200, "no address twice");
    // What the store lists is what the processes were told; the pool is full.
    let o = lease("list", store, data, &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: BTreeMap<String, String> = stdout(&o)
        .lines()
        .map(|l| {
            let (ip, owner) = l.split_once(' ').unwrap();
            (owner.to_string(), ip.to_string())
        })
        .collect();
    assert_eq!(listed, leases, "no lease lost");
    let o = lease("take", store, data, &["one-too-many"]).output().unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("exhausted"),
        "{}",
        stderr(&o)
    );
    // Taking again keeps the address; a released one is reused.
    let o = lease("take", store, data, &["app-7"]).output().unwrap();
    assert_eq!(stdout(&o).trim(), format!("app-7 {}", leases["app-7"]));
    let o = lease("release", store, data, &["app-7"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = lease("take", store, data, &["newcomer"]).output().unwrap();
    assert_eq!(stdout(&o).trim(), format!("newcomer {}", leases["app-7"]));
    leases
}

#[test]
fn three_processes_lease_200_addresses_through_etcd() {
    if !have_tool("etcd") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = common::etcd::start(d.path());
    let store = e.spec();
    race(&store, d.path());

    // The deploy lock: one holder at a time, across orchestrators.
    let (a, b) = (
        strata::lease::open(&store, d.path()).unwrap(),
        strata::lease::open(&store, d.path()).unwrap(),
    );
    let held = a.lock("deploy-shop", "orchestrator A").unwrap();
    let refused = b
        .lock("deploy-shop", "orchestrator B")
        .err()
        .expect("the lock is held");
    assert!(
        refused.to_string().contains("locked by orchestrator A"),
        "{refused}"
    );
    drop(held);
    let again = b.lock("deploy-shop", "orchestrator B").expect("released on drop");
    drop(again);
}

#[test]
fn three_processes_lease_200_addresses_through_the_file_store() {
    let d = tempfile::tempdir().unwrap();
    race("file", d.path());
}

#[test]
fn a_bad_pool_or_store_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let o = strata()
        .args([
            "lease",
            "take",
            "web",
            "--range",
            "10.0.0.9-10.0.0.1",
            "x",
            "--data",
        ])
        .arg(d.path())
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("comes after"),
        "{}",
        stderr(&o)
    );
    let o = strata()
        .args([
            "lease",
            "take",
            "web",
            "--range",
            "10.0.0.1-10.0.0.9",
            "--store",
            "redis://x",
            "x",
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("etcd://"),
        "{}",
        stderr(&o)
    );
}
