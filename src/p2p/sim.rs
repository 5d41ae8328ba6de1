//! A deterministic simulator of a fan-out: N hosts and one origin, every
//! link (up and down) limited to B, a blob of S bytes in pieces of p. Time
//! advances in rounds of one piece time p/B; in a round each link carries
//! at most one piece. Every decision goes through the real
//! [`picker::pick`](super::picker::pick) and
//! [`Swarm`](super::tracker::Swarm), so what the simulator shows at
//! 10,000 hosts is what the scheduler does.
//!
//! Two layouts: [`Layout::Swarm`] (the picker and tracker above, what
//! agents do past a chain) and [`Layout::Stripes`] (the
//! [`stripes::Plan`](super::stripes::Plan): q stripes down q trees of one
//! circulant graph). Both run under the same rules: each host's uplink
//! and downlink, and the origin's uplink, carry at most one piece per
//! round, and a piece received in a round can be forwarded from the next
//! one (store and forward; a piece is useful only once whole).
//!
//! No schedule can beat `S/B + (⌈log2(N+1)⌉ − 1)·p/B`: the origin needs
//! S/B to send every piece once, and the last piece it sends can at best
//! double its holders every round.

use serde::Serialize;

use super::Bitfield;
use super::picker::{PeerView, pick};
use super::rng::Rng;
use super::stripes::{self, Plan};
use super::tracker::Swarm;

/// How the hosts are organised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Rarest-first swarm through the real picker and tracker.
    Swarm,
    /// q stripes over q trees of one circulant graph ([`Plan`]).
    Stripes,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub hosts: usize,
    pub size: u64,
    pub piece: u64,
    /// Bits per second of every link.
    pub bandwidth: f64,
    /// Peers the tracker hands a host per ask.
    pub peers: usize,
    /// Hosts are spread over this many zones (racks).
    pub zones: u32,
    pub seed: u64,
    pub layout: Layout,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub layout: Layout,
    pub hosts: usize,
    pub pieces: usize,
    pub piece_seconds: f64,
    /// S/B.
    pub floor_seconds: f64,
    /// S/B + (⌈log2(N+1)⌉ − 1)·p/B.
    pub bound_seconds: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
    pub origin_pieces: u64,
    /// Origin egress as a multiple of S.
    pub origin_copies: f64,
    pub tracker_asks: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("the simulation needs at least one host and one piece")]
    Empty,
    #[error("no progress after {rounds} rounds ({done} of {hosts} hosts complete)")]
    Stuck { rounds: u64, done: usize, hosts: usize },
    #[error("stripe plan: {0}")]
    Plan(#[from] stripes::PlanError),
}

const ORIGIN: u32 = u32::MAX;

pub fn run(cfg: &Config) -> Result<Report, SimError> {
    let n = cfg.hosts;
    let pieces = cfg.size.div_ceil(cfg.piece.max(1)) as usize;
    if n == 0 || pieces == 0 {
        return Err(SimError::Empty);
    }
    match cfg.layout {
        Layout::Swarm => run_swarm(cfg, pieces),
        Layout::Stripes => run_stripes(cfg, pieces),
    }
}

fn run_swarm(cfg: &Config, pieces: usize) -> Result<Report, SimError> {
    let n = cfg.hosts;
    let mut rng = Rng::new(cfg.seed);
    let mut swarm = Swarm::new(pieces);
    let origin_have = Bitfield::full(pieces);
    let mut have: Vec<Bitfield> = (0..n).map(|_| Bitfield::new(pieces)).collect();
    let zone = |h: usize| (h as u32) % cfg.zones.max(1);
    for (h, b) in have.iter().enumerate() {
        swarm.announce(h as u32, zone(h), b);
    }
    let mut neighbours: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut done_at: Vec<Option<u64>> = vec![None; n];
    let mut uploads: Vec<u32> = vec![0; n];
    let none = Bitfield::new(pieces);
    let (mut origin_pieces, mut asks) = (0u64, 0u64);
    let mut round = 0u64;
    let limit = 20 * (pieces as u64 + 64);
    let mut done = 0;
    while done < n {
        round += 1;
        if round > limit {
            return Err(SimError::Stuck {
                rounds: limit,
                done,
                hosts: n,
            });
        }
        let mut up_busy = vec![false; n];
        let mut origin_busy = false;
        let mut transfers: Vec<(u32, usize, usize)> = Vec::new();
        let mut order: Vec<usize> = (0..n).filter(|&h| done_at[h].is_none()).collect();
        rng.shuffle(&mut order);
        for r in order {
            for attempt in 0..2 {
                let views: Vec<PeerView<'_>> = neighbours[r]
                    .iter()
                    .map(|&id| PeerView {
                        have: &have[id as usize],
                        free: !up_busy[id as usize],
                        load: uploads[id as usize],
                        origin: false,
                    })
                    .chain(std::iter::once(PeerView {
                        have: &origin_have,
                        free: !origin_busy,
                        load: 0,
                        origin: true,
                    }))
                    .collect();
                let origin_idx = views.len() - 1;
                let ok = |i: usize| swarm.holders(i) == 0;
                let choice = pick(&have[r], &none, &views, &ok, &mut rng);
                match choice {
                    Some((idx, piece)) if idx == origin_idx => {
                        if swarm.origin_may_send(piece) {
                            origin_busy = true;
                            origin_pieces += 1;
                            transfers.push((ORIGIN, r, piece));
                        }
                        break;
                    }
                    Some((idx, piece)) => {
                        let from = neighbours[r][idx] as usize;
                        up_busy[from] = true;
                        uploads[from] += 1;
                        transfers.push((from as u32, r, piece));
                        break;
                    }
                    None if attempt == 0 => {
                        asks += 1;
                        neighbours[r] = swarm.peers_for(r as u32, cfg.peers, &mut rng);
                    }
                    None => {}
                }
            }
        }
        for (_, to, piece) in transfers {
            if have[to].set(piece) {
                swarm.add_piece(to as u32, piece);
            }
            if have[to].is_full() && done_at[to].is_none() {
                done_at[to] = Some(round);
                done += 1;
            }
        }
    }
    Ok(report(cfg, pieces, &done_at, round, origin_pieces, asks))
}

/// Stripes, as Träff's schedule runs them: in round r the slot is
/// k = (r − 1 + shift) mod q, and every host (the origin included) makes
/// one decision of its own: it sends to its slot-k child the next piece
/// of the stripe that child takes in slot k, if it holds that piece. A
/// child that already has that whole stripe gets instead the lowest piece
/// the host holds and it lacks (the schedule's last period). One child per
/// slot and one parent per slot, so no link ever carries more than one
/// piece a round, and no host needs to know more than its own plan, the
/// round and what its child lacks. A piece that is late leaves the slot
/// idle; nothing is coordinated centrally.
fn run_stripes(cfg: &Config, pieces: usize) -> Result<Report, SimError> {
    let n = cfg.hosts;
    let plan = Plan::new(n)?;
    let q = plan.stripes();
    let shift = plan.shift(pieces);
    let mut of_stripe: Vec<Vec<usize>> = vec![Vec::new(); q];
    for j in 0..pieces {
        of_stripe[plan.stripe_of(j, pieces)].push(j);
    }
    // take[h * q + k]: the stripe host h receives in slot k.
    let mut take = vec![0usize; n * q];
    for h in 0..n as u32 {
        for c in 0..q {
            take[h as usize * q + plan.slot_of(h, c)] = c;
        }
    }
    let mut have: Vec<Bitfield> = (0..n).map(|_| Bitfield::new(pieces)).collect();
    // next[h * q + c]: index into of_stripe[c] of the first piece host h lacks.
    let mut next = vec![0usize; n * q];
    let mut done_at: Vec<Option<u64>> = vec![None; n];
    let (mut done, mut round, mut origin_pieces) = (0usize, 0u64, 0u64);
    let limit = 20 * (pieces as u64 + 64);
    let mut moves: Vec<(usize, usize)> = Vec::new();
    let p = n + 1;
    while done < n {
        round += 1;
        if round > limit {
            return Err(SimError::Stuck {
                rounds: limit,
                done,
                hosts: n,
            });
        }
        let k = (round as usize - 1 + shift) % q;
        let skip = plan.skips()[k];
        moves.clear();
        if round as usize <= pieces {
            origin_pieces += 1;
            moves.push((plan.root(k) as usize, round as usize - 1));
        }
        for from in 0..n {
            let to = (from + 1 + skip) % p;
            if to == 0 {
                continue;
            }
            let to = to - 1;
            let c = take[to * q + k];
            let want = next[to * q + c];
            let piece = match of_stripe[c].get(want) {
                Some(&j) => have[from].get(j).then_some(j),
                None => have[to].wanted_from(&have[from]).next(),
            };
            if let Some(j) = piece {
                moves.push((to, j));
            }
        }
        for &(to, j) in &moves {
            if !have[to].set(j) {
                continue;
            }
            let c = plan.stripe_of(j, pieces);
            let cur = &mut next[to * q + c];
            while of_stripe[c].get(*cur).is_some_and(|&x| have[to].get(x)) {
                *cur += 1;
            }
            if have[to].is_full() {
                done_at[to] = Some(round);
                done += 1;
            }
        }
    }
    Ok(report(cfg, pieces, &done_at, round, origin_pieces, 0))
}

fn report(
    cfg: &Config,
    pieces: usize,
    done_at: &[Option<u64>],
    round: u64,
    origin_pieces: u64,
    asks: u64,
) -> Report {
    let n = done_at.len();
    let piece_seconds = cfg.piece as f64 * 8.0 / cfg.bandwidth;
    let mut times: Vec<f64> = done_at
        .iter()
        .map(|r| r.unwrap_or(round) as f64 * piece_seconds)
        .collect();
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    let floor = cfg.size as f64 * 8.0 / cfg.bandwidth;
    let log = (n as f64 + 1.0).log2().ceil();
    Report {
        layout: cfg.layout,
        hosts: n,
        pieces,
        piece_seconds,
        floor_seconds: floor,
        bound_seconds: floor + (log - 1.0) * piece_seconds,
        p50_seconds: at(0.5),
        p99_seconds: at(0.99),
        max_seconds: times[n - 1],
        origin_pieces,
        origin_copies: origin_pieces as f64 / pieces as f64,
        tracker_asks: asks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(hosts: usize) -> Config {
        Config {
            hosts,
            size: 64 << 20,
            piece: 1 << 20,
            bandwidth: 50e6,
            peers: 32,
            zones: 4,
            seed: 1,
            layout: Layout::Swarm,
        }
    }

    fn stripes(hosts: usize) -> Config {
        Config {
            layout: Layout::Stripes,
            ..cfg(hosts)
        }
    }

    #[test]
    fn stripes_finish_within_a_round_or_two_of_the_bound() {
        for n in [1, 2, 3, 16, 32, 100, 1000] {
            let r = run(&stripes(n)).unwrap();
            assert!(r.max_seconds >= r.bound_seconds - 1e-9, "{r:?}");
            assert!(
                r.max_seconds <= r.bound_seconds + 2.0 * r.piece_seconds + 1e-9,
                "{n} hosts: {r:?}"
            );
            assert_eq!(r.origin_pieces, r.pieces as u64, "one copy from the origin");
        }
    }

    #[test]
    fn one_host_takes_exactly_the_floor() {
        let r = run(&cfg(1)).unwrap();
        assert_eq!(r.origin_pieces, 64);
        assert!((r.max_seconds - r.floor_seconds).abs() < 1e-9, "{r:?}");
        assert!((r.bound_seconds - r.floor_seconds).abs() < 1e-9);
    }

    #[test]
    fn a_swarm_finishes_near_the_bound_with_one_origin_copy() {
        let r = run(&cfg(300)).unwrap();
        assert!(
            r.max_seconds >= r.bound_seconds - 1e-9,
            "nothing beats the bound: {r:?}"
        );
        assert!(r.p99_seconds <= 1.3 * r.bound_seconds, "{r:?}");
        assert!(r.origin_copies <= 1.2, "{r:?}");
    }

    #[test]
    fn same_seed_same_result() {
        let a = run(&cfg(200)).unwrap();
        let b = run(&cfg(200)).unwrap();
        assert_eq!(a.max_seconds, b.max_seconds);
        assert_eq!(a.origin_pieces, b.origin_pieces);
        let c = run(&Config { seed: 2, ..cfg(200) }).unwrap();
        assert!(c.max_seconds > 0.0);
    }
}
