//! P2P frames as a peer sends them (4-byte length, JSON header, bytes):
//! decoded as a request and as a response, never a panic; a decoded
//! message prints back to a header that decodes and prints the same; the
//! bitfields and piece tables in it are checked the way the node checks
//! them before use, and a table that passes has pieces that add up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use strata::p2p::Bitfield;
use strata::p2p::wire::{Request, Response, decode_frame, decode_header};

fn reprints<T: Serialize + DeserializeOwned>(m: &T) {
    let json = serde_json::to_vec(m).expect("prints");
    let again: T = decode_header(&json).expect("printed header decodes");
    assert_eq!(
        serde_json::to_vec(&again).expect("prints"),
        json,
        "header changed on a round trip"
    );
}

fn bitfield(pieces: usize, have: &[u8]) {
    if let Some(b) = Bitfield::from_bytes(pieces, have) {
        assert_eq!(b.len(), pieces);
        assert_eq!(b.to_bytes(), have, "bitfield bytes changed on a round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok((req, _)) = decode_frame::<Request>(data) {
        reprints(&req);
        if let Request::Stream { pieces, have, .. } = &req {
            bitfield(*pieces, have);
        }
    }
    if let Ok((resp, _)) = decode_frame::<Response>(data) {
        reprints(&resp);
        match &resp {
            Response::Have { pieces, have } => bitfield(*pieces, have),
            Response::Pieces { table } if table.is_consistent() => {
                let mut total = 0u64;
                for i in 0..table.count() {
                    let (start, len) = table.range(i);
                    assert_eq!(start, total, "piece {i} does not follow the one before");
                    assert!(len > 0 && len <= table.piece_size);
                    total += len;
                }
                assert_eq!(total, table.size, "pieces do not add up to the blob");
            }
            _ => {}
        }
    }
});
