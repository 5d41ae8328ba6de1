//! Blob reads on plain HTTP/1.1 connections, from the file to the socket.
//!
//! hyper sends a body by copying it: the file into a buffer, the buffer
//! into the socket, one blocking-pool round trip per chunk. A blob GET on
//! a plain (not TLS) HTTP/1.1 connection is answered here instead: the
//! request still goes through the registry's router (authorization,
//! routing, headers, `Range`/206/416, metrics: one code path), and only the
//! body of an answer that carries a [`BlobFile`] takes the short way,
//! `sendfile(2)` from the page cache to the socket, with no copy through
//! user space and no buffer held per pull.
//!
//! A connection stays here while its requests are blob GETs and HEADs
//! without a body; at the first other request (or an h2 preface, an
//! upgrade, a head this module does not parse, one longer than
//! [`super::READ_BUFFER`]) the connection, with every byte already read
//! from it, goes to hyper for good. This module never answers a request
//! hyper would have read differently (when in doubt it hands over), and
//! never sends other bytes than the range the router answered with: a blob
//! file shorter than its size cuts the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version, header};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::http::{BlobFile, Route, route};

/// Most headers a request answered here may have (hyper's limit is 100;
/// a request with more goes to hyper).
const MAX_HEADERS: usize = 64;
/// Blob bodies up to this size go out in the answer's one write (a config
/// blob in one packet), read from the file rather than sent with sendfile.
const INLINE: u64 = 16 << 10;
/// Most bytes one `sendfile` call moves: the socket's send buffer bounds
/// it anyway; this bounds how long one call can hold a worker reading
/// pages that are not in the page cache.
const SENDFILE_CHUNK: u64 = 4 << 20;
/// Most bytes of an answer without a file (an error's JSON) taken here.
const MAX_SMALL_BODY: usize = 1 << 20;

/// What became of a connection.
pub(super) enum Outcome {
    /// Closed: by the client, by an error, or by the server's shutdown.
    Closed,
    /// hyper serves it from here on: the socket and what was read from it.
    Handoff(Prefixed),
}

/// Serves blob GETs and HEADs on `tcp` through `app` until another
/// request comes (handed over), the connection ends, or `stop` turns true
/// while the connection is idle.
pub(super) async fn serve(
    mut tcp: TcpStream,
    app: &axum::Router,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let mut buf = BytesMut::with_capacity(4096);
    let mut nodelay = false;
    loop {
        let head = loop {
            match parse(&buf) {
                Parsed::Blob(head) => break head,
                Parsed::Partial if buf.len() < super::READ_BUFFER => {}
                Parsed::Partial | Parsed::Other => return Outcome::Handoff(Prefixed { head: buf, tcp }),
            }
            let idle = buf.is_empty();
            let read = tokio::select! {
                r = tcp.read_buf(&mut buf) => r,
                // Idle between requests: a shutdown closes the connection.
                _ = stop.wait_for(|s| *s), if idle => return Outcome::Closed,
            };
            match read {
                Ok(0) | Err(_) => return Outcome::Closed,
                Ok(_) => {}
            }
        };
        buf.advance(head.len);
        if !nodelay {
            // The head and the body's last segment go out at once rather
            // than wait, under Nagle, for the client's delayed ACK.
            nodelay = tcp.set_nodelay(true).is_ok();
        }
        match answer(&mut tcp, app, head).await {
            Ok(true) => {}
            Ok(false) => return Outcome::Closed,
            Err(e) => {
                tracing::debug!("registry: a blob read ended early: {e}");
                return Outcome::Closed;
            }
        }
    }
}

/// A request head this module answers.
struct Head {
    method: Method,
    target: String,
    headers: HeaderMap,
    /// Bytes of the head, blank line included.
    len: usize,
    /// The client asked to close the connection after the answer.
    close: bool,
}

enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// For hyper.
    Other,
    Blob(Head),
}

fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    // HTTP/1.0 (keep-alive rules of its own) and h2's preface go to hyper.
    if req.version != Some(1) {
        return Parsed::Other;
    }
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parsed::Other,
    };
    let Some(target) = req.path else {
        return Parsed::Other;
    };
    let Some(rest) = target.strip_prefix("/v2/") else {
        return Parsed::Other;
    };
    let path = rest.split('?').next().unwrap_or(rest);
    // Percent-encoded paths are decoded by axum's router: leave them to it.
    if path.contains('%') || !matches!(route(path), Some(Route::Blob(..))) {
        return Parsed::Other;
    }
    let mut map = HeaderMap::with_capacity(req.headers.len());
    let mut close = false;
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        if name == header::CONTENT_LENGTH {
            // A body (or the promise of one) makes it hyper's request.
            if value.as_bytes().trim_ascii() != b"0" {
                return Parsed::Other;
            }
        } else if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Parsed::Other;
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Other;
                }
            }
        }
        map.append(name, value);
    }
    Parsed::Blob(Head {
        method,
        target: target.to_string(),
        headers: map,
        len,
        close,
    })
}

/// Answers one request through the router; whether the connection may
/// serve another.
async fn answer(tcp: &mut TcpStream, app: &axum::Router, head: Head) -> io::Result<bool> {
    use hyper::service::Service;
    let is_head = head.method == Method::HEAD;
    let mut req = Request::builder()
        .method(head.method)
        .uri(head.target.as_str())
        .version(Version::HTTP_11)
        .body(Body::empty())
        .map_err(io::Error::other)?;
    *req.headers_mut() = head.headers;
    let svc = hyper_util::service::TowerToHyperService::new(app.clone());
    let resp = match svc.call(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    let file = parts.extensions.get::<BlobFile>().cloned();
    // An answer without a file is small (an error's JSON, a 416): taken
    // whole, so its length is known. A HEAD's is taken for its length.
    let small = match &file {
        Some(_) => None,
        None => Some(
            axum::body::to_bytes(body, MAX_SMALL_BODY)
                .await
                .map_err(io::Error::other)?,
        ),
    };
    let close = head.close
        || parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));

    let mut out = Vec::with_capacity(512);
    let reason = parts.status.canonical_reason().unwrap_or("");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_u16()).as_bytes());
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut extra =
        |name: &str, value: &str| out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    if !parts.headers.contains_key(header::DATE) {
        extra("date", &httpdate::fmt_http_date(std::time::SystemTime::now()));
    }
    if !parts.headers.contains_key(header::CONTENT_LENGTH) {
        let len = match (&file, &small) {
            (Some(f), _) => f.len,
            (None, Some(b)) => b.len() as u64,
            (None, None) => 0,
        };
        extra("content-length", &len.to_string());
    }
    if close && !parts.headers.contains_key(header::CONNECTION) {
        extra("connection", "close");
    }
    out.extend_from_slice(b"\r\n");

    match (file, small) {
        _ if is_head => tcp.write_all(&out).await?,
        (Some(f), _) if f.len <= INLINE => {
            use std::os::unix::fs::FileExt;
            let at = out.len();
            out.resize(at + f.len as usize, 0);
            f.file.read_exact_at(&mut out[at..], f.start)?;
            tcp.write_all(&out).await?;
        }
        (Some(f), _) => {
            tcp.write_all(&out).await?;
            send_file(tcp, &f).await?;
        }
        (None, Some(b)) => {
            out.extend_from_slice(&b);
            tcp.write_all(&out).await?;
        }
        (None, None) => tcp.write_all(&out).await?,
    }
    Ok(!close)
}

/// Sends `f`'s range to the socket with `sendfile(2)`.
async fn send_file(tcp: &TcpStream, f: &BlobFile) -> io::Result<()> {
    let (mut off, mut left) = (f.start, f.len);
    while left > 0 {
        tcp.writable().await?;
        let sent = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            let mut at = off;
            rustix::fs::sendfile(tcp, &*f.file, Some(&mut at), left.min(SENDFILE_CHUNK) as usize)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the blob file ended at {off}, {left} bytes short"),
                ));
            }
            Ok(n) => {
                off += n as u64;
                left -= n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A connection handed to hyper: the bytes already read from it first,
/// then the socket.
pub(super) struct Prefixed {
    head: BytesMut,
    tcp: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head[..n]);
            this.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(req: &str) -> Option<Head> {
        match parse(req.as_bytes()) {
            Parsed::Blob(h) => Some(h),
            _ => None,
        }
    }

    #[test]
    fn only_bodiless_blob_reads_over_http_1_1_are_taken() {
        let d = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let get = format!("GET /v2/app/blobs/{d} HTTP/1.1\r\nHost: x\r\nRange: bytes=1-2\r\n\r\n");
        let h = parsed(&get).unwrap();
        assert_eq!(h.len, get.len());
        assert!(!h.close);
        assert_eq!(h.headers["range"], "bytes=1-2");
        let head = format!("HEAD /v2/a/b/blobs/{d} HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n");
        assert!(parsed(&head).unwrap().close);
        for other in [
            format!("GET /v2/app/blobs/{d} HTTP/1.0\r\n\r\n"),
            format!("POST /v2/app/blobs/{d} HTTP/1.1\r\n\r\n"),
            format!("GET /v2/app/blobs/{d} HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            format!("GET /v2/app/blobs/{d} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("GET /v2/app/blobs/{d} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"),
            "GET /v2/app/blobs/sha256%3A00 HTTP/1.1\r\n\r\n".to_string(),
            "GET /v2/app/manifests/latest HTTP/1.1\r\n\r\n".to_string(),
            "GET /v2/app/blobs/uploads/0 HTTP/1.1\r\n\r\n".to_string(),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_string(),
        ] {
            assert!(matches!(parse(other.as_bytes()), Parsed::Other), "{other}");
        }
        assert!(matches!(parse(b"GET /v2/app/blobs/sha"), Parsed::Partial));
        assert!(matches!(parse(b"PRI * HTT"), Parsed::Partial));
    }
}
