//! The deploy state store, both backends through the same checks: files
//! under a data directory, and a real etcd (Debian's etcd-server, started
//! here). Two handles stand for two orchestrators: what one writes the
//! other reads; over etcd a write made from a stale read is refused and
//! changes nothing, history entries are never replaced and come back in
//! version order, the drained hosts are shared.

mod common;

use std::sync::Arc;

use common::*;
use strata::deploy::DeployError;
use strata::deploy::drain::DrainList;
use strata::deploy::state::{self, AppDir, AppState, HistoryEntry, ImageRef, Run, StateStore};
use strata::digest::Digest;

fn image(name: &str) -> ImageRef {
    ImageRef {
        name: name.into(),
        manifest: Digest::sha256_of(name.as_bytes()),
        config: Digest::sha256_of(format!("{name} config").as_bytes()),
    }
}

fn entry(version: u64, outcome: &str) -> HistoryEntry {
    HistoryEntry {
        version,
        at: state::now(),
        action: "deploy".into(),
        mode: "redeploy".into(),
        image: image(&format!("shop:{version}")),
        from: None,
        outcome: outcome.into(),
        detail: String::new(),
        seconds: 1.5,
        by: "tests".into(),
    }
}

/// `a` and `b` are two orchestrators' views of one store (`data_a`,
/// `data_b`: their local directories). `shared`: the store compares
/// revisions (etcd).
fn exercise(
    a: Arc<dyn StateStore>,
    b: Arc<dyn StateStore>,
    data_a: &std::path::Path,
    data_b: &std::path::Path,
    shared: bool,
) {
    let (sa, sb) = (
        AppDir::new(data_a, a.clone(), "shop"),
        AppDir::new(data_b, b.clone(), "shop"),
    );
    // Nothing yet: an empty state named after the app.
    let st = sa.load().unwrap();
    assert_eq!((st.app.as_str(), st.version, st.run.is_none()), ("shop", 0, true));
    assert!(a.apps().unwrap().is_empty());

    // A journals a run; B reads it, machine and all.
    let mut st = AppState {
        app: "shop".into(),
        version: 1,
        ..Default::default()
    };
    st.run = Some(Run {
        version: 2,
        action: "deploy".into(),
        image: Some(image("shop:2")),
        mode: "auto".into(),
        from: [(1, Some(image("shop:1")))].into(),
        pid: 4242,
        machine: "host-a".into(),
        started_at: state::now(),
        by: "tests".into(),
    });
    sa.save(&st).unwrap();
    let seen = sb.load().unwrap();
    let run = seen.run.expect("B sees A's journal");
    assert_eq!((run.pid, run.machine.as_str(), seen.version), (4242, "host-a", 1));
    // A writes again on top of its own write: fine.
    st.version = 2;
    sa.save(&st).unwrap();
    // B read before that write: over etcd its write is refused and
    // changes nothing; A's own next write still goes through.
    st.version = 99;
    let stale = sb.save(&st);
    if shared {
        let e = stale.expect_err("a write over a newer revision is refused");
        assert!(matches!(e, DeployError::StateConflict { .. }), "{e}");
        assert!(e.to_string().contains("written by another orchestrator"), "{e}");
        assert_eq!(sa.load().unwrap().version, 2, "nothing was written");
        st.version = 3;
        sa.save(&st).unwrap();
        // Read again, B may write.
        sb.load().unwrap();
        st.version = 4;
        sb.save(&st).unwrap();
        assert_eq!(sa.load().unwrap().version, 4);
    } else {
        // One machine: the deploy lock serialises writers; no revisions.
        stale.unwrap();
    }

    // History: appended by either, read by both, in version order; an
    // entry of a version already there is kept beside it, not over it.
    sa.append_history(&entry(1, "ok")).unwrap();
    sb.append_history(&entry(2, "interrupted")).unwrap();
    sa.append_history(&entry(2, "ok")).unwrap();
    sb.append_history(&entry(10, "ok")).unwrap();
    for h in [sa.history().unwrap(), sb.history().unwrap()] {
        let got: Vec<(u64, &str)> = h.iter().map(|e| (e.version, e.outcome.as_str())).collect();
        assert_eq!(got, [(1, "ok"), (2, "interrupted"), (2, "ok"), (10, "ok")]);
    }
    AppDir::new(data_b, b.clone(), "cart")
        .append_history(&entry(1, "ok"))
        .unwrap();
    assert_eq!(a.apps().unwrap(), ["cart", "shop"]);
    let all = state::histories(a.as_ref());
    assert_eq!(all.len(), 2);
    assert_eq!((all[1].0.as_str(), all[1].1.len()), ("shop", 4));

    // The drained hosts: one list for both.
    let mut la = DrainList::load(a.as_ref()).unwrap();
    let mut lb = DrainList::load(b.as_ref()).unwrap();
    la.add("tcp://10.0.0.4:2376", "ops@a".into(), true);
    la.save(a.as_ref()).unwrap();
    assert!(DrainList::load(b.as_ref()).unwrap().fenced("tcp://10.0.0.4:2376"));
    lb.add("tcp://10.0.0.5:2376", "ops@b".into(), false);
    let stale = lb.save(b.as_ref());
    if shared {
        assert!(
            matches!(stale, Err(DeployError::StateConflict { .. })),
            "B's list was read before A's drain: {stale:?}"
        );
        let mut lb = DrainList::load(b.as_ref()).unwrap();
        lb.add("tcp://10.0.0.5:2376", "ops@b".into(), false);
        lb.save(b.as_ref()).unwrap();
        let l = DrainList::load(a.as_ref()).unwrap();
        assert!(l.fenced("tcp://10.0.0.4:2376") && l.drained("tcp://10.0.0.5:2376"));
    } else {
        stale.unwrap();
    }
}

#[test]
fn the_file_store_keeps_the_layout_it_always_had() {
    let d = tempfile::tempdir().unwrap();
    let s = state::open("file", "file", d.path()).unwrap();
    exercise(s.clone(), s.clone(), d.path(), d.path(), false);
    assert!(d.path().join("apps/shop/state.json").is_file());
    assert_eq!(
        std::fs::read_to_string(d.path().join("apps/shop/history.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    assert!(d.path().join("drained.json").is_file());
    assert_eq!(s.location(), d.path().display().to_string());
}

#[test]
fn two_orchestrators_share_the_state_through_etcd() {
    if !have_tool("etcd") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let e = common::etcd::start(d.path());
    let (da, db) = (d.path().join("a"), d.path().join("b"));
    let a = state::open(&e.spec(), &e.spec(), &da).unwrap();
    let b = state::open(&e.spec(), &e.spec(), &db).unwrap();
    assert_eq!(a.location(), e.spec());
    exercise(a, b, &da, &db, true);
    // Nothing of the state went to the local directories.
    assert!(!da.join("apps").exists() && !db.join("apps").exists());
    assert!(!da.join("drained.json").exists());

    // An orchestrator that kept its state in files before: the first
    // open over etcd copies the apps etcd does not know, and only those.
    let old = d.path().join("old");
    let files = state::open("file", "file", &old).unwrap();
    let before = AppDir::new(&old, files.clone(), "legacy");
    before
        .save(&AppState {
            app: "legacy".into(),
            version: 2,
            ..Default::default()
        })
        .unwrap();
    before.append_history(&entry(1, "ok")).unwrap();
    before.append_history(&entry(2, "ok")).unwrap();
    let shop = AppDir::new(&old, files.clone(), "shop");
    shop.append_history(&entry(77, "ok")).unwrap();
    let c = state::open(&e.spec(), &e.spec(), &old).unwrap();
    let legacy = AppDir::new(&old, c.clone(), "legacy");
    assert_eq!(legacy.load().unwrap().version, 2);
    assert_eq!(legacy.history().unwrap().len(), 2);
    assert_eq!(
        c.history("shop").unwrap().len(),
        4,
        "shop was in etcd already: untouched"
    );
    // Opened again: nothing is copied twice.
    let c = state::open(&e.spec(), &e.spec(), &old).unwrap();
    assert_eq!(c.history("legacy").unwrap().len(), 2);
    assert_eq!(c.apps().unwrap(), ["cart", "legacy", "shop"]);
}

#[test]
fn etcd_state_needs_the_lock_in_etcd_and_a_bad_store_is_named() {
    let d = tempfile::tempdir().unwrap();
    let e = match state::open("etcd://127.0.0.1:1", "file", d.path()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("etcd state with a per-machine lock was accepted"),
    };
    assert!(e.contains("--leases etcd://127.0.0.1:1"), "{e}");
    let e = match state::open("redis://x", "file", d.path()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    assert!(e.contains("`redis://x`") && e.contains("etcd://HOST:PORT"), "{e}");
    // The CLI says the same, and nothing is deployed.
    let o = strata()
        .env("STRATA_STORE", d.path().join("store"))
        .args(["status", "sample", "--state", "etcd://127.0.0.1:1", "--data"])
        .arg(d.path())
        .arg("--apps")
        .arg(repo().join("deploy/apps"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("deploy lock"), "{}", stderr(&o));
}
