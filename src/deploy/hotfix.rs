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
use super::{DeployError, InstanceReport, Orchestrator, Result, Target, fault, health};
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
}

const BACKUP_TAR: &str = "backup.tar";

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

        // Backups, from the container itself (it may differ from the
        // image): one tar of every affected path, streamed out of an exec.
        let paths = plan::backup_paths(&changes);
        if !paths.is_empty() {
            let o = self.block(host.exec_to(
                &inst.container,
                &sh(&plan::backup_script(&paths)),
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
        }
        let index_file = BackupIndex {
            container: inst.container.clone(),
            restore_script: plan::restore_script(&stage, &changes, &old_tree),
            paths,
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
                started_at: state::now(),
                container: inst.container.clone(),
                backup: hdir.clone(),
                phase: phase.to_string(),
            });
            self.dir.save(st)
        };
        journal(st, "staging")?;
        at("backed up");

        let moves = changes
            .iter()
            .filter(|c| c.kind != EntryKind::Dir && c.change != ChangeKind::Deleted)
            .count();
        let applied = (|| -> std::result::Result<(), String> {
            let size = std::fs::metadata(&tar).map(|m| m.len()).unwrap_or(0);
            let cut = fault("hotfix-upload").then_some(size / 2);
            self.block(host.upload(&inst.container, "/", &tar, cut))
                .map_err(|e| e.to_string())?;
            at("uploaded");
            journal(st, "applying").map_err(|e| e.to_string())?;
            // One exec: verify every staged byte, then move into place.
            let fail_after = fault("hotfix-move").then_some(moves / 2);
            // (A change that only deletes has an empty checksum list.)
            let script = format!(
                "cd {} || exit 1\nif [ -s SHA256SUMS ] && ! sha256sum -c -s SHA256SUMS; then\n  echo 'the staged files do not match their checksums' >&2\n  exit 3\nfi\n{}",
                plan::quote(&stage),
                plan::apply_script(&stage, &changes, &new_tree, fail_after)
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
            at("moved");
            if fault("crash-hotfix") {
                eprintln!("injected fault: crashing mid-hotfix (STRATA_FAULT=crash-hotfix)");
                std::process::abort();
            }
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
            self.block(health::wait_healthy(
                &host,
                &inst.container,
                inst.ip,
                &self.app.health,
            ))
            .map_err(|e| format!("unhealthy after the hotfix: {e}"))?;
            Ok(())
        })();

        let result = match applied {
            Ok(()) => {
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
                        "{} + hotfix {}; container {} not restarted (pid {}, started {})",
                        inst.image, target.image, inst.container_name, before.pid, before.started_at
                    ),
                })
            }
            Err(why) => {
                self.say(&format!("{name}: hotfix failed ({why}); restoring the backup"));
                match restore_from_dir(self, &host, &inst.container, &hdir) {
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
        st.operation = None;
        self.dir.save(st)?;
        if !matches!(result, Err(DeployError::HotfixRestoreFailed { .. })) {
            let _ = std::fs::remove_dir_all(&hdir);
        }
        result
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

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.to_string()]
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
