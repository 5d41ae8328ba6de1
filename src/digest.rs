//! Content digests (`sha256:…`, `sha512:…`) and hashing readers/writers.
//!
//! Every byte strata stores or serves is named by a [`Digest`]. This module
//! parses and prints them and hashes bytes while they stream; it never buffers
//! a whole blob to hash it.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm the OCI specs allow us to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }
}

/// A validated `algorithm:hex` digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest `{0}` has no algorithm prefix (expected `sha256:<64 hex digits>`)")]
    MissingAlgorithm(String),
    #[error("digest `{0}` uses unsupported algorithm (expected sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    #[error("digest `{digest}` must have {expected} lowercase hex digits")]
    BadHex { digest: String, expected: usize },
}

impl Digest {
    /// The digest of `bytes` with sha256.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut h = Algorithm::Sha256.hasher();
        h.update(bytes);
        h.finish()
    }

    /// Parses a bare hex string for the given algorithm.
    pub fn from_hex(algorithm: Algorithm, hex: &str) -> Result<Digest, DigestError> {
        Digest::from_str(&format!("{}:{hex}", algorithm.name()))
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// A short form for progress output: `sha256:0123456789ab`.
    pub fn short(&self) -> String {
        format!("{}:{}", self.algorithm.name(), &self.hex[..12])
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(s.to_string()))?;
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::UnsupportedAlgorithm(s.to_string())),
        };
        let ok =
            hex.len() == algorithm.hex_len() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(DigestError::BadHex {
                digest: s.to_string(),
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An incremental hasher for either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

/// A writer that hashes and counts every byte it passes on.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W, algorithm: Algorithm) -> Self {
        HashingWriter {
            inner,
            hasher: algorithm.hasher(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, self.hasher.finish(), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, algorithm: Algorithm) -> Self {
        HashingReader {
            inner,
            hasher: algorithm.hasher(),
            count: 0,
        }
    }

    pub fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes everything `reader` yields.
pub fn hash_reader(reader: impl Read, algorithm: Algorithm) -> io::Result<(Digest, u64)> {
    let mut r = HashingReader::new(reader, algorithm);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let d = Digest::sha256_of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(matches!(
            "abc".parse::<Digest>(),
            Err(DigestError::MissingAlgorithm(_))
        ));
        assert!(matches!(
            "md5:abc".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            "sha256:ABC".parse::<Digest>(),
            Err(DigestError::BadHex { .. })
        ));
        let upper = format!("sha256:{}", "A".repeat(64));
        assert!(upper.parse::<Digest>().is_err());
    }

    #[test]
    fn sha512_round_trip() {
        let (d, n) = hash_reader(&b"abc"[..], Algorithm::Sha512).unwrap();
        assert_eq!(n, 3);
        assert!(d.hex().starts_with("ddaf35a193617aba"));
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
    }
}
