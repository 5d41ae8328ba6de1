//! Piece selection: which piece to request next, and from whom.

use super::Bitfield;
use super::rng::Rng;

/// What a downloader knows about one peer it may ask.
#[derive(Debug, Clone, Copy)]
pub struct PeerView<'a> {
    pub have: &'a Bitfield,
    /// The peer can take another request now (a free slot under its
    /// in-flight bound and upload cap).
    pub free: bool,
    /// Requests this downloader already has in flight to the peer.
    pub load: u32,
    /// The origin: asked only when no other peer can give anything.
    pub origin: bool,
}

/// Chooses `(peer index, piece)` to request, or None when no free peer
/// holds a piece we still need.
///
/// - Rarest first: the piece held by the fewest known peers, so new pieces
///   spread before common ones and the swarm never waits on one holder.
/// - Pieces already requested (`pending`) are skipped, except in endgame
///   (every missing piece is pending), when a duplicate request to another
///   peer saves waiting on a slow one.
/// - The holder with the least load, ties broken at random (spreads load).
/// - The origin only if no other peer can serve, and only for pieces
///   `origin_ok` allows (the tracker lets it serve pieces no peer holds).
pub fn pick(
    own: &Bitfield,
    pending: &Bitfield,
    peers: &[PeerView<'_>],
    origin_ok: &dyn Fn(usize) -> bool,
    rng: &mut Rng,
) -> Option<(usize, usize)> {
    let n = own.len();
    let endgame = (0..n).all(|i| own.get(i) || pending.get(i));
    let wanted = |i: usize| !own.get(i) && (endgame || !pending.get(i));
    // availability[i]: how many non-origin peers hold piece i.
    let mut availability = vec![0u32; n];
    let mut servable = Bitfield::new(n);
    for p in peers.iter().filter(|p| !p.origin) {
        for i in own.wanted_from(p.have) {
            availability[i] += 1;
            if p.free {
                servable.set(i);
            }
        }
    }
    let chosen = rarest(
        &availability,
        (0..n).filter(|&i| servable.get(i) && wanted(i)),
        rng,
    );
    if let Some(piece) = chosen {
        let peer = least_loaded(peers, piece, rng)?;
        return Some((peer, piece));
    }
    // Last resort: the origin.
    let origin = peers.iter().position(|p| p.origin && p.free)?;
    let have = peers[origin].have;
    let piece = rarest(
        &availability,
        (0..n).filter(|&i| have.get(i) && wanted(i) && origin_ok(i)),
        rng,
    )?;
    Some((origin, piece))
}

/// A piece no peer holds yet (`unseeded(i)`), not held or requested here,
/// chosen at random: what a downloader asks the origin for *besides* its
/// peer requests, so the origin's uplink keeps putting new pieces into the
/// swarm instead of idling while peers trade (with few hosts, "origin as
/// last resort" alone leaves it idle most of the time).
pub fn unseeded(
    own: &Bitfield,
    pending: &Bitfield,
    unseeded: &dyn Fn(usize) -> bool,
    rng: &mut Rng,
) -> Option<usize> {
    let zero = vec![0u32; own.len()];
    rarest(
        &zero,
        (0..own.len()).filter(|&i| !own.get(i) && !pending.get(i) && unseeded(i)),
        rng,
    )
}

/// The candidate with the lowest availability; ties at random.
fn rarest(availability: &[u32], candidates: impl Iterator<Item = usize>, rng: &mut Rng) -> Option<usize> {
    let mut best: Option<(u32, usize)> = None;
    let mut ties = 0;
    for i in candidates {
        let a = availability[i];
        match best {
            Some((b, _)) if a > b => {}
            Some((b, _)) if a == b => {
                ties += 1;
                if rng.below(ties + 1) == 0 {
                    best = Some((a, i));
                }
            }
            _ => {
                best = Some((a, i));
                ties = 0;
            }
        }
    }
    best.map(|(_, i)| i)
}

/// A free, least-loaded non-origin holder of `piece`; ties at random.
fn least_loaded(peers: &[PeerView<'_>], piece: usize, rng: &mut Rng) -> Option<usize> {
    let mut best: Option<(u32, usize)> = None;
    let mut ties = 0;
    for (idx, p) in peers.iter().enumerate() {
        if p.origin || !p.free || !p.have.get(piece) {
            continue;
        }
        match best {
            Some((l, _)) if p.load > l => {}
            Some((l, _)) if p.load == l => {
                ties += 1;
                if rng.below(ties + 1) == 0 {
                    best = Some((p.load, idx));
                }
            }
            _ => {
                best = Some((p.load, idx));
                ties = 0;
            }
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf(len: usize, pieces: &[usize]) -> Bitfield {
        Bitfield::with(len, pieces)
    }

    fn view(have: &Bitfield, free: bool, load: u32, origin: bool) -> PeerView<'_> {
        PeerView {
            have,
            free,
            load,
            origin,
        }
    }

    #[test]
    fn rarest_piece_first_from_the_least_loaded_holder() {
        let own = bf(4, &[]);
        let none = bf(4, &[]);
        let a = bf(4, &[0, 1]);
        let b = bf(4, &[0, 1, 2]);
        let c = bf(4, &[0]);
        let peers = [
            view(&a, true, 0, false),
            view(&b, true, 3, false),
            view(&c, true, 0, false),
        ];
        let mut rng = Rng::new(1);
        // Piece 2 is held by one peer only: it goes first, from b.
        assert_eq!(pick(&own, &none, &peers, &|_| true, &mut rng), Some((1, 2)));
        // With piece 2 pending, piece 1 (two holders); a has less load than b.
        assert_eq!(
            pick(&own, &bf(4, &[2]), &peers, &|_| true, &mut rng),
            Some((0, 1))
        );
    }

    #[test]
    fn the_origin_is_the_last_resort() {
        let own = bf(3, &[]);
        let none = bf(3, &[]);
        let all = Bitfield::full(3);
        let peer = bf(3, &[1]);
        let mut rng = Rng::new(2);
        let peers = [view(&all, true, 0, true), view(&peer, true, 0, false)];
        assert_eq!(pick(&own, &none, &peers, &|_| true, &mut rng), Some((1, 1)));
        // The peer is busy: the origin serves, but only what it may.
        let peers = [view(&all, true, 0, true), view(&peer, false, 0, false)];
        let (who, piece) = pick(&own, &none, &peers, &|i| i != 1, &mut rng).unwrap();
        assert_eq!(who, 0);
        assert_ne!(piece, 1);
        assert_eq!(pick(&own, &none, &peers, &|_| false, &mut rng), None);
    }

    #[test]
    fn endgame_allows_duplicates_of_pending_pieces() {
        let own = bf(2, &[0]);
        let pending = bf(2, &[1]);
        let p = Bitfield::full(2);
        let peers = [view(&p, true, 0, false)];
        let mut rng = Rng::new(3);
        assert_eq!(pick(&own, &pending, &peers, &|_| true, &mut rng), Some((0, 1)));
        // Not endgame: piece 2 still unrequested, so piece 1 is not doubled.
        let own = bf(3, &[0]);
        let q = bf(3, &[1]);
        let peers = [view(&q, true, 0, false)];
        assert_eq!(pick(&own, &bf(3, &[1]), &peers, &|_| true, &mut rng), None);
    }

    #[test]
    fn unseeded_pieces_only() {
        let own = bf(4, &[0]);
        let pending = bf(4, &[1]);
        let mut rng = Rng::new(5);
        for _ in 0..20 {
            let i = unseeded(&own, &pending, &|i| i != 3, &mut rng).unwrap();
            assert_eq!(i, 2);
        }
        assert_eq!(unseeded(&own, &bf(4, &[1, 2]), &|i| i != 3, &mut rng), None);
    }

    #[test]
    fn ties_are_spread() {
        let own = bf(8, &[]);
        let none = bf(8, &[]);
        let p = Bitfield::full(8);
        let peers = [view(&p, true, 0, false), view(&p, true, 0, false)];
        let mut rng = Rng::new(4);
        let mut pieces = std::collections::BTreeSet::new();
        let mut who = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let (w, i) = pick(&own, &none, &peers, &|_| true, &mut rng).unwrap();
            pieces.insert(i);
            who.insert(w);
        }
        assert_eq!(pieces.len(), 8);
        assert_eq!(who.len(), 2);
    }
}
