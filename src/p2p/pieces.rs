//! Blobs as pieces: the table of piece hashes the origin publishes, and a
//! partially downloaded blob on disk that survives a restart.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::Bitfield;
use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// 256 KiB, chosen from measurements (BENCHMARKS.md): a piece is useful
/// to the swarm only once it has arrived whole, so smaller pieces spread
/// faster (the log term of the simulation's bound is counted in pieces,
/// and in the real fan-out every hop waits for a whole piece). At 64 MiB
/// and N = 16 in namespaces, 256 KiB pieces finished 8 % sooner than
/// 1 MiB ones; the per-piece cost (a request, a hash, a tracker update)
/// is still small against a 50 Mbit/s link.
pub const DEFAULT_PIECE: u64 = 1 << 18;

/// What a downloader needs to verify every piece of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceTable {
    pub digest: Digest,
    pub size: u64,
    pub piece_size: u64,
    /// sha256 of each piece, hex.
    pub hashes: Vec<String>,
}

impl PieceTable {
    pub fn count(&self) -> usize {
        self.hashes.len()
    }

    /// Offset and length of piece `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.piece_size;
        (start, (self.size - start).min(self.piece_size))
    }

    pub fn verify(&self, i: usize, bytes: &[u8]) -> bool {
        self.verify_parts(i, &[bytes])
    }

    /// `verify` for a piece in parts (the chunks it came in), one after
    /// the other.
    pub fn verify_parts<B: AsRef<[u8]>>(&self, i: usize, parts: &[B]) -> bool {
        let len: usize = parts.iter().map(|p| p.as_ref().len()).sum();
        if i >= self.count() || len as u64 != self.range(i).1 {
            return false;
        }
        let mut h = Sha256::new();
        parts.iter().for_each(|p| h.update(p.as_ref()));
        hex::encode(h.finalize()) == self.hashes[i]
    }

    /// Whether the table is self-consistent (sizes add up); a table from
    /// the network is checked before use.
    pub fn is_consistent(&self) -> bool {
        self.piece_size > 0
            && self.hashes.len() as u64 == self.size.div_ceil(self.piece_size)
            && self.hashes.iter().all(|h| h.len() == 64)
    }

    fn meta_key(digest: &Digest, piece_size: u64) -> String {
        format!("{}-{piece_size}", digest.hex())
    }

    /// The table kept in the store's metadata, if it was made before.
    fn cached(store: &Store, digest: &Digest, piece_size: u64) -> Option<PieceTable> {
        let b = store.read_meta("pieces", &PieceTable::meta_key(digest, piece_size))?;
        serde_json::from_slice::<PieceTable>(&b).ok()
    }

    /// Hashes every piece of the blob and keeps the table in the store's
    /// metadata (through [`Tables::get`] only: one pass per blob).
    fn make(store: &Store, digest: &Digest, piece_size: u64) -> Result<PieceTable, StoreError> {
        let path = store.blob_path(digest);
        let mut f = store.open_blob(digest)?;
        let size = f.metadata().map_err(crate::store::io_err(&path))?.len();
        let mut hashes = Vec::new();
        let mut buf = vec![0u8; piece_size as usize];
        let mut left = size;
        while left > 0 {
            let n = left.min(piece_size) as usize;
            f.read_exact(&mut buf[..n]).map_err(crate::store::io_err(&path))?;
            hashes.push(hex::encode(Sha256::digest(&buf[..n])));
            left -= n as u64;
        }
        let t = PieceTable {
            digest: digest.clone(),
            size,
            piece_size,
            hashes,
        };
        let key = PieceTable::meta_key(digest, piece_size);
        store.write_meta("pieces", &key, &serde_json::to_vec(&t).unwrap_or_default())?;
        Ok(t)
    }
}

/// The origin's piece tables: each made in one hashing pass however many
/// ask for it at once (the agents of a fan-out all ask in the same
/// moment; each used to hash the whole blob itself), and made ahead when
/// a blob is pushed, so a fan-out does not start with a pass at all.
#[derive(Default)]
pub struct Tables {
    /// One lock per blob whose table is being read or made.
    locks: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    made: AtomicU64,
}

impl Tables {
    /// The table of `blob` in `store` (pieces of `piece_size`).
    pub fn get(&self, store: &Store, blob: &Digest, piece_size: u64) -> Result<PieceTable, StoreError> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(blob.clone())
            .or_default()
            .clone();
        let table = {
            let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
            match PieceTable::cached(store, blob, piece_size) {
                Some(t) => Ok(t),
                None => {
                    self.made.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::P2P_PIECE_TABLES_MADE.add(1);
                    PieceTable::make(store, blob, piece_size)
                }
            }
        };
        drop(lock);
        // Forget the locks nobody holds or waits for.
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, l| Arc::strong_count(l) > 1);
        table
    }

    /// How many tables this made (hashing passes); the process-wide sum
    /// is `strata_p2p_piece_tables_made_total`.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }
}

/// A blob being downloaded: `DIR/HEX.part` (sparse, full size) and
/// `DIR/HEX.have` (the pieces written). On open, every recorded piece is
/// hashed again, so a piece lost in a crash is simply fetched again; the
/// record is only a hint, rewritten in place as each piece comes (a torn
/// write loses nothing a new file per piece would keep).
///
/// The whole blob's digest is computed as pieces come, over the longest
/// run of pieces from the first: pieces that arrive in order (a chain
/// streams them so) are hashed once more while still in memory, and the
/// blob enters the store at the end without a pass over all of it, which
/// on a host finishing at the same moment as its neighbours is a pass
/// over the whole blob on cores they all share.
pub struct Partial {
    pub table: PieceTable,
    data: File,
    path: PathBuf,
    have_path: PathBuf,
    have_file: File,
    have: Bitfield,
    /// The blob's digest over pieces `0..hashed`.
    whole: crate::digest::Hasher,
    hashed: usize,
}

impl Partial {
    pub fn open(dir: &Path, table: PieceTable) -> io::Result<Partial> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.part", table.digest.hex()));
        let have_path = dir.join(format!("{}.have", table.digest.hex()));
        let data = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        data.set_len(table.size)?;
        let recorded = fs::read(&have_path)
            .ok()
            .and_then(|b| Bitfield::from_bytes(table.count(), &b))
            .unwrap_or_else(|| Bitfield::new(table.count()));
        let have_file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&have_path)?;
        // Always the length of the table's bitfield, whatever a crash left.
        have_file.set_len(table.count().div_ceil(8) as u64)?;
        let mut p = Partial {
            have: Bitfield::new(table.count()),
            whole: table.digest.algorithm().hasher(),
            hashed: 0,
            table,
            data,
            path,
            have_path,
            have_file,
        };
        for i in 0..p.table.count() {
            let Some(b) = recorded.get(i).then(|| p.read_piece(i)).and_then(Result::ok) else {
                continue;
            };
            if p.table.verify(i, &b) {
                p.have.set(i);
                // The run from the first piece, read once for both hashes.
                if p.hashed == i {
                    p.whole.update(&b);
                    p.hashed += 1;
                }
            }
        }
        Ok(p)
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Writes a piece that `verify_parts` accepted, given in parts (the
    /// chunks it came in: written as they are, without a copy into one
    /// buffer first); records it.
    pub fn write_piece<B: AsRef<[u8]>>(&mut self, i: usize, parts: &[B]) -> io::Result<()> {
        if !self.table.verify_parts(i, parts) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("piece {i} fails its hash"),
            ));
        }
        write_parts_at(&self.data, parts, self.table.range(i).0)?;
        if self.have.set(i) {
            // Same length every time: the bytes in place, no new file.
            self.have_file.write_all_at(&self.have.to_bytes(), 0)?;
        }
        self.hash_on(i, parts)
    }

    /// Feeds the whole-blob digest every piece held from `hashed` on, in
    /// order: piece `just` (just written) from memory, others from disk.
    fn hash_on<B: AsRef<[u8]>>(&mut self, just: usize, parts: &[B]) -> io::Result<()> {
        while self.hashed < self.table.count() && self.have.get(self.hashed) {
            match just {
                i if i == self.hashed => parts.iter().for_each(|p| self.whole.update(p.as_ref())),
                _ => {
                    let b = self.read_piece(self.hashed)?;
                    self.whole.update(&b);
                }
            }
            self.hashed += 1;
        }
        Ok(())
    }

    pub fn read_piece(&self, i: usize) -> io::Result<Vec<u8>> {
        let (off, len) = self.table.range(i);
        let mut buf = vec![0u8; len as usize];
        self.data.read_exact_at(&mut buf, off)?;
        Ok(buf)
    }

    /// Moves the complete blob into the store once its digest, computed
    /// as the pieces came, matches. Pieces stay readable through this
    /// `Partial` afterwards: its file is the one now in the store.
    pub fn finish(&mut self, store: &Store) -> Result<(), StoreError> {
        if self.hashed < self.table.count() {
            // Not every piece is here: the store's own check says which
            // bytes are wrong.
            store.adopt(&self.path, &self.table.digest)?;
        } else {
            let algorithm = self.table.digest.algorithm();
            let actual = std::mem::replace(&mut self.whole, algorithm.hasher()).finish();
            self.hashed = 0;
            if actual != self.table.digest {
                return Err(StoreError::DigestMismatch {
                    expected: self.table.digest.clone(),
                    actual,
                    size: self.table.size,
                });
            }
            store.adopt_verified(&self.path, &self.table.digest)?;
        }
        let _ = fs::remove_file(&self.have_path);
        let _ = fs::remove_file(&self.path);
        Ok(())
    }
}

/// Writes `parts` one after the other from `offset`: one `pwritev` per
/// batch of them (the kernel takes at most `IOV_MAX`, 1024 on Linux).
fn write_parts_at<B: AsRef<[u8]>>(file: &File, parts: &[B], mut offset: u64) -> io::Result<()> {
    for batch in parts.chunks(512) {
        let mut slices: Vec<io::IoSlice> = batch.iter().map(|p| io::IoSlice::new(p.as_ref())).collect();
        let mut left = &mut slices[..];
        io::IoSlice::advance_slices(&mut left, 0);
        while !left.is_empty() {
            let n = rustix::io::pwritev(file, left, offset)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            offset += n as u64;
            io::IoSlice::advance_slices(&mut left, n);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in `d` holding `len` bytes of a pattern: the store, the
    /// bytes and their digest.
    fn stored(d: &Path, len: u32) -> (Store, Vec<u8>, Digest) {
        let store = Store::open(d.join("store")).unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let (digest, _) = store.put(&bytes, None).unwrap();
        (store, bytes, digest)
    }

    #[test]
    fn pieces_resume_and_finish() {
        let d = tempfile::tempdir().unwrap();
        let (store, bytes, digest) = stored(d.path(), 2_500_000);
        let t = Tables::default().get(&store, &digest, 1 << 20).unwrap();
        assert_eq!(t.count(), 3);
        assert!(t.is_consistent());
        assert_eq!(t.range(2), (2 << 20, 2_500_000 - (2 << 20)));
        let piece = |i: usize| {
            let (o, l) = t.range(i);
            bytes[o as usize..(o + l) as usize].to_vec()
        };
        assert!(!t.verify(0, &piece(1)));

        let other = Store::open(d.path().join("other")).unwrap();
        let dir = d.path().join("partial");
        let mut p = Partial::open(&dir, t.clone()).unwrap();
        p.write_piece(0, &[piece(0)]).unwrap();
        p.write_piece(2, &[piece(2)]).unwrap();
        assert!(p.write_piece(1, &[piece(0)]).is_err(), "a wrong piece is refused");
        drop(p);
        // Corrupt piece 2 on disk: after a restart only piece 0 counts.
        let f = fs::OpenOptions::new()
            .write(true)
            .open(dir.join(format!("{}.part", digest.hex())))
            .unwrap();
        f.write_all_at(b"xx", 2 << 20).unwrap();
        let mut p = Partial::open(&dir, t.clone()).unwrap();
        assert_eq!(p.have().count(), 1);
        assert!(p.have().get(0));
        // In parts, as pieces come off a stream (more than one batch of them).
        let one = piece(1);
        p.write_piece(1, &one.chunks(100).collect::<Vec<_>>()).unwrap();
        p.write_piece(2, &[piece(2)]).unwrap();
        assert!(p.is_complete());
        p.finish(&other).unwrap();
        assert_eq!(other.read_blob(&digest).unwrap(), bytes);
        assert_eq!(p.read_piece(2).unwrap(), piece(2), "still readable");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn the_whole_digest_is_checked_however_the_pieces_came() {
        let d = tempfile::tempdir().unwrap();
        let (store, bytes, digest) = stored(d.path(), 2_500_000);
        let t = Tables::default().get(&store, &digest, 1 << 20).unwrap();
        let piece = |i: usize| {
            let (o, l) = t.range(i);
            bytes[o as usize..(o + l) as usize].to_vec()
        };
        // Last piece first: the digest waits for the run from piece 0.
        let other = Store::open(d.path().join("other")).unwrap();
        let mut p = Partial::open(&d.path().join("backwards"), t.clone()).unwrap();
        for i in [2, 1, 0] {
            p.write_piece(i, &[piece(i)]).unwrap();
        }
        p.finish(&other).unwrap();
        assert_eq!(other.read_blob(&digest).unwrap(), bytes);
        // Pieces that each pass their hash but make another blob than the
        // table names: refused, and nothing enters the store.
        let wrong = PieceTable {
            digest: Digest::sha256_of(b"another blob"),
            ..t.clone()
        };
        let third = Store::open(d.path().join("third")).unwrap();
        let mut p = Partial::open(&d.path().join("wrong"), wrong.clone()).unwrap();
        for i in 0..3 {
            p.write_piece(i, &[piece(i)]).unwrap();
        }
        match p.finish(&third) {
            Err(StoreError::DigestMismatch { expected, actual, .. }) => {
                assert_eq!(expected, wrong.digest);
                assert_eq!(actual, digest);
            }
            other => panic!("a wrong whole must be refused: {other:?}"),
        }
        assert!(!third.has(&wrong.digest) && !third.has(&digest));
    }

    #[test]
    fn asking_at_once_makes_one_table() {
        let d = tempfile::tempdir().unwrap();
        let (store, bytes, digest) = stored(d.path(), 3_000_000);
        let tables = Tables::default();
        let got: Vec<PieceTable> = std::thread::scope(|s| {
            let asks: Vec<_> = (0..8)
                .map(|_| s.spawn(|| tables.get(&store, &digest, 1 << 18).unwrap()))
                .collect();
            asks.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let want: Vec<String> = bytes
            .chunks(1 << 18)
            .map(|c| hex::encode(Sha256::digest(c)))
            .collect();
        for t in &got {
            assert_eq!(t.hashes, want);
        }
        assert_eq!(tables.made(), 1, "one hashing pass for eight asks");
        assert!(tables.locks.lock().unwrap().is_empty(), "no lock is kept");
        // Another piece size is another table.
        assert_eq!(tables.get(&store, &digest, 1 << 20).unwrap().count(), 3);
        assert_eq!(tables.made(), 2);
    }
}
