//! Where an app runs: Docker engine endpoints (`unix://…`,
//! `tcp://HOST:PORT?tls=DIR`) and IPv4 networks, parsed from spec text.
//! Pure values: nothing here connects to anything.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// A Docker engine endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///var/run/docker.sock`
    Unix(PathBuf),
    /// `tcp://HOST:PORT`, with `?tls=DIR` holding `ca.pem`, `cert.pem`, `key.pem`.
    Tcp { addr: String, tls: Option<PathBuf> },
}

impl Endpoint {
    pub fn parse(s: &str) -> std::result::Result<Endpoint, String> {
        if let Some(p) = s.strip_prefix("unix://") {
            if !p.starts_with('/') {
                return Err("a unix endpoint needs an absolute socket path".into());
            }
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        if let Some(rest) = s.strip_prefix("tcp://") {
            let (addr, tls) = match rest.split_once("?tls=") {
                Some((a, d)) => (a, Some(PathBuf::from(d))),
                None => (rest, None),
            };
            if addr
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err("a tcp endpoint is tcp://HOST:PORT[?tls=DIR]".into());
            }
            return Ok(Endpoint::Tcp {
                addr: addr.to_string(),
                tls,
            });
        }
        Err("expected unix:///PATH or tcp://HOST:PORT[?tls=DIR]".into())
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp { addr, tls: None } => write!(f, "tcp://{addr}"),
            Endpoint::Tcp { addr, tls: Some(d) } => write!(f, "tcp://{addr}?tls={}", d.display()),
        }
    }
}

/// An IPv4 network `ADDR/PREFIX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn parse(s: &str) -> Option<Ipv4Net> {
        let (a, p) = s.split_once('/')?;
        let addr: Ipv4Addr = a.parse().ok()?;
        let prefix: u8 = p.parse().ok().filter(|p| *p <= 32)?;
        let net = Ipv4Net { addr, prefix };
        // The address must be the network's first one.
        (u32::from(addr) & net.mask() == u32::from(addr)).then_some(net)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    pub fn first(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
