//! Peer selection for one blob: who holds which pieces, and which peers to
//! hand an agent that asks.

use std::collections::HashMap;

use super::Bitfield;
use super::rng::Rng;

/// A peer as the tracker knows it (for one blob).
#[derive(Debug, Clone)]
struct Peer {
    have: Bitfield,
    zone: u32,
    /// How often the tracker handed this peer out: new askers go to
    /// peers that were handed out least, so load spreads.
    handed_out: u64,
}

/// The tracker's view of one blob's swarm. Peers are numbered by the
/// caller (the server maps agent identities to ids).
#[derive(Debug, Clone)]
pub struct Swarm {
    pieces: usize,
    peers: HashMap<u32, Peer>,
    /// Ids in insertion order, for sampling.
    order: Vec<u32>,
    /// holders[i]: how many peers announced piece i.
    holders: Vec<u32>,
    /// Pieces the origin is sending right now (it sends each at most once
    /// at a time, and only while no peer holds it).
    origin_sending: Bitfield,
}

impl Swarm {
    pub fn new(pieces: usize) -> Swarm {
        Swarm {
            pieces,
            peers: HashMap::new(),
            order: Vec::new(),
            holders: vec![0; pieces],
            origin_sending: Bitfield::new(pieces),
        }
    }

    pub fn pieces(&self) -> usize {
        self.pieces
    }

    /// A peer tells what it holds (all of it: the first announce, or after
    /// a restart).
    pub fn announce(&mut self, id: u32, zone: u32, have: &Bitfield) {
        assert_eq!(have.len(), self.pieces);
        let peer = self.peers.entry(id).or_insert_with(|| {
            self.order.push(id);
            Peer {
                have: Bitfield::new(have.len()),
                zone,
                handed_out: 0,
            }
        });
        peer.zone = zone;
        for i in 0..self.pieces {
            match (peer.have.get(i), have.get(i)) {
                (false, true) => {
                    self.holders[i] += 1;
                    self.origin_sending.unset(i);
                }
                (true, false) => self.holders[i] -= 1,
                _ => {}
            }
        }
        peer.have = have.clone();
    }

    /// The share of the blob peer `id` announced (0 to 1), if it did.
    pub fn share_of(&self, id: u32) -> Option<f64> {
        let p = self.peers.get(&id)?;
        Some(p.have.count() as f64 / self.pieces.max(1) as f64)
    }

    /// A peer holds one more piece (or is receiving it, and forwards it
    /// as it comes).
    pub fn add_piece(&mut self, id: u32, piece: usize) {
        if let Some(p) = self.peers.get_mut(&id)
            && p.have.set(piece)
        {
            self.holders[piece] += 1;
            self.origin_sending.unset(piece);
        }
    }

    /// A peer left (or was found dead or banned).
    pub fn remove(&mut self, id: u32) {
        if let Some(p) = self.peers.remove(&id) {
            for i in 0..self.pieces {
                if p.have.get(i) {
                    self.holders[i] -= 1;
                }
            }
            self.order.retain(|x| *x != id);
        }
    }

    /// What peer `id` holds, as far as the tracker knows: every piece in
    /// it was announced or reported by the peer (held, or arriving there
    /// and forwarded as it comes).
    pub fn have_of(&self, id: u32) -> Option<&Bitfield> {
        self.peers.get(&id).map(|p| &p.have)
    }

    pub fn holders(&self, piece: usize) -> u32 {
        self.holders[piece]
    }

    /// The pieces at least one peer holds.
    pub fn seeded(&self) -> Bitfield {
        let mut b = Bitfield::new(self.pieces);
        for i in (0..self.pieces).filter(|&i| self.holders[i] > 0) {
            b.set(i);
        }
        b
    }

    /// Whether the origin may send `piece`: no peer holds it and the
    /// origin is not already sending it. Reserves it when true.
    pub fn origin_may_send(&mut self, piece: usize) -> bool {
        if self.holders[piece] > 0 || self.origin_sending.get(piece) {
            return false;
        }
        self.origin_sending.set(piece);
        true
    }

    /// A reservation of [`Swarm::origin_may_send`] that did not complete.
    pub fn origin_failed(&mut self, piece: usize) {
        self.origin_sending.unset(piece);
    }

    /// Up to `want` peers for `asker`: only peers holding a piece the
    /// asker lacks, same zone first, then those handed out least, ties at
    /// random. Samples at most `8 × want` peers, so the cost does not grow
    /// with the swarm.
    pub fn peers_for(&mut self, asker: u32, want: usize, rng: &mut Rng) -> Vec<u32> {
        let (mine, zone) = match self.peers.get(&asker) {
            Some(p) => (p.have.clone(), p.zone),
            None => (Bitfield::new(self.pieces), u32::MAX),
        };
        let n = self.order.len();
        let probes = (want * 8).max(1);
        let mut picked: Vec<(bool, u64, u64, u32)> = Vec::new();
        let consider = |id: u32, rng: &mut Rng, picked: &mut Vec<(bool, u64, u64, u32)>| {
            if id == asker || picked.iter().any(|p| p.3 == id) {
                return;
            }
            let p = &self.peers[&id];
            if mine.lacks_any_of(&p.have) {
                picked.push((p.zone != zone, p.handed_out, rng.next_u64(), id));
            }
        };
        if n <= probes {
            for &id in &self.order {
                consider(id, rng, &mut picked);
            }
        } else {
            for _ in 0..probes {
                let id = self.order[rng.below(n)];
                consider(id, rng, &mut picked);
            }
        }
        picked.sort_unstable();
        picked.truncate(want);
        picked
            .into_iter()
            .map(|(_, _, _, id)| {
                if let Some(p) = self.peers.get_mut(&id) {
                    p.handed_out += 1;
                }
                id
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf(len: usize, pieces: &[usize]) -> Bitfield {
        Bitfield::with(len, pieces)
    }

    #[test]
    fn hands_out_useful_peers_same_zone_first_and_spreads_load() {
        let mut s = Swarm::new(4);
        s.announce(1, 0, &bf(4, &[0, 1]));
        s.announce(2, 1, &bf(4, &[0, 1]));
        s.announce(3, 1, &bf(4, &[2]));
        s.announce(4, 1, &bf(4, &[]));
        s.announce(9, 1, &bf(4, &[0, 1, 2]));
        let mut rng = Rng::new(1);
        let got = s.peers_for(9, 10, &mut rng);
        assert!(got.is_empty(), "nobody has what 9 lacks: {got:?}");
        // 4 (zone 1, holds nothing) gets zone-1 holders first.
        let got = s.peers_for(4, 2, &mut rng);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|id| [2, 3, 9].contains(id)), "{got:?}");
        // Repeated asks rotate through holders instead of piling on one.
        let mut counts = HashMap::new();
        for _ in 0..30 {
            for id in s.peers_for(4, 1, &mut rng) {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        assert!(counts.len() >= 3, "{counts:?}");
    }

    #[test]
    fn the_origin_sends_a_piece_only_while_no_peer_holds_it() {
        let mut s = Swarm::new(2);
        s.announce(1, 0, &bf(2, &[]));
        assert!(s.origin_may_send(0));
        assert!(!s.origin_may_send(0), "already being sent");
        s.add_piece(1, 0);
        assert_eq!(s.holders(0), 1);
        assert!(!s.origin_may_send(0), "a peer has it now");
        // The holder leaves: the origin may send it again.
        s.remove(1);
        assert_eq!(s.holders(0), 0);
        assert!(s.origin_may_send(0));
        s.origin_failed(0);
        assert!(s.origin_may_send(0));
    }
}
