//! Which pieces of a blob a peer holds.

/// A fixed-length set of piece indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    words: Vec<u64>,
    len: usize,
    ones: usize,
}

impl Bitfield {
    /// No pieces of `len`.
    pub fn new(len: usize) -> Bitfield {
        Bitfield {
            words: vec![0; len.div_ceil(64)],
            len,
            ones: 0,
        }
    }

    /// The given pieces of `len`.
    pub fn with(len: usize, pieces: &[usize]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for &i in pieces {
            b.set(i);
        }
        b
    }

    /// Every piece of `len` (a seeder).
    pub fn full(len: usize) -> Bitfield {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Adds piece `i`; returns whether it was new.
    pub fn set(&mut self, i: usize) -> bool {
        assert!(i < self.len, "piece {i} of {}", self.len);
        let w = &mut self.words[i / 64];
        let bit = 1 << (i % 64);
        let new = *w & bit == 0;
        *w |= bit;
        self.ones += new as usize;
        new
    }

    pub fn unset(&mut self, i: usize) {
        if self.get(i) {
            self.words[i / 64] &= !(1 << (i % 64));
            self.ones -= 1;
        }
    }

    /// How many pieces are held.
    pub fn count(&self) -> usize {
        self.ones
    }

    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Whether `other` holds a piece this one lacks.
    pub fn lacks_any_of(&self, other: &Bitfield) -> bool {
        self.words.iter().zip(&other.words).any(|(a, b)| b & !a != 0)
    }

    /// Pieces `other` holds and this one lacks, in index order.
    pub fn wanted_from<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = usize> + 'a {
        self.words
            .iter()
            .zip(&other.words)
            .enumerate()
            .flat_map(|(wi, (a, b))| {
                let mut m = b & !a;
                std::iter::from_fn(move || {
                    if m == 0 {
                        return None;
                    }
                    let bit = m.trailing_zeros() as usize;
                    m &= m - 1;
                    Some(wi * 64 + bit)
                })
            })
    }

    /// Little-endian bytes, for the wire and for resume files.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
        out.truncate(self.len.div_ceil(8));
        out
    }

    /// The inverse of [`Bitfield::to_bytes`]; None if the bytes do not fit `len`.
    pub fn from_bytes(len: usize, bytes: &[u8]) -> Option<Bitfield> {
        if bytes.len() != len.div_ceil(8) {
            return None;
        }
        let mut b = Bitfield::new(len);
        for i in 0..len {
            if bytes[i / 8] & (1 << (i % 8)) != 0 {
                b.set(i);
            }
        }
        // Bits past `len` must be zero.
        let tail_ok = (len..bytes.len() * 8).all(|i| bytes[i / 8] & (1 << (i % 8)) == 0);
        tail_ok.then_some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_counts_and_round_trips() {
        let mut a = Bitfield::new(130);
        assert!(a.set(0) && a.set(64) && a.set(129));
        assert!(!a.set(64));
        assert_eq!(a.count(), 3);
        let b = Bitfield::full(130);
        assert!(b.is_full() && !a.is_full());
        assert!(a.lacks_any_of(&b) && !b.lacks_any_of(&a));
        let wanted: Vec<_> = a.wanted_from(&b).collect();
        assert_eq!(wanted.len(), 127);
        assert!(!wanted.contains(&64) && wanted.contains(&63) && wanted.contains(&128));
        let back = Bitfield::from_bytes(130, &a.to_bytes()).unwrap();
        assert_eq!(back, a);
        assert!(
            Bitfield::from_bytes(130, &[0xff; 17]).is_none(),
            "bits past the end"
        );
        assert!(Bitfield::from_bytes(130, &[0; 3]).is_none(), "wrong length");
        a.unset(64);
        assert_eq!(a.count(), 2);
    }
}
