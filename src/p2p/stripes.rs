//! Stripes: the structure that carries a blob to more hosts than one chain
//! holds, without a swarm's random matching.
//!
//! The blob's pieces are dealt round-robin into q = ⌈log2(N+1)⌉ stripes,
//! and every stripe travels down a tree of its own. The trees are cut from
//! one circulant graph over the origin (processor 0) and the N hosts
//! (processors 1..=N): with skips s_0 = 1 < s_1 < … < s_q = N+1, each
//! s_k = ⌈s_{k+1}/2⌉, in the k-th slot of every period of q piece times
//! processor r takes one piece from r − s_k and gives one to r + s_k
//! (mod N+1). So each host has one parent per stripe, at most q children
//! (one per slot), and uploads at most one piece per piece time, exactly
//! as much as it downloads once the pipeline is full: every link carries
//! one stream at full rate, as in a chain, but a piece reaches all N hosts
//! after about log2(N+1) hops instead of N.
//!
//! Which stripe a host takes in which slot is the receive schedule of
//! J. L. Träff, "Round-optimal n-block broadcast schedules in logarithmic
//! time" (arXiv:2312.11236, 2023): with it, every host holds every piece
//! after n − 1 + ⌈log2(N+1)⌉ piece times when nothing is late, which is
//! the lower bound of any schedule. [`Plan::check`] verifies the
//! properties the fan-out relies on, so a mistake here fails tests rather
//! than stalls a cluster.
//!
//! Pure data: no I/O, no clock. The simulator ([`super::sim`]) runs it
//! with every link capped at one piece per piece time.

/// The origin, as a parent.
pub const ORIGIN: u32 = u32::MAX;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("a stripe plan needs at least one host")]
    Empty,
    #[error("host {host} gets stripe {stripe} twice")]
    Duplicate { host: u32, stripe: usize },
    #[error(
        "host {host} gets stripe {stripe} after {lag} piece times from {parent}, which has it only after {parent_lag}"
    )]
    Causality {
        host: u32,
        stripe: usize,
        lag: u32,
        parent: u32,
        parent_lag: u32,
    },
    #[error("the origin feeds stripe {stripe} to host {host} more than once")]
    OriginTwice { host: u32, stripe: usize },
}

/// Who sends which stripe to whom, for N hosts (numbered 0..N).
#[derive(Debug, Clone)]
pub struct Plan {
    hosts: usize,
    stripes: usize,
    /// s_0..=s_q; s_q = hosts + 1.
    skips: Vec<usize>,
    /// Per (host, stripe): the parent host, or [`ORIGIN`].
    parent: Vec<u32>,
    /// Per (host, stripe): piece times from a piece's injection until the
    /// host receives it when every transfer keeps to the plan.
    lag: Vec<u32>,
    /// Per host: (child, stripe), one per slot at most.
    children: Vec<Vec<(u32, usize)>>,
}

impl Plan {
    pub fn new(hosts: usize) -> Result<Plan, PlanError> {
        if hosts == 0 {
            return Err(PlanError::Empty);
        }
        let p = hosts + 1;
        let q = stripes_for(hosts);
        let mut skips = vec![0; q + 1];
        skips[q] = p;
        for k in (0..q).rev() {
            skips[k] = skips[k + 1].div_ceil(2);
        }
        let mut parent = vec![ORIGIN; hosts * q];
        let mut lag = vec![0; hosts * q];
        let mut children = vec![Vec::new(); hosts];
        for r in 1..p {
            let host = r - 1;
            for (k, block) in receive_schedule(r, &skips).into_iter().enumerate() {
                let stripe = block.rem_euclid(q as i64) as usize;
                let from = (r + p - skips[k]) % p;
                let i = host * q + stripe;
                lag[i] = (k as i64 - block) as u32;
                if from != 0 {
                    parent[i] = (from - 1) as u32;
                    children[from - 1].push((host as u32, stripe));
                }
            }
        }
        let plan = Plan {
            hosts,
            stripes: q,
            skips,
            parent,
            lag,
            children,
        };
        plan.check()?;
        Ok(plan)
    }

    pub fn hosts(&self) -> usize {
        self.hosts
    }

    /// q = ⌈log2(N+1)⌉: the number of stripes, and of slots in a period.
    pub fn stripes(&self) -> usize {
        self.stripes
    }

    pub fn skips(&self) -> &[usize] {
        &self.skips
    }

    /// The stripe of a blob's piece. The origin sends pieces in index
    /// order, one per piece time, the piece in slot k of a period to stripe
    /// k's root; the schedule is shifted so that the last piece goes out
    /// in slot 0, as the schedule's bound of n − 1 + q piece times assumes.
    pub fn stripe_of(&self, piece: usize, pieces: usize) -> usize {
        (piece + self.shift(pieces)) % self.stripes
    }

    /// The slot in which a blob of `pieces` pieces starts: piece j goes
    /// out in slot (j + shift) mod q.
    pub fn shift(&self, pieces: usize) -> usize {
        let q = self.stripes;
        (q - (pieces.max(1) - 1) % q) % q
    }

    /// The slot of a period in which a host takes a stripe (from its
    /// parent, the host s_k before it on the circle).
    pub fn slot_of(&self, host: u32, stripe: usize) -> usize {
        (stripe + self.lag(host, stripe) as usize) % self.stripes
    }

    /// The host the origin sends a stripe to.
    pub fn root(&self, stripe: usize) -> u32 {
        (self.skips[stripe] - 1) as u32
    }

    /// The host a host takes a stripe from ([`ORIGIN`] for the stripe's root).
    pub fn parent(&self, host: u32, stripe: usize) -> u32 {
        self.parent[host as usize * self.stripes + stripe]
    }

    /// Piece times between a piece leaving the origin and its arrival at
    /// the host, when every transfer keeps to the plan.
    pub fn lag(&self, host: u32, stripe: usize) -> u32 {
        self.lag[host as usize * self.stripes + stripe]
    }

    /// The hosts a host forwards to, with the stripe each takes from it.
    pub fn children(&self, host: u32) -> &[(u32, usize)] {
        &self.children[host as usize]
    }

    /// Every host takes every stripe exactly once, from a parent that has
    /// it earlier (so following parents always ends at the origin), and
    /// the origin feeds each stripe to exactly one host.
    pub fn check(&self) -> Result<(), PlanError> {
        let q = self.stripes;
        let mut fed = vec![false; q];
        for host in 0..self.hosts as u32 {
            for (stripe, fed) in fed.iter_mut().enumerate() {
                let parent = self.parent(host, stripe);
                let lag = self.lag(host, stripe);
                if parent == ORIGIN {
                    if lag != 0 || *fed {
                        return Err(PlanError::OriginTwice { host, stripe });
                    }
                    *fed = true;
                    continue;
                }
                let parent_lag = self.lag(parent, stripe);
                if parent_lag >= lag {
                    return Err(PlanError::Causality {
                        host,
                        stripe,
                        lag,
                        parent,
                        parent_lag,
                    });
                }
            }
        }
        // Each host receives q slots, one stripe per slot: a stripe seen
        // twice means another is missing.
        let mut count = vec![0u32; self.hosts * q];
        for kids in &self.children {
            for &(child, stripe) in kids {
                count[child as usize * q + stripe] += 1;
            }
        }
        for (stripe, _) in fed.iter().enumerate().filter(|(_, fed)| **fed) {
            {
                count[self.root(stripe) as usize * q + stripe] += 1;
            }
        }
        for (i, &c) in count.iter().enumerate() {
            if c != 1 {
                return Err(PlanError::Duplicate {
                    host: (i / q) as u32,
                    stripe: i % q,
                });
            }
        }
        Ok(())
    }
}

/// ⌈log2(hosts + 1)⌉, at least 1.
pub fn stripes_for(hosts: usize) -> usize {
    let p = hosts + 1;
    (usize::BITS - (p - 1).leading_zeros()).max(1) as usize
}

/// The skip index of the first piece processor `r` gets: the slot in which
/// a single piece sent from processor 0 along s_{q−1}, …, s_0 reaches it
/// (q for the origin itself).
fn base_slot(r: usize, skips: &[usize]) -> usize {
    let q = skips.len() - 1;
    let mut reached = 0;
    for k in (0..q).rev() {
        if reached + skips[k] == r {
            return k;
        }
        if reached + skips[k] < r {
            reached += skips[k];
        }
    }
    q
}

/// Träff's receive schedule for processor `r`: for each slot k of a
/// period, the piece it takes, as an offset from the period's first piece
/// (negative: a piece of an earlier period).
fn receive_schedule(r: usize, skips: &[usize]) -> Vec<i64> {
    let q = skips.len() - 1;
    let p = skips[q] as i64;
    let base = base_slot(r, skips);
    let mut free = vec![true; q + 1];
    free[base] = false;
    let mut out = Vec::with_capacity(q);
    let s: Vec<i64> = skips.iter().map(|&s| s as i64).collect();
    fill(p + r as i64, 0, 2 * p, q, &s, &mut free, &mut out);
    out.into_iter()
        .map(|e| if e == q { base as i64 } else { e as i64 - q as i64 })
        .collect()
}

/// One level of the schedule's search: the skip indices, largest first,
/// whose partial sums (from `reached`) still land before `target − s_k`
/// for the slot k being filled, each later one strictly below the last.
fn fill(
    target: i64,
    reached: i64,
    mut limit: i64,
    from: usize,
    s: &[i64],
    free: &mut [bool],
    out: &mut Vec<usize>,
) {
    let q = s.len() - 1;
    for e in (0..=from).rev() {
        if out.len() >= q {
            return;
        }
        if !free[e] {
            continue;
        }
        let k = out.len();
        let next = reached + s[e];
        if next <= target - s[k] && next < limit {
            if next <= target - s[k + 1] {
                fill(target, next, limit, e, s, free, out);
            }
            let k = out.len();
            if k >= q || reached > target - s[k + 1] {
                return;
            }
            limit = next;
            out.push(e);
            free[e] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_are_log2_of_the_processors() {
        assert_eq!(stripes_for(1), 1);
        assert_eq!(stripes_for(3), 2);
        assert_eq!(stripes_for(4), 3);
        assert_eq!(stripes_for(16), 5);
        assert_eq!(stripes_for(10_000), 14);
    }

    #[test]
    fn every_host_gets_every_stripe_from_an_earlier_holder() {
        // `Plan::new` runs `check`: one parent per stripe, a parent that
        // holds it earlier, one root per stripe.
        for n in (1..=600).chain([1023, 1024, 1025, 4095, 10_000]) {
            let plan = Plan::new(n).unwrap_or_else(|e| panic!("{n} hosts: {e}"));
            assert!(plan.stripes() >= 1);
        }
        assert_eq!(Plan::new(0).unwrap_err(), PlanError::Empty);
    }

    #[test]
    fn following_parents_reaches_the_origin_within_two_periods() {
        let plan = Plan::new(1000).unwrap();
        let q = plan.stripes() as u32;
        for host in 0..1000u32 {
            for stripe in 0..plan.stripes() {
                let (mut at, mut hops) = (host, 0);
                while at != ORIGIN {
                    at = plan.parent(at, stripe);
                    hops += 1;
                    assert!(hops <= 2 * q, "host {host} stripe {stripe}");
                }
                assert!(plan.lag(host, stripe) <= 2 * q);
            }
        }
    }

    #[test]
    fn children_are_bounded_and_upload_matches_download() {
        for n in [5, 16, 32, 100, 10_000] {
            let plan = Plan::new(n).unwrap();
            let q = plan.stripes();
            let mut sent = 0;
            for host in 0..n as u32 {
                let kids = plan.children(host);
                // One child per slot: a host uploads at most one piece per
                // piece time, and a stripe's piece at most q times.
                assert!(kids.len() <= q, "{n} hosts: host {host} has {kids:?}");
                let mut targets: Vec<u32> = kids.iter().map(|k| k.0).collect();
                targets.sort_unstable();
                targets.dedup();
                assert_eq!(targets.len(), kids.len(), "one stripe per child");
                sent += kids.len();
            }
            // Every host downloads q stripes; all but the q roots' get them
            // from hosts, so uploads add up to downloads minus the origin's.
            assert_eq!(sent, n * q - q);
        }
    }

    #[test]
    fn pieces_are_dealt_round_robin_ending_in_slot_zero() {
        let plan = Plan::new(100).unwrap();
        let q = plan.stripes();
        assert_eq!(plan.stripe_of(255, 256), 0);
        assert_eq!(plan.stripe_of(254, 256), q - 1);
        let mut per = vec![0; q];
        for j in 0..256 {
            per[plan.stripe_of(j, 256)] += 1;
        }
        assert!(per.iter().max().unwrap() - per.iter().min().unwrap() <= 1);
    }
}
