//! IP leases for app instances: each instance holds one IPv4 address of a
//! pool, kept across redeploys and released only when the instance is
//! removed. The pool is a static range kept outside the engine's dynamic
//! range, so Docker never hands one of these addresses to anything else.
//!
//! Two stores: a file under the data directory (one orchestrator; `flock`
//! serialises processes on one machine) and etcd (several orchestrators:
//! every lease is one transaction that succeeds only if neither the address
//! nor the owner is taken, so two instances can never hold the same IP).
//! etcd is spoken through its v3 JSON gateway ([`crate::etcd`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::etcd::{self, Etcd, EtcdError};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("pool `{pool}`: {why}")]
    BadPool { pool: String, why: String },
    #[error("pool `{pool}` is exhausted: all {size} addresses are leased")]
    Exhausted { pool: String, size: u64 },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("etcd at {endpoint}: {why}")]
    Etcd { endpoint: String, why: String },
    #[error("lease store `{0}`: expected `file` or `etcd://HOST:PORT`")]
    BadStore(String),
    #[error("`{name}` is locked by {holder}; try again when it has finished")]
    Locked { name: String, holder: String },
}

pub type Result<T, E = LeaseError> = std::result::Result<T, E>;

/// A named range of addresses, inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Pool {
    /// `name` and `A-B` (e.g. `10.90.0.10-10.90.0.209`).
    pub fn new(name: &str, range: &str) -> Result<Pool> {
        let bad = |why: String| LeaseError::BadPool {
            pool: name.to_string(),
            why,
        };
        let ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(bad("the name must be letters, digits, '.', '_' or '-'".into()));
        }
        let (a, b) = range
            .split_once('-')
            .ok_or_else(|| bad(format!("`{range}` is not a range FIRST-LAST")))?;
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| bad(format!("`{s}` is not an IPv4 address")))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if u32::from(first) > u32::from(last) {
            return Err(bad(format!("{first} comes after {last}")));
        }
        Ok(Pool {
            name: name.to_string(),
            first,
            last,
        })
    }

    pub fn size(&self) -> u64 {
        u64::from(u32::from(self.last) - u32::from(self.first)) + 1
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(ip))
    }

    /// Addresses in order, starting at an offset that depends on `owner`,
    /// so concurrent orchestrators rarely try the same one first.
    fn candidates(&self, owner: &str) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let size = self.size();
        let start = owner.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        }) % size;
        (0..size).map(move |i| Ipv4Addr::from(u32::from(self.first) + ((start + i) % size) as u32))
    }
}

/// Where leases live.
pub trait LeaseStore: Send + Sync {
    /// The owner's address: the one it holds, or a new one.
    fn acquire(&self, pool: &Pool, owner: &str) -> Result<Ipv4Addr>;
    /// Frees the owner's address; false if it held none.
    fn release(&self, pool: &Pool, owner: &str) -> Result<bool>;
    /// Every lease of the pool, by address.
    fn list(&self, pool: &Pool) -> Result<BTreeMap<Ipv4Addr, String>>;
    /// An exclusive lock named `name`, held until the guard is dropped (or
    /// the holding process dies). A held lock is [`LeaseError::Locked`]
    /// naming its `holder`: callers never wait silently.
    fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>>;
}

/// Holds a lock from [`LeaseStore::lock`]; dropping it releases the lock.
pub trait LockGuard: Send {}

struct FileLock {
    _file: std::fs::File,
}

impl LockGuard for FileLock {}

/// `file` (under `data`) or `etcd://HOST:PORT[,HOST:PORT…]`.
pub fn open(spec: &str, data: &Path) -> Result<Box<dyn LeaseStore>> {
    if spec == "file" {
        return Ok(Box::new(FileStore::new(data.join("leases"))));
    }
    if let Some(endpoints) = etcd::endpoints_of(spec) {
        return Ok(Box::new(EtcdStore::new(endpoints)?));
    }
    Err(LeaseError::BadStore(spec.to_string()))
}

/// One JSON file per pool (`ip → owner`), changed under an exclusive lock.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: PathBuf) -> FileStore {
        FileStore { dir }
    }

    /// Runs `f` on the pool's leases under the lock; writes them back when
    /// `f` returns true (atomically: temp file and rename).
    fn with<T>(
        &self,
        pool: &Pool,
        f: impl FnOnce(&mut BTreeMap<Ipv4Addr, String>) -> Result<(T, bool)>,
    ) -> Result<T> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LeaseError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let lock_path = self.dir.join(format!("{}.lock", pool.name));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let path = self.dir.join(format!("{}.json", pool.name));
        let mut leases: BTreeMap<Ipv4Addr, String> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| LeaseError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(&path)(e)),
        };
        let (out, changed) = f(&mut leases)?;
        if changed {
            let bytes = serde_json::to_vec_pretty(&leases).unwrap_or_default();
            crate::store::write_atomic(&path, &bytes).map_err(io(&path))?;
        }
        // The lock goes with the file handle.
        drop(lock);
        Ok(out)
    }
}

impl LeaseStore for FileStore {
    fn acquire(&self, pool: &Pool, owner: &str) -> Result<Ipv4Addr> {
        self.with(pool, |leases| {
            if let Some((ip, _)) = leases.iter().find(|(_, o)| o.as_str() == owner) {
                return Ok((*ip, false));
            }
            let ip =
                pool.candidates(owner)
                    .find(|ip| !leases.contains_key(ip))
                    .ok_or(LeaseError::Exhausted {
                        pool: pool.name.clone(),
                        size: pool.size(),
                    })?;
            leases.insert(ip, owner.to_string());
            Ok((ip, true))
        })
    }

    fn release(&self, pool: &Pool, owner: &str) -> Result<bool> {
        self.with(pool, |leases| {
            let before = leases.len();
            leases.retain(|_, o| o != owner);
            let changed = leases.len() != before;
            Ok((changed, changed))
        })
    }

    fn list(&self, pool: &Pool) -> Result<BTreeMap<Ipv4Addr, String>> {
        self.with(pool, |leases| Ok((leases.clone(), false)))
    }

    /// `flock` on `locks/NAME.lock`: the kernel drops it when the process
    /// dies, so a crash never leaves a stale lock.
    fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>> {
        let dir = self.dir.join("locks");
        std::fs::create_dir_all(&dir).map_err(|source| LeaseError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{name}.lock"));
        let io = |source| LeaseError::Io {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(LeaseError::Locked {
                    name: name.to_string(),
                    holder: if holder.trim().is_empty() {
                        "another process".into()
                    } else {
                        holder.trim().to_string()
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        use std::io::{Seek, Write};
        file.set_len(0).map_err(io)?;
        file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        file.write_all(holder.as_bytes()).map_err(io)?;
        Ok(Box::new(FileLock { _file: file }))
    }
}

/// Leases in etcd: `strata/leases/POOL/ip/IP = OWNER` and
/// `strata/leases/POOL/owner/OWNER = IP`, written together in one
/// transaction guarded by "neither key exists yet".
pub struct EtcdStore {
    etcd: Etcd,
}

impl From<EtcdError> for LeaseError {
    fn from(e: EtcdError) -> LeaseError {
        LeaseError::Etcd {
            endpoint: e.endpoint,
            why: e.why,
        }
    }
}

impl EtcdStore {
    pub fn new(endpoints: Vec<String>) -> Result<EtcdStore> {
        Ok(EtcdStore {
            etcd: Etcd::new(endpoints)?,
        })
    }

    fn prefix(&self, pool: &Pool, kind: &str) -> String {
        format!("strata/leases/{}/{kind}/", pool.name)
    }
}

impl LeaseStore for EtcdStore {
    fn acquire(&self, pool: &Pool, owner: &str) -> Result<Ipv4Addr> {
        let owner_key = format!("{}{owner}", self.prefix(pool, "owner"));
        if let Some(ip) = self.etcd.get(&owner_key)?.and_then(|s| s.parse().ok()) {
            return Ok(ip);
        }
        let mut taken: std::collections::HashSet<Ipv4Addr> = self.list(pool)?.into_keys().collect();
        // Each failed transaction means the address (or the owner) was
        // taken meanwhile: bounded by the pool size plus a few retries.
        for _ in 0..pool.size() + 16 {
            let Some(ip) = pool.candidates(owner).find(|ip| !taken.contains(ip)) else {
                return Err(LeaseError::Exhausted {
                    pool: pool.name.clone(),
                    size: pool.size(),
                });
            };
            let ip_key = format!("{}{ip}", self.prefix(pool, "ip"));
            let won = self.etcd.txn(
                vec![etcd::absent(&ip_key), etcd::absent(&owner_key)],
                vec![etcd::put(&ip_key, owner), etcd::put(&owner_key, &ip.to_string())],
                vec![],
            )?;
            if won.is_some() {
                return Ok(ip);
            }
            if let Some(ip) = self.etcd.get(&owner_key)?.and_then(|s| s.parse().ok()) {
                return Ok(ip);
            }
            taken.insert(ip);
        }
        Err(self.etcd.error("too many conflicting transactions").into())
    }

    fn release(&self, pool: &Pool, owner: &str) -> Result<bool> {
        let owner_key = format!("{}{owner}", self.prefix(pool, "owner"));
        let Some(ip) = self.etcd.get(&owner_key)? else {
            return Ok(false);
        };
        let ip_key = format!("{}{ip}", self.prefix(pool, "ip"));
        // Delete the address only if it still names this owner.
        self.etcd.txn(
            vec![etcd::value_is(&ip_key, owner)],
            vec![etcd::delete(&ip_key), etcd::delete(&owner_key)],
            vec![etcd::delete(&owner_key)],
        )?;
        Ok(true)
    }

    fn list(&self, pool: &Pool) -> Result<BTreeMap<Ipv4Addr, String>> {
        let p = self.prefix(pool, "ip");
        let mut out = BTreeMap::new();
        for kv in self.etcd.prefix(&p)? {
            if let Some(ip) = kv.key.strip_prefix(&p).and_then(|s| s.parse().ok()) {
                out.insert(ip, kv.value);
            }
        }
        Ok(out)
    }

    /// `strata/locks/NAME`, attached to an etcd lease of [`LOCK_TTL`] that
    /// a thread keeps alive: if the holder dies the lock expires.
    fn lock(&self, name: &str, holder: &str) -> Result<Box<dyn LockGuard>> {
        let grant = self.etcd.call(
            "/v3/lease/grant",
            serde_json::json!({ "TTL": LOCK_TTL.as_secs() }),
        )?;
        let id = grant["ID"].as_str().map(str::to_string).unwrap_or_default();
        if id.is_empty() {
            return Err(self.etcd.error(format!("lease grant answered {grant}")).into());
        }
        let key = format!("strata/locks/{name}");
        let won = self.etcd.txn(
            vec![etcd::absent(&key)],
            vec![etcd::put_leased(&key, holder, &id)],
            vec![],
        )?;
        if won.is_none() {
            let _ = self
                .etcd
                .call("/v3/lease/revoke", serde_json::json!({ "ID": id }));
            let holder = self
                .etcd
                .get(&key)?
                .unwrap_or_else(|| "another orchestrator".into());
            return Err(LeaseError::Locked {
                name: name.to_string(),
                holder,
            });
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let keeper = self.etcd.clone();
        let (flag, lease) = (stop.clone(), id.clone());
        let thread = std::thread::spawn(move || {
            let tick = Duration::from_millis(200);
            let mut waited = Duration::ZERO;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(tick);
                waited += tick;
                if waited >= LOCK_TTL / 3 {
                    waited = Duration::ZERO;
                    if let Err(e) = keeper.call("/v3/lease/keepalive", serde_json::json!({ "ID": lease })) {
                        tracing::warn!("keeping the deploy lock alive: {e}");
                    }
                }
            }
            let _ = keeper.call("/v3/lease/revoke", serde_json::json!({ "ID": lease }));
        });
        Ok(Box::new(EtcdLock {
            stop,
            thread: Some(thread),
        }))
    }
}

/// How long an etcd lock outlives a holder that stopped refreshing it.
pub const LOCK_TTL: Duration = Duration::from_secs(15);

struct EtcdLock {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LockGuard for EtcdLock {}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_and_the_file_store() {
        assert!(Pool::new("a", "10.0.0.9-10.0.0.1").is_err());
        assert!(Pool::new("a b", "10.0.0.1-10.0.0.2").is_err());
        assert!(Pool::new("a", "10.0.0.1").is_err());
        let p = Pool::new("web", "10.90.0.10-10.90.0.12").unwrap();
        assert_eq!(p.size(), 3);
        assert!(p.contains("10.90.0.11".parse().unwrap()) && !p.contains("10.90.0.13".parse().unwrap()));
        let d = tempfile::tempdir().unwrap();
        let s = FileStore::new(d.path().join("leases"));
        let a = s.acquire(&p, "app-1").unwrap();
        assert_eq!(s.acquire(&p, "app-1").unwrap(), a, "kept across calls");
        let b = s.acquire(&p, "app-2").unwrap();
        let c = s.acquire(&p, "app-3").unwrap();
        assert!(a != b && b != c && a != c);
        assert!(matches!(
            s.acquire(&p, "app-4"),
            Err(LeaseError::Exhausted { size: 3, .. })
        ));
        assert!(s.release(&p, "app-2").unwrap());
        assert!(!s.release(&p, "app-2").unwrap());
        assert_eq!(s.acquire(&p, "app-4").unwrap(), b);
        assert_eq!(s.list(&p).unwrap().len(), 3);
        let held = s.lock("deploy-shop", "pid 1").unwrap();
        let e = s.lock("deploy-shop", "pid 2").err().expect("held").to_string();
        assert!(e.contains("locked by pid 1"), "{e}");
        drop(held);
        assert!(s.lock("deploy-shop", "pid 2").is_ok());
    }
}
