//! Blobs through the mirror: from the store when whole here, else sent to
//! the client as the swarm brings their pieces, in order, each piece only
//! once it passed its hash, so the engine's copy runs alongside the
//! download instead of after it. The last piece of a whole blob goes only
//! once the download put the blob in the store, which it does only when
//! the blob's digest (computed as the pieces came, no pass of the mirror's
//! own) matched: a response whose blob turns out wrong, or whose download
//! fails, is cut off (the body ends in an error, the connection is reset)
//! and never ends as if complete. Byte ranges (`Range: bytes=A-B`, `A-`,
//! `-N`) of either; a range short of the whole blob has verified pieces
//! only, no whole check.

use std::io::{self, SeekFrom};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Mirror, error, set};
use crate::digest::Digest;
use crate::p2p::node::Following;
use crate::p2p::pieces::PieceTable;

pub(super) async fn blob(m: &Mirror, d: &Digest, h: &HeaderMap, head: bool) -> Response {
    if !m.store.has(d) {
        // A gzip layer made here and evicted since is made again; any
        // other blob comes from the swarm, served as it comes.
        let made = match m.transcoder.layer(d).await {
            Ok(made) => made,
            Err(e) => return error(StatusCode::BAD_GATEWAY, "UNKNOWN", e),
        };
        if !made {
            let mut following = m.node.follow(m.origin, d);
            match following.table().await {
                Ok(Some(table)) => return arriving(following, table, h, head),
                // Whole in the store meanwhile.
                Ok(None) => {}
                Err(e) => return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", e),
            }
        }
    }
    stored(m, d, h, head).await
}

/// A blob whole in the store, from its file.
async fn stored(m: &Mirror, d: &Digest, h: &HeaderMap, head: bool) -> Response {
    let path = m.store.blob_path(d);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", e),
    };
    let size = match file.metadata().await {
        Ok(md) => md.len(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e),
    };
    let Ok(range) = range(h, size) else {
        return unsatisfiable(size);
    };
    let (start, end) = range.unwrap_or((0, size));
    let body = if head {
        Body::empty()
    } else {
        if let Err(e) = file.seek(SeekFrom::Start(start)).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e);
        }
        let part = file.take(end - start);
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(part, 128 << 10))
    };
    respond(body, d, size, range)
}

/// A blob on its way here, sent as its pieces arrive.
fn arriving(following: Following, table: PieceTable, h: &HeaderMap, head: bool) -> Response {
    let Ok(range) = range(h, table.size) else {
        return unsatisfiable(table.size);
    };
    let (size, digest) = (table.size, table.digest.clone());
    let body = if head {
        Body::empty()
    } else {
        let (start, end) = range.unwrap_or((0, size));
        Body::from_stream(send(following, table, start, end))
    };
    respond(body, &digest, size, range)
}

fn respond(body: Body, d: &Digest, size: u64, range: Option<(u64, u64)>) -> Response {
    let mut r = body.into_response();
    let (start, end) = range.unwrap_or((0, size));
    if range.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        set(
            &mut r,
            "Content-Range",
            format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    set(&mut r, "Content-Type", "application/octet-stream");
    set(&mut r, "Content-Length", (end - start).to_string());
    set(&mut r, "Accept-Ranges", "bytes");
    set(&mut r, "Docker-Content-Digest", d.to_string());
    r
}

fn unsatisfiable(size: u64) -> Response {
    let mut r = error(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "RANGE_INVALID",
        format!("the blob has {size} bytes; ask for one range within them"),
    );
    set(&mut r, "Content-Range", format!("bytes */{size}"));
    r
}

/// The bytes `start..end` a `Range` header asks for of a blob of `size`
/// bytes: `Ok(None)` without one, `Err` when it is not one satisfiable
/// range of bytes (several ranges are refused too).
fn range(h: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = h.get(header::RANGE) else {
        return Ok(None);
    };
    let spec = v.to_str().map_err(drop)?.trim();
    let (first, last) = spec
        .strip_prefix("bytes=")
        .and_then(|s| s.split_once('-'))
        .ok_or(())?;
    let number = |s: &str| match s.trim() {
        "" => Ok(None),
        s if s.bytes().all(|b| b.is_ascii_digit()) => s.parse::<u64>().map(Some).map_err(drop),
        _ => Err(()),
    };
    let (start, end) = match (number(first)?, number(last)?) {
        (Some(a), Some(b)) if a <= b => (a, b.saturating_add(1).min(size)),
        (Some(a), None) => (a, size),
        (None, Some(n)) if n > 0 => (size.saturating_sub(n), size),
        _ => return Err(()),
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Verified pieces of one blob, each once it is here, and the verdict on
/// the whole of it.
pub(super) trait Pieces: Send + 'static {
    fn piece(&mut self, i: usize) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
    /// `Ok` once the whole blob is known good (its digest matched), an
    /// error when it is not.
    fn whole(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Pieces for Following {
    async fn piece(&mut self, i: usize) -> io::Result<Vec<u8>> {
        Following::piece(self, i).await.map_err(io::Error::other)
    }

    /// The download's verdict: it adopts the blob into the store only
    /// once the digest it computed over the pieces as they came matched.
    async fn whole(&mut self) -> io::Result<()> {
        Following::done(self).await.map_err(io::Error::other)
    }
}

/// What a body being sent has left to do.
struct Sending<P> {
    pieces: P,
    table: PieceTable,
    /// The next byte to send, and the end of the range.
    next: u64,
    end: u64,
    /// Whether the bytes are the whole blob, whose verdict the last of
    /// them waits for.
    whole: bool,
}

impl<P: Pieces> Sending<P> {
    /// Waits for the whole blob's verdict, if the bytes are the whole
    /// blob: an error when they are not the blob asked for.
    async fn check(&mut self) -> io::Result<()> {
        if !std::mem::take(&mut self.whole) {
            return Ok(());
        }
        self.pieces.whole().await.inspect_err(|e| {
            crate::metrics::MIRROR_BLOBS_CUT_OFF.add(1);
            tracing::error!(
                "mirror: {}: every piece passed its hash, but not the whole blob ({e}): response cut off before its last piece",
                self.table.digest
            );
        })
    }
}

/// The bytes `start..end` of the blob `table` describes, a piece at a
/// time as `pieces` yields them; with the whole blob, the last piece
/// waits for the whole blob's verdict.
fn send<P: Pieces>(
    pieces: P,
    table: PieceTable,
    start: u64,
    end: u64,
) -> impl Stream<Item = io::Result<Bytes>> {
    let whole = start == 0 && end == table.size;
    let sending = Sending {
        pieces,
        table,
        next: start,
        end,
        whole,
    };
    futures_util::stream::try_unfold(sending, |mut s| async move {
        if s.next >= s.end {
            s.check().await?;
            return Ok(None);
        }
        let i = (s.next / s.table.piece_size) as usize;
        let (offset, len) = s.table.range(i);
        let bytes = s.pieces.piece(i).await.inspect_err(|e| {
            crate::metrics::MIRROR_BLOBS_CUT_OFF.add(1);
            tracing::warn!("mirror: {}: cut off at byte {}: {e}", s.table.digest, s.next);
        })?;
        if bytes.len() as u64 != len {
            return Err(io::Error::other(format!(
                "{}: piece {i} has {} bytes, not {len}",
                s.table.digest,
                bytes.len()
            )));
        }
        let upto = s.end.min(offset + len);
        let chunk = Bytes::from(bytes).slice((s.next - offset) as usize..(upto - offset) as usize);
        s.next = upto;
        if s.next >= s.end {
            // Before the last bytes go: a client never has them all of a bad blob.
            s.check().await?;
        }
        Ok(Some((chunk, s)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;

    /// Pieces from memory (each one as the table says: they pass their hashes).
    struct Fake {
        bytes: Vec<u8>,
        piece_size: u64,
        /// Fails at this piece, as a download that stops midway.
        fail_at: Option<usize>,
        /// The digest the download checks the whole blob against (the table's).
        digest: Digest,
    }

    impl Pieces for Fake {
        async fn piece(&mut self, i: usize) -> io::Result<Vec<u8>> {
            if self.fail_at == Some(i) {
                return Err(io::Error::other("the download failed"));
            }
            let start = i * self.piece_size as usize;
            let end = (start + self.piece_size as usize).min(self.bytes.len());
            Ok(self.bytes[start..end].to_vec())
        }

        /// As the download's end: the blob's digest against the table's.
        async fn whole(&mut self) -> io::Result<()> {
            let actual = Digest::sha256_of(&self.bytes);
            match &self.digest {
                d if *d == actual => Ok(()),
                d => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{d}: the bytes have digest {actual}"),
                )),
            }
        }
    }

    fn table(bytes: &[u8], piece_size: u64, digest: Digest) -> PieceTable {
        PieceTable {
            digest,
            size: bytes.len() as u64,
            piece_size,
            hashes: bytes
                .chunks(piece_size as usize)
                .map(|c| Digest::sha256_of(c).hex().to_string())
                .collect(),
        }
    }

    fn sent(fake: Fake, t: PieceTable, start: u64, end: u64) -> io::Result<Vec<u8>> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(
            send(fake, t, start, end).try_fold(Vec::new(), |mut all, b| async move {
                all.extend_from_slice(&b);
                Ok(all)
            }),
        )
    }

    fn blob() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_whole_blob_and_ranges_are_sent_piece_by_piece() {
        let bytes = blob();
        let t = table(&bytes, 1000, Digest::sha256_of(&bytes));
        let fake = || Fake {
            bytes: bytes.clone(),
            piece_size: 1000,
            fail_at: None,
            digest: t.digest.clone(),
        };
        assert_eq!(sent(fake(), t.clone(), 0, 10_000).unwrap(), bytes);
        for (a, b) in [(0, 1), (999, 1001), (1500, 7321), (9999, 10_000), (3000, 4000)] {
            let got = sent(fake(), t.clone(), a, b).unwrap();
            assert_eq!(got, &bytes[a as usize..b as usize], "{a}..{b}");
        }
    }

    #[test]
    fn a_blob_whose_pieces_pass_but_whose_digest_does_not_is_cut_off() {
        let bytes = blob();
        // Every piece matches its hash; the table names another blob.
        let t = table(&bytes, 1000, Digest::sha256_of(b"another blob"));
        let fake = || Fake {
            bytes: bytes.clone(),
            piece_size: 1000,
            fail_at: None,
            digest: t.digest.clone(),
        };
        let e = sent(fake(), t.clone(), 0, 10_000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        // The last piece is held back: what went out is short of the blob.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got: Vec<io::Result<Bytes>> = rt.block_on(futures_util::StreamExt::collect(send(
            fake(),
            t.clone(),
            0,
            10_000,
        )));
        let out: usize = got.iter().flatten().map(Bytes::len).sum();
        assert_eq!(out, 9000);
        assert!(got.last().unwrap().is_err());
        // A part of it has no whole check: its pieces passed.
        assert_eq!(sent(fake(), t, 2000, 5000).unwrap(), &bytes[2000..5000]);
    }

    #[test]
    fn a_download_that_fails_midway_cuts_the_body_off() {
        let bytes = blob();
        let t = table(&bytes, 1000, Digest::sha256_of(&bytes));
        let fake = Fake {
            bytes,
            piece_size: 1000,
            fail_at: Some(4),
            digest: t.digest.clone(),
        };
        assert!(sent(fake, t, 0, 10_000).is_err());
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says_or_refused() {
        let h = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::RANGE, v.parse().unwrap());
            h
        };
        assert_eq!(range(&HeaderMap::new(), 100), Ok(None));
        assert_eq!(range(&h("bytes=0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(range(&h("bytes=10-"), 100), Ok(Some((10, 100))));
        assert_eq!(range(&h("bytes=90-200"), 100), Ok(Some((90, 100))));
        assert_eq!(range(&h("bytes=-10"), 100), Ok(Some((90, 100))));
        assert_eq!(range(&h("bytes=-200"), 100), Ok(Some((0, 100))));
        assert_eq!(range(&h("bytes=99-99"), 100), Ok(Some((99, 100))));
        for bad in [
            "bytes=100-",
            "bytes=100-200",
            "bytes=5-4",
            "bytes=-0",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(range(&h(bad), 100), Err(()), "{bad}");
        }
        assert_eq!(range(&h("bytes=0-"), 0), Err(()), "nothing in an empty blob");
    }
}
