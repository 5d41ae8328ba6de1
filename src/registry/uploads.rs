//! Upload sessions: `uploads/UUID` holds the bytes received so far and
//! `uploads/UUID.repo` the repository the session was started in.
//!
//! A session is used only through the repository that started it, by one
//! request at a time (an [`UploadLock`]: a second request on a busy session
//! is refused, so two chunks never interleave), and it expires after an
//! idle time (the data file's mtime is the last activity): the running
//! server and `strata gc` purge expired sessions. A refused or failed
//! request leaves the session as it found it.
//!
//! Bytes are hashed as they arrive, once: a monolithic upload (and a
//! session's last request) hashes inline while it writes; a `PATCH` only
//! writes, answers, and leaves the hashing of what it wrote to a blocking
//! thread that reads it back from the page cache while the client sends
//! the next chunk ([`Running`]). Either way an upload enters the store
//! only once the whole session's digest matched.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::state::{Registry, RegistryError, Result, io_err};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::store::StoreError;

/// How long an idle upload session is kept by default (distribution purges
/// uploads older than a week by default; a day is plenty for a resume).
pub const DEFAULT_UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// Whether a session last touched at `modified` has expired at `now`.
/// A modification time in the future (a clock step) counts as fresh.
pub fn expired(modified: SystemTime, now: SystemTime, ttl: Duration) -> bool {
    now.duration_since(modified).is_ok_and(|idle| idle > ttl)
}

/// How often a running server looks for expired sessions.
pub fn purge_interval(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(15 * 60))
}

/// What a purge removed.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PurgeReport {
    pub expired_uploads: usize,
    pub expired_bytes: u64,
}

/// Sessions a request is working on.
pub(super) type Busy = std::sync::Mutex<HashSet<String>>;

/// One request's hold on an upload session; dropping it frees the session.
pub struct UploadLock<'a> {
    registry: &'a Registry,
    id: String,
    path: PathBuf,
    /// Remove the session when the request ends without finishing it (a
    /// monolithic upload: nobody else knows the session, so nobody could
    /// resume it).
    discard: std::sync::atomic::AtomicBool,
}

impl Drop for UploadLock<'_> {
    fn drop(&mut self) {
        if self.discard.load(std::sync::atomic::Ordering::Relaxed) {
            self.remove();
        }
        self.registry
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// A session's running hash: the state over the session file's first
/// `off` bytes, `None` once it cannot be trusted (a request that hashed
/// inline failed; after a restart there is no state at all), and then the
/// finished upload is hashed again from disk.
///
/// The lock is held by whoever advances it: a request hashing inline (it
/// takes the state out for the request), the catch-up thread of a `PATCH`,
/// or `finish`, which waits for a catch-up and then hashes what is left.
pub(crate) struct Running {
    state: std::sync::Mutex<Option<(Hasher, u64)>>,
    /// Bytes finished requests wrote: what a catch-up may hash (never the
    /// bytes of a request still running, which may yet be cut off).
    committed: std::sync::atomic::AtomicU64,
}

/// Bytes a catch-up reads back at a time.
const CATCH_UP_READ: usize = 256 << 10;

impl Running {
    fn new(state: Option<(Hasher, u64)>, committed: u64) -> Running {
        Running {
            state: std::sync::Mutex::new(state),
            committed: committed.into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Hasher, u64)>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hashes the session file `path` from the state's offset up to `upto`;
    /// a read that fails leaves no state.
    fn catch_up(state: &mut Option<(Hasher, u64)>, path: &Path, upto: u64) {
        use std::os::unix::fs::FileExt;
        let Some((h, off)) = state else { return };
        if *off >= upto {
            return;
        }
        let read = (|| -> io::Result<()> {
            let file = fs::File::open(path)?;
            let mut buf = vec![0; CATCH_UP_READ];
            while *off < upto {
                let n = (upto - *off).min(CATCH_UP_READ as u64) as usize;
                file.read_exact_at(&mut buf[..n], *off)?;
                h.update(&buf[..n]);
                *off += n as u64;
            }
            Ok(())
        })();
        if read.is_err() {
            *state = None;
        }
    }

    /// Hashes what finished requests wrote, on a blocking thread, unless
    /// someone else holds the state (it hashes what is left when it needs
    /// it: `finish` always does).
    fn catch_up_behind(self: std::sync::Arc<Self>, path: PathBuf) {
        let work = move || {
            loop {
                let Ok(mut state) = self.state.try_lock() else {
                    return;
                };
                let upto = self.committed.load(std::sync::atomic::Ordering::Acquire);
                Running::catch_up(&mut state, &path, upto);
                drop(state);
                // More may have been committed while the state was held.
                if self.committed.load(std::sync::atomic::Ordering::Acquire) <= upto {
                    return;
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(work)),
            Err(_) => work(),
        }
    }
}

/// How a request's bytes are hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hashing {
    /// While they are written: the request ends with the session's digest
    /// known (monolithic uploads, the closing `PUT`).
    Inline,
    /// After the request, on a blocking thread (`PATCH`: the answer does
    /// not wait for the hash, so the next chunk comes sooner).
    Behind,
}

/// Appends to an upload session, hashing the bytes as they stream (or,
/// [`Hashing::Behind`], after the request). It writes straight to the
/// file: the caller hands it batches (a buffer of its own here cost 1 MiB
/// per concurrent upload).
pub struct UploadWriter<'l, 'a> {
    lock: &'l UploadLock<'a>,
    file: fs::File,
    /// The session's size when this request began.
    start: u64,
    written: u64,
    running: std::sync::Arc<Running>,
    /// The state taken out of `running` for inline hashing.
    hasher: Option<(Hasher, u64)>,
}

impl Write for UploadWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if let Some((h, off)) = &mut self.hasher {
            h.update(&buf[..n]);
            *off += n as u64;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl UploadWriter<'_, '_> {
    /// Flushes and hands the hash state back to the session (or starts
    /// hashing this request's bytes behind it).
    pub fn close(mut self) -> io::Result<()> {
        self.file.flush()?;
        let size = self.start + self.written;
        let inline = self.hasher.take();
        let behind = inline.is_none();
        if let Some(h) = inline {
            *self.running.lock() = Some(h);
        }
        self.running
            .committed
            .store(size, std::sync::atomic::Ordering::Release);
        if behind {
            self.running.clone().catch_up_behind(self.lock.path.clone());
        }
        Ok(())
    }

    /// Drops what this request wrote: the session is as it was before.
    /// (A state taken for inline hashing is dropped with it: `finish`
    /// hashes the file again.)
    pub fn abort(self) -> io::Result<()> {
        let mut file = self.file;
        file.set_len(self.start)?;
        file.seek(io::SeekFrom::End(0)).map(|_| ())
    }
}

fn valid_id(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn repo_file(data: &Path) -> PathBuf {
    data.with_extension("repo")
}

impl Registry {
    fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    /// Starts an upload session in `name`.
    pub fn start_upload(&self, name: &str) -> Result<String> {
        self.repo(name)?;
        let id = uuid::Uuid::new_v4().to_string();
        let p = self.uploads_dir().join(&id);
        // The owner first: a data file never exists without one.
        Self::write_small(&repo_file(&p), name.as_bytes())?;
        fs::File::create_new(&p).map_err(io_err(&p))?;
        Ok(id)
    }

    /// Takes the session `id` of repository `name` for one request. A
    /// session of another repository is unknown here; one that another
    /// request is using is busy (416).
    pub fn lock_upload(&self, name: &str, id: &str) -> Result<UploadLock<'_>> {
        let path = self.session(name, id)?;
        if !self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string())
        {
            return Err(RegistryError::UploadBusy(id.to_string()));
        }
        // A request is activity: the session is not idle while it runs.
        if let Ok(f) = fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(UploadLock {
            registry: self,
            id: id.to_string(),
            path,
            discard: Default::default(),
        })
    }

    /// The data file of session `id` of repository `name`.
    fn session(&self, name: &str, id: &str) -> Result<PathBuf> {
        let unknown = || RegistryError::UploadUnknown(id.to_string());
        if !valid_id(id) {
            return Err(unknown());
        }
        let path = self.uploads_dir().join(id);
        let owner = fs::read_to_string(repo_file(&path)).map_err(|_| unknown())?;
        if owner != name || !path.is_file() {
            return Err(unknown());
        }
        Ok(path)
    }

    /// Bytes session `id` of repository `name` received so far (while
    /// another request may be adding to it).
    pub fn upload_size(&self, name: &str, id: &str) -> Result<u64> {
        let path = self.session(name, id)?;
        fs::metadata(&path)
            .map(|m| m.len())
            .map_err(|_| RegistryError::UploadUnknown(id.to_string()))
    }

    /// Removes sessions idle for longer than the upload TTL at `now`, and
    /// hash states whose session is gone. Busy sessions are kept.
    pub fn purge_uploads(&self, now: SystemTime) -> Result<PurgeReport> {
        self.sweep_uploads(now, true)
    }

    /// What [`Registry::purge_uploads`] would remove, removing nothing.
    pub fn expired_uploads(&self, now: SystemTime) -> Result<PurgeReport> {
        self.sweep_uploads(now, false)
    }

    fn sweep_uploads(&self, now: SystemTime, remove: bool) -> Result<PurgeReport> {
        let dir = self.uploads_dir();
        let mut report = PurgeReport::default();
        let rd = fs::read_dir(&dir).map_err(io_err(&dir))?;
        for e in rd.flatten() {
            let path = e.path();
            let Ok(md) = e.metadata() else { continue };
            let Ok(modified) = md.modified() else { continue };
            if !expired(modified, now, self.upload_ttl) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".repo") {
                // An owner file without its data (a crash between the two
                // writes, or a data file removed by hand).
                if remove && !dir.join(id).exists() {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            // Whatever else is here is a session's data (or debris). Take
            // the session as a request would, so none is using it.
            if !self
                .busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone())
            {
                continue;
            }
            let removed = !remove || fs::remove_file(&path).is_ok();
            if remove {
                let _ = fs::remove_file(repo_file(&path));
                self.hashers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            }
            self.busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
            if removed {
                report.expired_uploads += 1;
                report.expired_bytes += md.len();
            }
        }
        if remove {
            // Hash states of sessions removed by another process (`strata gc`).
            self.hashers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|id, _| dir.join(id).is_file());
        }
        Ok(report)
    }
}

impl UploadLock<'_> {
    fn hashers(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::sync::Arc<Running>>> {
        self.registry.hashers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Removes the session if this request ends before [`finish`] succeeded.
    ///
    /// [`finish`]: UploadLock::finish
    pub fn discard_unless_finished(&self) {
        self.discard.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes received so far.
    pub fn size(&self) -> Result<u64> {
        fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|_| RegistryError::UploadUnknown(self.id.clone()))
    }

    /// Opens the session file for appending, checking a chunk's start.
    pub fn append(&self, start: Option<u64>, hashing: Hashing) -> Result<UploadWriter<'_, '_>> {
        let have = self.size()?;
        if let Some(s) = start
            && s != have
        {
            return Err(RegistryError::RangeInvalid { have, got: s });
        }
        let file = fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        let running = self
            .hashers()
            .entry(self.id.clone())
            .or_insert_with(|| {
                // A new session starts from nothing; one this process has
                // no state for (a restart) is hashed from disk at the end.
                let state = (have == 0).then(|| (Algorithm::Sha256.hasher(), 0));
                std::sync::Arc::new(Running::new(state, have))
            })
            .clone();
        let hasher = match hashing {
            Hashing::Behind => None,
            Hashing::Inline => {
                // Waits for a catch-up still hashing earlier chunks, then
                // hashes what it left.
                let mut state = running.lock();
                Running::catch_up(&mut state, &self.path, have);
                state.take().filter(|(_, off)| *off == have)
            }
        };
        Ok(UploadWriter {
            lock: self,
            file,
            start: have,
            written: 0,
            running,
            hasher,
        })
    }

    /// Verifies and moves a finished upload into the store, linked to the
    /// session's repository.
    pub fn finish(&self, name: &str, digest: &Digest) -> Result<()> {
        let p = &self.path;
        let size = fs::metadata(p).map_err(io_err(p))?.len();
        let running = self.hashers().remove(&self.id);
        let streamed = running.and_then(|r| {
            // Waits for a catch-up, then hashes what is left.
            let mut state = r.lock();
            Running::catch_up(&mut state, p, size);
            state.take()
        });
        let store = self.registry.store();
        let result = match streamed {
            // Hashed while the bytes streamed in: no second pass.
            Some((h, off)) if off == size && digest.algorithm() == Algorithm::Sha256 => {
                let actual = h.finish();
                if &actual == digest {
                    store.adopt_verified(p, digest).map(|_| ())
                } else {
                    Err(StoreError::DigestMismatch {
                        expected: digest.clone(),
                        actual,
                        size,
                    })
                }
            }
            // After a restart (or for sha512), hash the file once more.
            _ => store.adopt(p, digest).map(|_| ()),
        };
        match result {
            Ok(()) => {}
            Err(StoreError::DigestMismatch { expected, actual, .. }) => {
                self.remove();
                return Err(RegistryError::DigestMismatch { expected, actual });
            }
            Err(e) => return Err(e.into()),
        }
        let _ = fs::remove_file(repo_file(p));
        self.discard.store(false, std::sync::atomic::Ordering::Relaxed);
        self.registry.link_blob(name, digest)?;
        self.registry.announce(digest);
        Ok(())
    }

    /// Removes the session and what it received.
    pub fn remove(&self) {
        self.hashers().remove(&self.id);
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_file(repo_file(&self.path));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_after_the_ttl_and_not_before() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(3600);
        assert!(!expired(t0, t0, ttl));
        assert!(!expired(t0, t0 + ttl, ttl));
        assert!(expired(t0, t0 + ttl + Duration::from_secs(1), ttl));
        assert!(!expired(t0 + ttl, t0, ttl), "a future mtime is fresh");
        assert_eq!(purge_interval(DEFAULT_UPLOAD_TTL), Duration::from_secs(900));
        assert_eq!(purge_interval(Duration::from_secs(2)), Duration::from_secs(1));
    }

    #[test]
    fn purge_removes_only_idle_sessions_with_a_moved_clock() {
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::open(d.path().to_path_buf()).unwrap();
        let old = reg.start_upload("app").unwrap();
        let fresh = reg.start_upload("app").unwrap();
        let busy = reg.start_upload("app").unwrap();
        let _held = reg.lock_upload("app", &busy).unwrap();
        let now = SystemTime::now();
        let past = now - Duration::from_secs(25 * 3600);
        let f = fs::File::options()
            .write(true)
            .open(d.path().join("uploads").join(&old))
            .unwrap();
        f.set_modified(past).unwrap();
        let r = reg.purge_uploads(now).unwrap();
        assert_eq!(r.expired_uploads, 1);
        assert!(matches!(
            reg.lock_upload("app", &old),
            Err(RegistryError::UploadUnknown(_))
        ));
        assert!(reg.lock_upload("app", &fresh).is_ok());
        // A day later every idle session goes, but not the busy one.
        let r = reg.purge_uploads(now + Duration::from_secs(25 * 3600)).unwrap();
        assert_eq!(r.expired_uploads, 1);
        assert!(matches!(
            reg.lock_upload("app", &busy),
            Err(RegistryError::UploadBusy(_))
        ));
        let left: Vec<_> = fs::read_dir(d.path().join("uploads"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(left.len(), 2, "the busy session and its owner file");
    }
}
