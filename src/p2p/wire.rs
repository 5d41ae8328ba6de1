//! Messages between agents and the origin, one request per QUIC stream:
//! a 4-byte big-endian length, a JSON header, and for a piece its bytes.

use serde::{Deserialize, Serialize};

use super::pieces::PieceTable;
use crate::digest::Digest;

/// Largest JSON header accepted (a piece table of a 64 GiB blob in 1 MiB
/// pieces is about 4.5 MiB).
pub const MAX_HEADER: usize = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The piece table of a blob (the origin answers).
    Pieces { blob: Digest },
    /// Which pieces of a blob the node holds.
    Have { blob: Digest },
    /// One piece's bytes.
    Piece { blob: Digest, index: usize },
    /// To the tracker: what `node` holds, and where it listens.
    Announce {
        blob: Digest,
        node: String,
        addr: String,
        zone: u32,
        #[serde(with = "b64")]
        have: Vec<u8>,
    },
    /// To the tracker: `node` holds one more piece, or is receiving it
    /// (and forwards its bytes as they come: see `relay`).
    Got {
        blob: Digest,
        node: String,
        index: usize,
    },
    /// To the tracker: peers for `node`, and which pieces some peer holds.
    Peers { blob: Digest, node: String, want: usize },
    /// To the tracker: where `node` should stream `blob` from. Agents
    /// form a chain, each streaming from the one before it and the first
    /// from the origin (a `Response::Upstream`); with more live agents
    /// than a chain holds and `stripes` (the asker can follow them), each
    /// streams every stripe of the blob from its parent in that stripe's
    /// tree (a `Response::Stripes`); otherwise an error (the agent then
    /// swarms).
    Upstream {
        blob: Digest,
        node: String,
        addr: String,
        #[serde(default)]
        stripes: bool,
    },
    /// To the agent before the asker in a chain (or the origin): every
    /// piece of `blob` not in `have`, as this node gets them, each a
    /// `Response::Next` and its bytes; the stream ends once the asker has
    /// all `pieces`, or when nothing new came for a while.
    Stream {
        blob: Digest,
        pieces: usize,
        #[serde(with = "b64")]
        have: Vec<u8>,
    },
    /// To the tracker: `peer` failed or misbehaved; stop handing it out.
    Gone { blob: Digest, peer: String },
    /// Counters of the node (origin egress for the benchmarks).
    Stats,
    /// To the origin: this agent is alive, where it listens, its labels.
    Register {
        node: String,
        addr: String,
        zone: u32,
        labels: Vec<String>,
    },
    /// To the origin: a new certificate for the asker (the name of the
    /// certificate it connected with) with the key of this CSR.
    Renew { csr: String },
    /// To an agent: fetch every blob of `image` (REPO:TAG or REPO@DIGEST
    /// of the origin registry) and, with `load`, pull it into the local
    /// engine. The agent answers with `Progress` frames, then `Ok`/`Error`.
    Prewarm { image: String, load: bool },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Ok,
    Pieces {
        table: PieceTable,
    },
    Have {
        pieces: usize,
        #[serde(with = "b64")]
        have: Vec<u8>,
    },
    /// `len` raw bytes follow the header.
    Piece {
        len: u64,
    },
    /// Peers to ask, and the pieces at least one peer holds (a bitfield:
    /// the origin serves only the others).
    Peers {
        peers: Vec<PeerAddr>,
        #[serde(with = "b64")]
        seeded: Vec<u8>,
    },
    /// The agent to stream a blob from (None: the origin).
    Upstream {
        peer: Option<PeerAddr>,
    },
    /// The agent to stream each stripe of a blob from (None: the origin):
    /// piece i is in stripe (i + shift) mod parents.len().
    Stripes {
        shift: usize,
        parents: Vec<Option<PeerAddr>>,
    },
    /// One piece of a `Stream`: `len` raw bytes of piece `index` follow.
    Next {
        index: usize,
        len: u64,
    },
    Stats {
        piece_bytes_served: u64,
        pieces_served: u64,
    },
    /// Prewarm progress: bytes of the image held so far, of `total`.
    Progress {
        done: u64,
        total: u64,
        message: String,
    },
    /// Refused for now, not for good: ask another holder, and this one
    /// again after `retry_ms` (0: when the asker knows more, e.g. the
    /// origin refusing a piece that peers already hold).
    Busy {
        retry_ms: u64,
        message: String,
    },
    /// A renewed node certificate (PEM).
    Renewed {
        cert: String,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    pub name: String,
    pub addr: String,
    /// The pieces the tracker knows this peer holds (`Peers` answers carry
    /// it, so an agent need not ask every peer); absent: ask the peer.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub have: Option<Vec<u8>>,
}

// Bitfields travel as base64 strings, not JSON arrays of numbers: the
// tracker answers every downloading agent several times a second from the
// origin's own uplink, so their size is taken from the injection of new
// pieces (a 256-piece bitfield: 44 bytes instead of about 130).
mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::b64::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

pub async fn write_msg<T: Serialize>(s: &mut quinn::SendStream, msg: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    s.write_all(&(body.len() as u32).to_be_bytes()).await?;
    s.write_all(&body).await?;
    Ok(())
}

pub async fn read_msg<T: for<'de> Deserialize<'de>>(r: &mut quinn::RecvStream) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e))?;
    let len = header_len(len)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, e))?;
    decode_header(&body)
}

/// The length of the JSON header a 4-byte prefix announces, refused over
/// [`MAX_HEADER`] (before anything is allocated for it).
pub fn header_len(prefix: [u8; 4]) -> std::io::Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_HEADER {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes is over the limit"),
        ));
    }
    Ok(len)
}

/// Decodes a JSON header (the bytes after the length prefix).
pub fn decode_header<T: for<'de> Deserialize<'de>>(body: &[u8]) -> std::io::Result<T> {
    serde_json::from_slice(body).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Decodes one whole frame from bytes as [`read_msg`] reads it from a
/// stream: the prefix, then the header; returns the message and the bytes
/// that follow it (a piece's). For fuzzing and tests: the node reads
/// frames from QUIC streams with [`read_msg`], which shares these steps.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::io::Result<(T, &[u8])> {
    let short = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "frame cut short");
    let (prefix, rest) = bytes.split_first_chunk::<4>().ok_or_else(short)?;
    let len = header_len(*prefix)?;
    if rest.len() < len {
        return Err(short());
    }
    let (body, after) = rest.split_at(len);
    Ok((decode_header(body)?, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfields_travel_as_base64() {
        let p = PeerAddr {
            name: "a1".into(),
            addr: "10.0.0.1:5001".into(),
            have: Some(vec![0xff, 0x01]),
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"name":"a1","addr":"10.0.0.1:5001","have":"/wE="}"#);
        assert_eq!(serde_json::from_str::<PeerAddr>(&json).unwrap(), p);
        // No bitfield: the field is left out, and read back as None.
        let none = PeerAddr { have: None, ..p };
        let json = serde_json::to_string(&none).unwrap();
        assert_eq!(json, r#"{"name":"a1","addr":"10.0.0.1:5001"}"#);
        assert_eq!(serde_json::from_str::<PeerAddr>(&json).unwrap(), none);
        // Not base64: a clear error, not a panic.
        let bad = r#"{"reply":"have","pieces":3,"have":"*"}"#;
        assert!(serde_json::from_str::<Response>(bad).is_err());
    }
}
