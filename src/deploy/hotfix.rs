//! In-place hotfix of one running instance, without a restart:
//! back up the affected files from the container, upload a staged tar into
//! a staging directory inside it, verify checksums with an exec, move the
//! files into place (one rename each), delete removed files, run the
//! reload action, and check the container did not restart. Any failure
//! after the first change puts the backup back.
//!
//! Uploads into a running container are not atomic (a failing archive
//! leaves what it wrote), which is why nothing is written outside the
//! staging directory until every byte is there and verified.

use std::collections::HashSet;
use std::io::BufReader;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::host::Host;
use super::plan;
use super::spec::Reload;
use super::state::{self, AppState, ImageRef, Operation};
use super::{DeployError, InstanceReport, Orchestrator, Result, Target, fault, health, verify};
use crate::oci::LayerCompression;
use crate::oci::diff::ChangeKind;
use crate::oci::listing::{self, EntryKind};
use crate::store::Store;

/// What a restore needs, kept next to the backups (`backup.json`).
#[derive(Debug, Serialize, Deserialize)]
struct BackupIndex {
    container: String,
    /// Shell commands that remove added paths and the staging directory.
    restore_script: String,
    /// The paths backed up (relative to `/`), in `backup.tar` when they
    /// existed.
    paths: Vec<String>,
    /// The paths described in `before.txt`, as they were before.
    #[serde(default)]
    described: Vec<String>,
}

const BACKUP_TAR: &str = "backup.tar";
/// The changed paths as the container had them before the hotfix.
const BEFORE: &str = "before.txt";

/// Fault injection for the crash tests: `STRATA_FAULT=crash-at:NAME`
/// kills the process (as kill -9 would: no cleanup runs) the first time
/// it reaches point NAME, `crash-at:NAME#N` the N-th time;
/// `pause-at:NAME[#N]` stops there for good instead (it says so on
/// stderr), so a test can kill the process itself, from outside, while
/// its threads (an etcd lock's keep-alive) still run.
pub(super) fn crash_point(name: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEEN: std::sync::Mutex<Vec<(String, AtomicU32)>> = std::sync::Mutex::new(Vec::new());
    let Ok(f) = std::env::var("STRATA_FAULT") else {
        return;
    };
    let points: Vec<(bool, &str, u32)> = f
        .split(',')
        .filter_map(|x| {
            let (pause, x) = match (x.strip_prefix("crash-at:"), x.strip_prefix("pause-at:")) {
                (Some(x), _) => (false, x),
                (_, Some(x)) => (true, x),
                _ => return None,
            };
            let (point, nth) = match x.split_once('#') {
                Some((p, n)) => (p, n.parse().unwrap_or(1)),
                None => (x, 1u32),
            };
            (point == name).then_some((pause, x, nth))
        })
        .collect();
    if points.is_empty() {
        return;
    }
    let count = {
        let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
        match seen.iter().find(|(p, _)| p == name) {
            Some((_, c)) => c.fetch_add(1, Ordering::SeqCst) + 1,
            None => {
                seen.push((name.to_string(), AtomicU32::new(1)));
                1
            }
        }
    };
    for (pause, x, nth) in points {
        if count != nth {
            continue;
        }
        if pause {
            eprintln!("injected fault: pausing at {name} (STRATA_FAULT=pause-at:{x})");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        eprintln!("injected fault: crashing at {name} (STRATA_FAULT=crash-at:{x})");
        std::process::abort();
    }
}

impl Orchestrator<'_> {
    pub(super) fn hotfix_instance(
        &self,
        st: &mut AppState,
        index: u32,
        target: &Target,
    ) -> Result<InstanceReport> {
        let t0 = std::time::Instant::now();
        let at = |phase: &str| tracing::debug!("hotfix: {phase} after {} ms", t0.elapsed().as_millis());
        let inst = st.instances[&index].clone();
        let name = inst.name.clone();
        let host = self.host_of_instance(&inst)?;
        let from = inst.effective().clone();
        let changes = self.changes(&from, target)?;
        let old_tree = self.tree(&from.manifest)?;
        let new_tree = self.tree(&target.image.manifest)?;

        let writes = self.check_hotfix(&from, target)?;

        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let hdir = self.dir.hotfix_dir(&id)?;
        let stage_rel = format!(".strata-hotfix-{id}");
        let stage = format!("/{stage_rel}");
        let tar = hdir.join("stage.tar");
        let staged: Vec<&listing::Entry> = writes.iter().filter(|e| e.kind != EntryKind::Dir).collect();
        write_stage(
            self.store,
            target,
            &staged,
            &plan::checksums(&changes),
            &stage_rel,
            &tar,
        )?;

        at("staged");
        let before = self
            .block(host.inspect(&inst.container))?
            .filter(|c| c.running)
            .ok_or_else(|| DeployError::Instance {
                instance: name.clone(),
                why: format!("container {} is not running", inst.container_name),
            })?;

        // What every changed path is now, to check a restore against, and
        // what it must be once applied.
        let paths: Vec<String> = changes.iter().map(|c| c.path.clone()).collect();
        let want: Vec<String> = paths.iter().map(|p| verify::expected(new_tree.get(p))).collect();
        // Backups, from the container itself (it may differ from the
        // image): one tar of every affected path on the stdout of one
        // exec, whose stderr describes the changed paths as they are now.
        let backup_paths = plan::backup_paths(&changes);
        let snapshot = if backup_paths.is_empty() {
            self.describe(&host, &inst.container, &paths)?
        } else {
            let script = format!(
                "( {} ) >&2\n{}",
                verify::describe_body(&paths),
                plan::backup_script(&backup_paths)
            );
            let o = self.block(host.exec_to(
                &inst.container,
                &sh(&script),
                Some("0"),
                Some(&hdir.join(BACKUP_TAR)),
            ))?;
            if o.code != 0 {
                return Err(DeployError::Instance {
                    instance: name.clone(),
                    why: format!(
                        "backing up the files to change exited {} (the container needs sh and tar): {}",
                        o.code,
                        o.output.trim()
                    ),
                });
            }
            o.output
        };
        crate::store::write_atomic(&hdir.join(BEFORE), snapshot.as_bytes()).map_err(|source| {
            DeployError::Io {
                path: hdir.join(BEFORE),
                source,
            }
        })?;
        let index_file = BackupIndex {
            container: inst.container.clone(),
            restore_script: plan::restore_script(&stage, &changes, &old_tree),
            paths: backup_paths,
            described: paths.clone(),
        };
        let index_path = hdir.join("backup.json");
        crate::store::write_atomic(
            &index_path,
            &serde_json::to_vec_pretty(&index_file).unwrap_or_default(),
        )
        .map_err(|source| DeployError::Io {
            path: index_path.clone(),
            source,
        })?;
        let journal = |st: &mut AppState, phase: &str| {
            st.operation = Some(Operation::Hotfix {
                index,
                pid: std::process::id(),
                machine: state::machine(),
                started_at: state::now(),
                container: inst.container.clone(),
                backup: hdir.clone(),
                phase: phase.to_string(),
            });
            self.dir.save(st)
        };
        journal(st, "staging")?;
        crash_point("hotfix-staging");
        at("backed up");

        let moves = changes
            .iter()
            .filter(|c| c.kind != EntryKind::Dir && c.change != ChangeKind::Deleted)
            .count();
        // Upload, verify every staged byte, move into place, then read
        // every changed path back. Once more when the read-back differs.
        let apply = |st: &mut AppState, attempt: u32| -> std::result::Result<Vec<String>, String> {
            let size = std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
            let cut = (attempt == 0 && fault("hotfix-upload")).then_some(size / 2);
            self.block(host.upload(&inst.container, "/", &tar, cut))
                .map_err(|e| e.to_string())?;
            at("uploaded");
            journal(st, "applying").map_err(|e| e.to_string())?;
            crash_point("hotfix-applying");
            let fail_after = (attempt == 0 && fault("hotfix-move")).then_some(moves / 2);
            // (A change that only deletes has an empty checksum list.)
            // The same exec then reads every changed path back.
            let script = format!(
                "cd {} || exit 1\nif [ -s SHA256SUMS ] && ! sha256sum -c -s SHA256SUMS; then\n  echo 'the staged files do not match their checksums' >&2\n  exit 3\nfi\n{}set +e\n{}",
                plan::quote(&stage),
                plan::apply_script(&stage, &changes, &new_tree, fail_after),
                verify::describe_script(&paths)
            );
            let o = self
                .block(host.exec(&inst.container, &sh(&script), Some("0")))
                .map_err(|e| e.to_string())?;
            if o.code != 0 {
                return Err(format!(
                    "verifying and moving files into place exited {}: {}",
                    o.code,
                    o.output.trim()
                ));
            }
            at("moved and read back");
            let mut wrong = verify::mismatches(&paths, &want, &verify::parse(&o.output));
            if fault("hotfix-unverified") {
                wrong.push("injected fault: read-back differs (STRATA_FAULT=hotfix-unverified)".into());
            }
            Ok(wrong)
        };
        let applied = (|| -> std::result::Result<std::result::Result<(), String>, String> {
            let mut wrong = apply(st, 0)?;
            if !wrong.is_empty() {
                self.say(&format!(
                    "{name}: read back after the hotfix: {}; applying again",
                    wrong.join("; ")
                ));
                wrong = apply(st, 1)?;
            }
            if !wrong.is_empty() {
                return Ok(Err(wrong.join("; ")));
            }
            crash_point("hotfix-applied");
            self.reload(&host, &inst.container)
                .map_err(|e| format!("reload: {e}"))?;
            let after = self
                .block(host.inspect(&inst.container))
                .map_err(|e| e.to_string())?;
            match after {
                Some(a) if a.started_at == before.started_at && a.pid == before.pid => {}
                Some(a) => {
                    return Err(DeployError::Restarted {
                        instance: name.clone(),
                        before: before.started_at.clone(),
                        after: a.started_at,
                    }
                    .to_string());
                }
                None => return Err("the container disappeared".into()),
            }
            at("reloaded and inspected");
            self.block(health::wait_healthy_within(
                &host,
                &inst.container,
                inst.ip,
                &self.app.health,
                Some(self.app.hotfix.health_deadline),
            ))
            .map_err(|e| format!("unhealthy after the hotfix: {e}"))?;
            Ok(Ok(()))
        })();

        let result = match applied {
            Ok(Ok(())) => {
                let i = st.instances.get_mut(&index).expect("instance exists");
                i.hotfix = Some(target.image.clone());
                i.health = "healthy".into();
                i.since = state::now();
                Ok(InstanceReport {
                    instance: name.clone(),
                    host: inst.host.clone(),
                    ip: inst.ip.to_string(),
                    mode: "hotfix".into(),
                    outcome: "ok".into(),
                    seconds: 0.0,
                    gap_seconds: None,
                    files: Some(changes.iter().filter(|c| c.kind != EntryKind::Dir).count()),
                    detail: format!(
                        "{} + hotfix {}; {} path(s) read back as in the image; container {} not restarted (pid {}, started {})",
                        inst.image,
                        target.image,
                        paths.len(),
                        inst.container_name,
                        before.pid,
                        before.started_at
                    ),
                })
            }
            // The files will not stay as the image has them: the caller
            // replaces the container instead.
            Ok(Err(why)) => Err(DeployError::Unverified {
                instance: name.clone(),
                why,
            }),
            Err(why) => {
                self.say(&format!("{name}: hotfix failed ({why}); restoring the backup"));
                let restored = restore_from_dir(self, &host, &inst.container, &hdir)
                    .and_then(|()| check_restored(self, &host, &inst.container, &hdir));
                match restored {
                    Ok(()) => Err(DeployError::HotfixRestored {
                        instance: name.clone(),
                        why,
                    }),
                    Err(e) => Err(DeployError::HotfixRestoreFailed {
                        instance: name.clone(),
                        why,
                        restore: e.to_string(),
                        backup: hdir.clone(),
                    }),
                }
            }
        };
        // A failed restore keeps its journal and backup: the next command
        // tries again.
        if !matches!(result, Err(DeployError::HotfixRestoreFailed { .. })) {
            st.operation = None;
            self.dir.save(st)?;
            let _ = std::fs::remove_dir_all(&hdir);
        }
        result
    }

    /// Describes `paths` as the container has them (see [`verify`]).
    pub(super) fn describe(&self, host: &Host, container: &str, paths: &[String]) -> Result<String> {
        let o = self.block(host.exec(container, &sh(&verify::describe_script(paths)), Some("0")))?;
        if o.code != 0 {
            return Err(DeployError::Instance {
                instance: container.to_string(),
                why: format!(
                    "reading files back exited {} (the container needs sh, stat, sha256sum and readlink): {}",
                    o.code,
                    o.output.trim()
                ),
            });
        }
        Ok(o.output)
    }

    /// Every entry a hotfix from `from` to `target` would write, checked
    /// (no absolute paths, no `..`, nothing through a symlink, no link
    /// escaping the root) before anything is written.
    pub(super) fn check_hotfix(&self, from: &ImageRef, target: &Target) -> Result<Vec<listing::Entry>> {
        let changes = self.changes(from, target)?;
        let old_tree = self.tree(&from.manifest)?;
        let new_tree = self.tree(&target.image.manifest)?;
        let writes: Vec<listing::Entry> = changes
            .iter()
            .filter(|c| c.change != ChangeKind::Deleted)
            .filter_map(|c| new_tree.get(&c.path).cloned())
            .collect();
        plan::validate_entries(&writes, &old_tree).map_err(|source| DeployError::Hostile {
            image: target.image.to_string(),
            source,
        })?;
        if writes.iter().any(|e| e.kind == EntryKind::Hardlink) {
            return Err(DeployError::NotHotfixable {
                image: target.image.to_string(),
                reason: "the change contains hard links".into(),
            });
        }
        Ok(writes)
    }

    fn reload(&self, host: &Host, container: &str) -> Result<()> {
        match &self.app.hotfix.reload {
            Reload::None => Ok(()),
            Reload::Signal(s) => self.block(host.kill(container, s)),
            Reload::Exec(cmd) => self.exec_ok(host, container, cmd),
            Reload::TomcatContext(ctx) => {
                let web = format!("{ctx}/WEB-INF/web.xml");
                let script = format!("test -f {0} && touch {0}", plan::quote(&web));
                self.exec_ok(host, container, &sh(&script))
            }
        }
    }

    fn exec_ok(&self, host: &Host, container: &str, cmd: &[String]) -> Result<()> {
        let o = self.block(host.exec(container, cmd, None))?;
        if o.code == 0 {
            Ok(())
        } else {
            Err(DeployError::Instance {
                instance: container.to_string(),
                why: format!("`{}` exited {}: {}", cmd.join(" "), o.code, o.output.trim()),
            })
        }
    }
}

pub(super) fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.to_string()]
}

/// Whether `dir` holds a hotfix's backup (its index): it does on the
/// machine that took it, once the hotfix was journaled.
pub(super) fn has_backup(dir: &Path) -> bool {
    dir.join("backup.json").is_file()
}

/// Puts the backups in `dir` back into the container: added paths and the
/// staging directory go, then every backed-up path is uploaded again.
pub(super) fn restore_from_dir(o: &Orchestrator<'_>, host: &Host, container: &str, dir: &Path) -> Result<()> {
    let index_path = dir.join("backup.json");
    let index: BackupIndex = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| DeployError::Corrupt {
            path: index_path.clone(),
            why: e.to_string(),
        })?,
        // The crash came before any backup was written: nothing changed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(DeployError::Io {
                path: index_path,
                source,
            });
        }
    };
    if index.container != container {
        return Err(DeployError::Corrupt {
            path: index_path,
            why: format!("the backup is of container {}, not {container}", index.container),
        });
    }
    let out = o.block(host.exec(container, &sh(&index.restore_script), Some("0")))?;
    if out.code != 0 {
        return Err(DeployError::Instance {
            instance: container.to_string(),
            why: format!("removing added files exited {}: {}", out.code, out.output.trim()),
        });
    }
    if index.paths.is_empty() {
        return Ok(());
    }
    // Docker extracts over an existing file without truncating it (a
    // shorter backup would keep the tail of the longer file), so the
    // backup goes into a restore directory first and is renamed into place.
    let rdir = format!(
        "/.strata-restore-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let mkdir = format!("rm -rf {0} && mkdir -p {0}", plan::quote(&rdir));
    let out = o.block(host.exec(container, &sh(&mkdir), Some("0")))?;
    if out.code != 0 {
        return Err(DeployError::Instance {
            instance: container.to_string(),
            why: format!("making {rdir} exited {}: {}", out.code, out.output.trim()),
        });
    }
    let tar = dir.join(BACKUP_TAR);
    if std::fs::metadata(&tar).is_ok_and(|m| m.len() > 0) {
        o.block(host.upload(container, &rdir, &tar, None))?;
    }
    let out = o.block(host.exec(
        container,
        &sh(&plan::put_back_script(&rdir, &index.paths)),
        Some("0"),
    ))?;
    if out.code != 0 {
        return Err(DeployError::Instance {
            instance: container.to_string(),
            why: format!(
                "moving the backup into place exited {}: {}",
                out.code,
                out.output.trim()
            ),
        });
    }
    Ok(())
}

/// Reads the changed paths back after a restore: they must be as they
/// were before the hotfix (and no staging left behind).
pub(super) fn check_restored(o: &Orchestrator<'_>, host: &Host, container: &str, dir: &Path) -> Result<()> {
    let index_path = dir.join("backup.json");
    let (Ok(index), Ok(before)) = (
        std::fs::read(&index_path),
        std::fs::read_to_string(dir.join(BEFORE)),
    ) else {
        // The crash came before the snapshot: nothing was changed.
        return Ok(());
    };
    let index: BackupIndex = serde_json::from_slice(&index).map_err(|e| DeployError::Corrupt {
        path: index_path,
        why: e.to_string(),
    })?;
    let want: Vec<String> = {
        let d = verify::parse(&before);
        (0..index.described.len())
            .map(|i| d.lines.get(&i).cloned().unwrap_or_default())
            .collect()
    };
    let got = verify::parse(&o.describe(host, container, &index.described)?);
    let wrong = verify::mismatches(&index.described, &want, &got);
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(DeployError::Instance {
            instance: container.to_string(),
            why: format!("after restoring the backup: {}", wrong.join("; ")),
        })
    }
}

/// Writes the staged archive: each entry at `STAGE/f/PATH` with its
/// owner and mode from the image, taken from the top-most layer that has
/// it, and `STAGE/SHA256SUMS`.
fn write_stage(
    store: &Store,
    target: &Target,
    entries: &[&listing::Entry],
    sums: &str,
    stage: &str,
    out: &Path,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source: std::io::Error| DeployError::Io { path, source }
    };
    let f = std::fs::File::create(out).map_err(io(out))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    let mut needed: HashSet<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    for layer in target.manifest.layers.iter().rev() {
        if needed.is_empty() {
            break;
        }
        let c =
            LayerCompression::from_media_type(&layer.media_type).ok_or_else(|| DeployError::Instance {
                instance: target.image.name.clone(),
                why: format!(
                    "layer {} has unknown media type {}",
                    layer.digest, layer.media_type
                ),
            })?;
        let blob = store.blob_path(&layer.digest);
        let r = listing::decompress(
            BufReader::with_capacity(1 << 20, store.open_blob(&layer.digest)?),
            c,
        )
        .map_err(io(&blob))?;
        let mut archive = tar::Archive::new(r);
        for entry in archive.entries().map_err(io(&blob))? {
            let mut entry = entry.map_err(io(&blob))?;
            let Ok(path) = listing::entry_path(&entry.path_bytes()) else {
                continue;
            };
            if !needed.remove(path.as_str()) {
                continue;
            }
            let mut h = entry.header().clone();
            let name = format!("{stage}/f/{path}");
            match entry.header().entry_type() {
                tar::EntryType::Symlink => {
                    let link = entry
                        .link_name()
                        .map_err(io(&blob))?
                        .map(|l| l.into_owned())
                        .unwrap_or_default();
                    b.append_link(&mut h, &name, &link).map_err(io(out))?;
                }
                _ => b.append_data(&mut h, &name, &mut entry).map_err(io(out))?,
            }
        }
    }
    if let Some(p) = needed.iter().next() {
        return Err(DeployError::Instance {
            instance: target.image.name.clone(),
            why: format!("/{p} is in the image's listing but in none of its layers"),
        });
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(sums.len() as u64);
    h.set_mode(0o600);
    b.append_data(&mut h, format!("{stage}/SHA256SUMS"), sums.as_bytes())
        .map_err(io(out))?;
    let w = b.into_inner().map_err(io(out))?;
    w.into_inner()
        .map_err(|e| io(out)(e.into_error()))?
        .sync_all()
        .map_err(io(out))?;
    Ok(())
}
