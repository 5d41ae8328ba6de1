//! Blob reads against a real `strata serve`, over raw HTTP/1.1 connections:
//! plain-HTTP blob GETs are sent from the file with sendfile (the
//! registry's `direct` path), so these check that path's answers byte for
//! byte — whole blobs, ranges, HEAD, 416, errors and challenges, keep-alive
//! and pipelining, a connection that moves on to other requests (handed to
//! hyper) — and that a client leaving mid-body costs the server nothing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::serve::{Serve, push_blob};
use strata::digest::Digest;

/// One answer read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one answer (a HEAD's has no body whatever its Content-Length).
fn read_answer(r: &mut BufReader<TcpStream>, head: bool) -> Answer {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect(&line);
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let mut a = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if !head {
        let len: usize = a.header("content-length").expect("a length").parse().unwrap();
        a.body = vec![0; len];
        r.read_exact(&mut a.body).unwrap();
    }
    a
}

fn connect(s: &Serve) -> (TcpStream, BufReader<TcpStream>) {
    let c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let r = BufReader::new(c.try_clone().unwrap());
    (c, r)
}

fn request(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n")
}

/// Bytes that compress badly and differ at every offset.
fn blob_bytes(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn blob_reads_on_one_connection_are_exact_and_keep_it_alive() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let big = blob_bytes(3 << 20);
    let small = b"{\"config\":true}".to_vec();
    let (bd, sd) = (push_blob(&s, &c, "app", &big), push_blob(&s, &c, "app", &small));
    let path = |d: &Digest| format!("/v2/app/blobs/{d}");
    let (mut w, mut r) = connect(&s);

    // A whole blob (sendfile), then a small one (inline), on one connection.
    w.write_all(request("GET", &path(&bd), "").as_bytes()).unwrap();
    let a = read_answer(&mut r, false);
    assert_eq!(a.status, 200);
    assert!(a.body == big, "the whole blob, byte for byte");
    assert_eq!(a.header("docker-content-digest"), Some(bd.to_string().as_str()));
    assert_eq!(a.header("etag"), Some(format!("\"{bd}\"").as_str()));
    assert_eq!(a.header("accept-ranges"), Some("bytes"));
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    assert_eq!(a.header("docker-distribution-api-version"), Some("registry/2.0"));
    assert!(a.header("date").is_some());
    w.write_all(request("GET", &path(&sd), "").as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r, false).body, small);

    // Ranges: inside, open-ended, a suffix, one that crosses the end.
    let n = big.len();
    for (spec, from, to) in [
        ("bytes=100-200999", 100, 200_999),
        ("bytes=3000000-", 3_000_000, n - 1),
        ("bytes=-5", n - 5, n - 1),
        ("bytes=1048576-99999999", 1 << 20, n - 1),
    ] {
        w.write_all(request("GET", &path(&bd), &format!("Range: {spec}\r\n")).as_bytes())
            .unwrap();
        let a = read_answer(&mut r, false);
        assert_eq!(a.status, 206, "{spec}");
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes {from}-{to}/{n}").as_str())
        );
        assert!(a.body == big[from..=to], "{spec}: the range's bytes");
    }
    w.write_all(request("GET", &path(&bd), "Range: bytes=9999999-\r\n").as_bytes())
        .unwrap();
    let a = read_answer(&mut r, false);
    assert_eq!(a.status, 416);
    assert_eq!(a.header("content-range"), Some(format!("bytes */{n}").as_str()));

    // HEAD: the length and digest, no body (the next answer follows at once).
    w.write_all(request("HEAD", &path(&bd), "").as_bytes()).unwrap();
    let a = read_answer(&mut r, true);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-length"), Some(n.to_string().as_str()));
    assert_eq!(a.header("docker-content-digest"), Some(bd.to_string().as_str()));

    // Unknown blob: the spec's error, and the connection goes on.
    let unknown = Digest::sha256_of(b"nobody pushed this");
    w.write_all(request("GET", &path(&unknown), "").as_bytes())
        .unwrap();
    let a = read_answer(&mut r, false);
    assert_eq!(a.status, 404);
    assert!(String::from_utf8_lossy(&a.body).contains("BLOB_UNKNOWN"));

    // Pipelined: three requests in one write, three answers in order.
    let three = [
        request("GET", &path(&sd), ""),
        request("HEAD", &path(&bd), ""),
        request("GET", &path(&bd), "Range: bytes=0-9\r\n"),
    ]
    .concat();
    w.write_all(three.as_bytes()).unwrap();
    assert_eq!(read_answer(&mut r, false).body, small);
    assert_eq!(read_answer(&mut r, true).status, 200);
    assert_eq!(read_answer(&mut r, false).body, &big[..10]);

    // Another request moves the connection to hyper, blob reads included.
    w.write_all(request("GET", "/v2/app/manifests/latest", "").as_bytes())
        .unwrap();
    assert_eq!(read_answer(&mut r, false).status, 404);
    w.write_all(request("GET", &path(&bd), "Range: bytes=-3\r\n").as_bytes())
        .unwrap();
    let a = read_answer(&mut r, false);
    assert_eq!((a.status, a.body.as_slice()), (206, &big[n - 3..]));

    // `Connection: close` is honoured: the answer, then the end.
    let (mut w, mut r) = connect(&s);
    w.write_all(request("GET", &path(&sd), "Connection: close\r\n").as_bytes())
        .unwrap();
    let a = read_answer(&mut r, false);
    assert_eq!((a.status, a.header("connection")), (200, Some("close")));
    let mut rest = Vec::new();
    assert_eq!(r.read_to_end(&mut rest).unwrap(), 0, "closed after the answer");
}

#[test]
fn blob_reads_check_pull_credentials() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start_with(&d.path().join("data"), &["--pull-auth"]);
    let c = s.client();
    let big = blob_bytes(1 << 20);
    let dg = push_blob(&s, &c, "app", &big);
    let path = format!("/v2/app/blobs/{dg}");
    let (mut w, mut r) = connect(&s);
    w.write_all(request("GET", &path, "").as_bytes()).unwrap();
    let a = read_answer(&mut r, false);
    assert_eq!(a.status, 401);
    let challenge = a.header("www-authenticate").unwrap();
    assert!(challenge.contains("scope=\"repository:app:pull\""), "{challenge}");
    assert!(!a.body.windows(4).any(|w| w == &big[..4]), "no blob bytes");
    let auth = format!("Authorization: Bearer {}\r\n", s.token);
    w.write_all(request("GET", &path, &auth).as_bytes()).unwrap();
    let a = read_answer(&mut r, false);
    assert_eq!(a.status, 200);
    assert!(a.body == big);
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

#[test]
fn a_client_that_leaves_mid_body_costs_the_server_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = Serve::start(&d.path().join("data"));
    let c = s.client();
    let big = blob_bytes(32 << 20);
    let dg = push_blob(&s, &c, "app", &big);
    let path = format!("/v2/app/blobs/{dg}");
    // Warm up, so lazily opened files are counted in the baseline.
    let (mut w, mut r) = connect(&s);
    w.write_all(request("GET", &path, "").as_bytes()).unwrap();
    assert!(read_answer(&mut r, false).body == big);
    drop((w, r));
    std::thread::sleep(Duration::from_millis(200));
    let before = open_fds(s.child.id());

    for i in 0..20 {
        let (mut w, mut r) = connect(&s);
        let range = if i % 2 == 0 { "" } else { "Range: bytes=1000-\r\n" };
        w.write_all(request("GET", &path, range).as_bytes()).unwrap();
        // Part of the head and body, then gone (a reset when unread bytes remain).
        let mut some = vec![0; 256 << 10];
        r.read_exact(&mut some).unwrap();
        drop((w, r));
    }
    // The server still answers in full, and let go of every socket and file.
    let (mut w, mut r) = connect(&s);
    w.write_all(request("GET", &path, "").as_bytes()).unwrap();
    assert!(read_answer(&mut r, false).body == big);
    drop((w, r));
    let mut after = open_fds(s.child.id());
    for _ in 0..50 {
        if after <= before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = open_fds(s.child.id());
    }
    assert!(after <= before, "descriptors before {before}, after {after}");
}
