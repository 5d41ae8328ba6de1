//! Health checks: an HTTP GET or a TCP connect to the instance's own IP,
//! or a command inside the container. Probes repeat every `interval` up to
//! `retries` times; a container that exits meanwhile fails at once.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::host::Host;
use super::spec::{Check, Health};

/// One probe; Err says what went wrong.
pub async fn probe(
    host: &Host,
    container: &str,
    ip: Ipv4Addr,
    check: &Check,
    timeout: Duration,
) -> Result<(), String> {
    match check {
        Check::Tcp { port } => {
            let addr = SocketAddr::from((ip, *port));
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("tcp {addr}: {e}")),
                Err(_) => Err(format!("tcp {addr}: no answer within {timeout:?}")),
            }
        }
        Check::Http { port, path } => {
            let addr = SocketAddr::from((ip, *port));
            match tokio::time::timeout(timeout, http_status(addr, path)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => Ok(()),
                Ok(Ok(code)) => Err(format!("GET http://{addr}{path} answered {code}")),
                Ok(Err(e)) => Err(format!("GET http://{addr}{path}: {e}")),
                Err(_) => Err(format!("GET http://{addr}{path}: no answer within {timeout:?}")),
            }
        }
        Check::Exec(cmd) => match tokio::time::timeout(timeout, host.exec(container, cmd, None)).await {
            Ok(Ok(o)) if o.code == 0 => Ok(()),
            Ok(Ok(o)) => Err(format!(
                "`{}` exited {}: {}",
                cmd.join(" "),
                o.code,
                o.output.trim()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("`{}`: no answer within {timeout:?}", cmd.join(" "))),
        },
    }
}

/// The status code of `GET path` (HTTP/1.0, no keep-alive).
pub async fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: strata\r\n\r\n").as_bytes())
        .await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let r = s.read(&mut buf[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}

/// Probes until healthy or out of retries. Returns the time it took.
pub async fn wait_healthy(
    host: &Host,
    container: &str,
    ip: Ipv4Addr,
    health: &Health,
) -> Result<Duration, String> {
    wait_healthy_within(host, container, ip, health, None).await
}

/// Like [`wait_healthy`], but gives up once `deadline` has passed (a
/// hotfixed app that stays unhealthy is undone within a bounded time).
pub async fn wait_healthy_within(
    host: &Host,
    container: &str,
    ip: Ipv4Addr,
    health: &Health,
    deadline: Option<Duration>,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::from("no probe ran");
    for attempt in 0..health.retries {
        if attempt > 0 {
            if let Some(d) = deadline
                && started.elapsed() + health.interval > d
            {
                return Err(format!(
                    "still unhealthy after {:.1}s (the hotfix health deadline): {last}",
                    started.elapsed().as_secs_f64()
                ));
            }
            tokio::time::sleep(health.interval).await;
        }
        match probe(host, container, ip, &health.check, health.timeout).await {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) => last = e,
        }
        // Every few probes, check the container did not exit.
        if attempt % 4 == 3 {
            match host.inspect(container).await {
                Ok(Some(c)) if !c.running => return Err(format!("the container exited ({last})")),
                Ok(None) => return Err("the container is gone".into()),
                _ => {}
            }
        }
    }
    Err(format!(
        "unhealthy after {} probes in {:.1}s: {last}",
        health.retries,
        started.elapsed().as_secs_f64()
    ))
}
