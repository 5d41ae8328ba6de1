//! Cut-through: a piece still arriving from a peer, shared with the
//! uploads that forward it before it is whole.
//!
//! Stored and forwarded whole, a piece costs every hop the time it takes
//! to arrive, and on links that each carry about ten transfers at once
//! that is half a second or more: the swarm's newest pieces stay with few
//! holders for long. Forwarded as it arrives, a hop costs the time to its
//! first bytes. Every byte but the last goes out as soon as it is in; the
//! last only once the piece has passed its hash. A forwarded piece that
//! fails (or whose sender vanishes) is cut short instead: the next peer
//! never holds it whole and wrong, so it never bans an honest forwarder
//! for a bad piece that came from somewhere else.
//!
//! The bytes are kept as the chunks they came in (`Bytes` off the QUIC
//! stream), shared with the forwards and with the write of the piece:
//! never copied here.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::watch;

/// Where an arriving piece stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// This many bytes are in.
    Open(usize),
    /// All in, and it passed its hash.
    Verified,
    /// It will not be whole: it failed its hash, or its sender vanished.
    Failed,
}

/// One piece on its way in.
pub struct Arriving {
    len: usize,
    chunks: Mutex<Chunks>,
    flow: watch::Sender<Flow>,
}

/// The chunks that came, in order, none empty.
#[derive(Default)]
struct Chunks {
    parts: Vec<Bytes>,
    /// Their length in all.
    got: usize,
}

/// Why a forward stopped short.
#[derive(Debug, PartialEq, Eq)]
pub struct Cut;

impl Arriving {
    pub fn new(len: usize) -> Arriving {
        Arriving {
            len,
            chunks: Mutex::default(),
            flow: watch::Sender::new(Flow::Open(0)),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// More bytes in (never past the piece's length: the rest is ignored,
    /// and the piece will fail its hash).
    pub fn push(&self, mut chunk: Bytes) {
        let got = {
            let mut c = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
            chunk.truncate(self.len - c.got);
            if !chunk.is_empty() {
                c.got += chunk.len();
                c.parts.push(chunk);
            }
            c.got
        };
        self.flow.send_if_modified(|f| match f {
            Flow::Open(n) if *n != got => {
                *n = got;
                true
            }
            _ => false,
        });
    }

    /// The end: verified or not. Only the first end counts.
    pub fn end(&self, verified: bool) {
        self.flow.send_if_modified(|f| match f {
            Flow::Open(_) => {
                *f = if verified { Flow::Verified } else { Flow::Failed };
                true
            }
            _ => false,
        });
    }

    pub fn flow(&self) -> Flow {
        *self.flow.borrow()
    }

    /// Whether the first `n` bytes that came are those of `whole` (a
    /// verified copy of the piece): a forward cut short may then go on
    /// from it.
    pub fn starts_like(&self, whole: &[u8], n: usize) -> bool {
        let c = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        if n > c.got || n > whole.len() {
            return false;
        }
        let mut at = 0;
        for part in &c.parts {
            if at == n {
                break;
            }
            let take = part.len().min(n - at);
            if part[..take] != whole[at..at + take] {
                return false;
            }
            at += take;
        }
        true
    }

    /// A reader of the bytes as they may go out.
    pub fn reader(&self) -> Reader<'_> {
        Reader {
            piece: self,
            rx: self.flow.subscribe(),
            sent: 0,
            part: 0,
            within: 0,
        }
    }
}

/// Hands out a piece's bytes as they may go: all but the last as they
/// arrive, the last once the piece is verified.
pub struct Reader<'a> {
    piece: &'a Arriving,
    rx: watch::Receiver<Flow>,
    sent: usize,
    /// Where byte `sent` is: the chunk, and the offset in it.
    part: usize,
    within: usize,
}

impl Reader<'_> {
    /// Bytes handed out so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// The next bytes (waiting for them) into `out` (emptied first), as
    /// slices of the chunks that came: `Ok(false)` once all went, or
    /// `Err(Cut)` when the piece will not be whole: the caller then cuts
    /// the transfer short.
    pub async fn next(&mut self, out: &mut Vec<Bytes>) -> Result<bool, Cut> {
        out.clear();
        let len = self.piece.len;
        while self.sent < len {
            let upto = match *self.rx.borrow_and_update() {
                Flow::Open(got) => got.min(len - 1),
                Flow::Verified => len,
                Flow::Failed => return Err(Cut),
            };
            if upto > self.sent {
                let c = self.piece.chunks.lock().unwrap_or_else(|e| e.into_inner());
                // `upto` is at most what came: every byte before it is in a chunk.
                while self.sent < upto {
                    let part = &c.parts[self.part];
                    let end = part.len().min(self.within + (upto - self.sent));
                    out.push(part.slice(self.within..end));
                    self.sent += end - self.within;
                    if end == part.len() {
                        (self.part, self.within) = (self.part + 1, 0);
                    } else {
                        self.within = end;
                    }
                }
                return Ok(true);
            }
            // The sender half lives in the piece: this only ends with news.
            if self.rx.changed().await.is_err() {
                return Err(Cut);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    async fn collect(a: Arc<Arriving>) -> (Vec<u8>, Result<(), Cut>) {
        let (mut got, mut chunks) = (Vec::new(), Vec::new());
        let mut r = a.reader();
        loop {
            match r.next(&mut chunks).await {
                Ok(true) => chunks.iter().for_each(|c| got.extend_from_slice(c)),
                Ok(false) => return (got, Ok(())),
                Err(cut) => return (got, Err(cut)),
            }
        }
    }

    #[tokio::test]
    async fn all_but_the_last_byte_goes_before_the_hash_passes() {
        let a = Arc::new(Arriving::new(6));
        let f = tokio::spawn(collect(a.clone()));
        a.push(Bytes::from_static(b"abc"));
        a.push(Bytes::from_static(b"def"));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!f.is_finished(), "the last byte waits for the verdict");
        a.end(true);
        let (bytes, r) = f.await.unwrap();
        assert_eq!(r, Ok(()));
        assert_eq!(bytes, b"abcdef");
    }

    #[tokio::test]
    async fn a_piece_that_fails_is_cut_short() {
        let a = Arc::new(Arriving::new(4));
        let f = tokio::spawn(collect(a.clone()));
        a.push(Bytes::from_static(b"wxyz"));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        a.end(false);
        // A late "verified" does not undo the failure.
        a.end(true);
        let (bytes, r) = f.await.unwrap();
        assert_eq!(r, Err(Cut));
        assert_eq!(bytes, b"wxy", "never the whole piece");
        assert_eq!(a.flow(), Flow::Failed);
    }

    #[test]
    fn a_forward_goes_on_from_a_verified_copy_only_if_it_agrees() {
        let a = Arriving::new(6);
        a.push(Bytes::from_static(b"ab"));
        a.push(Bytes::from_static(b"cd"));
        assert!(a.starts_like(b"abcdef", 3));
        assert!(a.starts_like(b"abcdef", 4));
        assert!(!a.starts_like(b"axcdef", 3));
        assert!(!a.starts_like(b"abcxef", 4));
        assert!(!a.starts_like(b"abcdef", 5), "not past what came");
    }

    #[tokio::test]
    async fn a_late_forward_of_a_verified_piece_sends_it_whole() {
        let a = Arc::new(Arriving::new(3));
        a.push(Bytes::from_static(b"12"));
        a.push(Bytes::from_static(b"345"));
        assert_eq!(a.flow(), Flow::Open(3), "bytes past the length are dropped");
        a.end(true);
        let (bytes, r) = collect(a).await;
        assert_eq!(r, Ok(()));
        assert_eq!(bytes, b"123");
    }
}
