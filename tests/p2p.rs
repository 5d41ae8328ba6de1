//! P2P fan-out with real processes and real QUIC on loopback: an origin
//! (`strata serve --p2p-listen`) and several `strata agent`s, uplinks
//! shaped by their own caps so downloads take long enough to interfere
//! with. Also a malicious peer (test code with a valid cluster
//! certificate) and a client from another CA.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::swarm::*;
use common::*;
use serde_json::Value;
use strata::digest::Digest;
use strata::p2p::node::{Node, NodeConfig};
use strata::p2p::pieces::DEFAULT_PIECE;
use strata::p2p::tls::Identity;
use strata::p2p::wire::{Request, Response};

#[test]
fn every_agent_ends_with_the_blob_and_the_origin_sends_about_one_copy() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 6, 16, 80.0);
    let agents: Vec<Proc> = (0..6).map(|i| s.agent(i, 80.0)).collect();
    let mut from_peers = 0;
    for (i, a) in agents.iter().enumerate() {
        let r = s.completed(a, Duration::from_secs(90));
        from_peers += r["from_peers"].as_u64().unwrap();
        s.assert_holds(i);
    }
    assert!(from_peers > 0, "peers served pieces");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probe = s.node(&rt, "probe");
    let sent = s.origin_bytes(&rt, &probe);
    let size = s.blob.len() as u64;
    assert!(sent >= size, "the origin sent at least one copy ({sent})");
    assert!(
        sent as f64 <= 1.2 * size as f64,
        "origin egress {sent} > 1.2 × {size}"
    );
    // The origin's /metrics agree with its own counters.
    let m = common::scrape(&format!("http://127.0.0.1:{}", s.registry), Some(&s.token));
    assert_eq!(
        common::metric(&m, "strata_p2p_bytes_served_total"),
        Some(sent as f64),
        "{m}"
    );
    let uploads = "strata_registry_request_seconds_count{op=\"blob_upload\"}";
    assert_eq!(common::metric(&m, uploads), Some(1.0), "{m}");
}

#[test]
fn the_tracker_hands_out_peers_with_what_they_hold() {
    let d = tempfile::tempdir().unwrap();
    let (s, rt, probe) = Swarm::with_probe(d.path(), 4, 0.0);
    let n = s.blob.len().div_ceil(DEFAULT_PIECE as usize);
    let x1 = s.member(&rt, "x1");
    let ask_as = |who: &Node, req: Request| rt.block_on(who.ask(s.p2p, &req)).unwrap().0;
    let ask = |req: Request| ask_as(&probe, req);
    let announce = Request::Announce {
        blob: s.digest.clone(),
        node: "x1".into(),
        addr: "127.0.0.1:9".into(),
        zone: 0,
        have: strata::p2p::Bitfield::with(n, &[0, 2]).to_bytes(),
    };
    assert!(matches!(ask_as(&x1, announce), Response::Ok));
    let got = Request::Got {
        blob: s.digest.clone(),
        node: "x1".into(),
        index: 3,
    };
    assert!(matches!(ask_as(&x1, got), Response::Ok));
    let peers = Request::Peers {
        blob: s.digest.clone(),
        node: "probe".into(),
        want: 16,
    };
    let Response::Peers { peers, seeded } = ask(peers) else {
        panic!("no peers answer")
    };
    // Pieces some peer holds: 0, 2 and 3.
    let seeded = strata::p2p::Bitfield::from_bytes(n, &seeded).expect("a bitfield of the blob");
    assert_eq!(
        (0..4).map(|i| seeded.get(i)).collect::<Vec<_>>(),
        [true, false, true, true]
    );
    assert_eq!(peers.len(), 1, "{peers:?}");
    // The bitfield comes with the peer, so the asker need not ask it.
    let have = peers[0].have.clone().expect("a bitfield with the peer");
    assert_eq!(have, strata::p2p::Bitfield::with(n, &[0, 2, 3]).to_bytes());
}

#[test]
fn a_member_cannot_speak_for_another_node() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 0, 2, 0.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (host1, host3) = (s.member(&rt, "host-1"), s.member(&rt, "host-3"));
    let n = s.blob.len().div_ceil(DEFAULT_PIECE as usize);
    let ask = |who: &Node, req: Request| rt.block_on(who.ask(s.p2p, &req)).unwrap().0;
    let register = |node: &str, addr: &str, label: &str| Request::Register {
        node: node.into(),
        addr: addr.into(),
        zone: 0,
        labels: vec![label.into()],
    };
    // host-1 registers itself, and announces half the blob.
    assert!(matches!(
        ask(&host1, register("host-1", "127.0.0.1:7001", "rack=a")),
        Response::Ok
    ));
    let half: Vec<usize> = (0..n / 2).collect();
    let announce = |node: &str, have: &[usize]| Request::Announce {
        blob: s.digest.clone(),
        node: node.into(),
        addr: "127.0.0.1:7001".into(),
        zone: 0,
        have: strata::p2p::Bitfield::with(n, have).to_bytes(),
    };
    assert!(matches!(ask(&host1, announce("host-1", &half)), Response::Ok));
    // host-3's certificate speaks for host-1 in every tracker message:
    // each is refused, naming both.
    let all: Vec<usize> = (0..n).collect();
    let blob = s.digest.clone();
    let forged = [
        register("host-1", "127.0.0.1:6666", "rack=evil"),
        announce("host-1", &all),
        Request::Got {
            blob: blob.clone(),
            node: "host-1".into(),
            index: n - 1,
        },
        Request::Peers {
            blob: blob.clone(),
            node: "host-1".into(),
            want: 8,
        },
        Request::Upstream {
            blob: blob.clone(),
            node: "host-1".into(),
            addr: "127.0.0.1:6666".into(),
            stripes: true,
        },
    ];
    for req in forged {
        match ask(&host3, req.clone()) {
            Response::Error { message } => assert!(
                message.contains("host-3") && message.contains("host-1"),
                "{req:?}: {message}"
            ),
            other => panic!("host-3 spoke for host-1 with {req:?}: {other:?}"),
        }
    }
    // host-3 cannot drop host-1 from a swarm it is no member of.
    let gone = Request::Gone {
        blob: blob.clone(),
        peer: "host-1".into(),
    };
    assert!(matches!(ask(&host3, gone), Response::Error { .. }));
    // The origin kept host-1 as host-1 registered it...
    let hosts = s.hosts();
    let h1 = &hosts["host-1"];
    assert_eq!(h1["addr"], "127.0.0.1:7001", "{h1}");
    assert_eq!(h1["labels"], serde_json::json!(["rack=a"]), "{h1}");
    assert!(!hosts.contains_key("host-3"), "{hosts:?}");
    // ...and with what host-1 announced, no more.
    let probe = s.node(&rt, "probe");
    let Response::Peers { peers, .. } = ask(
        &probe,
        Request::Peers {
            blob: blob.clone(),
            node: "probe".into(),
            want: 8,
        },
    ) else {
        panic!("no peers answer")
    };
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].name, "host-1");
    assert_eq!(peers[0].addr, "127.0.0.1:7001");
    assert_eq!(
        peers[0].have.clone().unwrap(),
        strata::p2p::Bitfield::with(n, &half).to_bytes()
    );
    // Speaking for itself still works.
    assert!(matches!(
        ask(&host3, register("host-3", "127.0.0.1:7003", "rack=c")),
        Response::Ok
    ));
    assert_eq!(s.hosts()["host-3"]["addr"], "127.0.0.1:7003");
}

#[test]
fn a_pushed_blob_has_its_piece_table_before_anyone_asks() {
    let d = tempfile::tempdir().unwrap();
    let (s, rt, probe) = Swarm::with_probe(d.path(), 4, 0.0);
    // The push made the table: the origin says so on /metrics before any
    // agent asked (one pass; the pass behind a lock for concurrent asks is
    // pinned by the unit test `asking_at_once_makes_one_table`).
    let base = format!("http://127.0.0.1:{}", s.registry);
    let made = || {
        common::metric(
            &common::scrape(&base, Some(&s.token)),
            "strata_p2p_piece_tables_made_total",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while made() != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "no piece table 20 s after the push: {:?}",
            made()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ask = Request::Pieces {
        blob: s.digest.clone(),
    };
    let answers = rt.block_on(async {
        let asks = (0..8).map(|_| probe.ask(s.p2p, &ask));
        futures_util::future::join_all(asks).await
    });
    let want: Vec<String> = s
        .blob
        .chunks(DEFAULT_PIECE as usize)
        .map(|c| Digest::sha256_of(c).hex().to_string())
        .collect();
    for a in answers {
        let Ok((Response::Pieces { table }, _)) = a else {
            panic!("no piece table: {a:?}")
        };
        assert_eq!(table.digest, s.digest);
        assert_eq!(table.size, s.blob.len() as u64);
        assert_eq!(table.hashes, want);
    }
    assert_eq!(made(), Some(1.0), "the asks hashed the blob again");
}

#[test]
fn a_full_uplink_answers_busy_with_the_time_until_it_takes_work_again() {
    let d = tempfile::tempdir().unwrap();
    // 2 Mbit/s: one piece takes about a second on the origin's uplink, and
    // the uplink queues one piece time of work before it refuses.
    let (s, rt, probe) = Swarm::with_probe(d.path(), 4, 2.0);
    let piece_ms = (DEFAULT_PIECE * 8) as f64 / 2e6 * 1e3;
    let piece = |index: usize| Request::Piece {
        blob: s.digest.clone(),
        index,
    };
    // Connected first, so the timings below are the uplink's alone.
    rt.block_on(probe.stats(s.p2p)).unwrap();
    let (p0, p1) = (piece(0), piece(1));
    let (first, second, third) = rt.block_on(async {
        let late = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            probe.ask(s.p2p, &piece(2)).await
        };
        tokio::join!(probe.ask(s.p2p, &p0), probe.ask(s.p2p, &p1), late)
    });
    // The first is sent at once and the second queued behind it...
    for answer in [first, second] {
        let (_, body) = answer.unwrap();
        assert_eq!(body.map(|b| b.len() as u64), Some(DEFAULT_PIECE));
    }
    // ...the third, 300 ms later, found two piece times queued: refused
    // with the wait until only one is left, never 0 (to the asker, 0 means
    // "peers hold this piece").
    let Ok((Response::Busy { retry_ms, .. }, None)) = third else {
        panic!("a third piece request was not refused: {third:?}")
    };
    assert!(
        retry_ms >= 1 && retry_ms as f64 <= piece_ms,
        "retry after {retry_ms} ms (one piece time is {piece_ms:.0} ms)"
    );
    // Once that wait is over, the uplink takes the request.
    let (resp, body) = rt
        .block_on(async {
            tokio::time::sleep(Duration::from_millis(retry_ms)).await;
            probe.ask(s.p2p, &piece(2)).await
        })
        .unwrap();
    assert!(matches!(resp, Response::Piece { .. }), "{resp:?}");
    assert_eq!(body.map(|b| b.len() as u64), Some(DEFAULT_PIECE));
}

#[test]
fn a_peer_sending_bad_pieces_is_banned_and_the_download_still_completes() {
    bad_pieces_are_banned(false);
}

#[test]
fn a_chain_upstream_streaming_bad_pieces_is_banned_and_the_swarm_completes() {
    bad_pieces_are_banned(true);
}

/// An agent meets "evil", which has a valid cluster certificate but
/// sends garbage for every piece: as a swarm peer claiming every piece
/// (chains off), or only as the agent before it in a chain (not announced
/// to the swarm, so only the chain's check can catch it).
fn bad_pieces_are_banned(chain: bool) {
    let d = tempfile::tempdir().unwrap();
    let chains = if chain { "64" } else { "0" };
    let s = Swarm::start_with(d.path(), 1, 4, 0.0, &["--p2p-chain", chains]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let evil = evil_peer(&rt, &s);
    // Evil's own certificate: the tracker takes names from certificates.
    let evil_member = s.node(&rt, "evil");
    if chain {
        // Evil takes the chain's first place: the agent streams from it.
        match upstream(&rt, &evil_member, &s, "evil", evil.port()) {
            Response::Upstream { peer: None } => {}
            other => panic!("evil should stream from the origin: {other:?}"),
        }
    } else {
        announce_holding_all(&rt, &evil_member, &s, "evil", evil);
    }
    let a = s.agent_with(
        0,
        0.0,
        &[
            "--fetch",
            &s.digest.to_string(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = a
        .line("metrics on", Duration::from_secs(20))
        .expect("metrics endpoint");
    let metrics = metrics
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches("/metrics")
        .to_string();
    let r = s.completed(&a, Duration::from_secs(60));
    assert_eq!(r["banned"], serde_json::json!(["evil"]), "{r}");
    s.assert_holds(0);
    // The agent's /metrics count the bad pieces and where the good ones
    // came from.
    // (An agent's metrics listener takes no token: it is loopback by default.)
    let m = common::scrape(&metrics, None);
    let failures = common::metric(&m, "strata_p2p_piece_failures_total").unwrap();
    assert!(failures >= 1.0, "{m}");
    let received = common::metric(&m, "strata_p2p_bytes_received_total{source=\"origin\"}").unwrap()
        + common::metric(&m, "strata_p2p_bytes_received_total{source=\"peer\"}").unwrap();
    assert_eq!(received, s.blob.len() as f64, "{m}");
    assert_eq!(common::metric(&m, "strata_p2p_blobs_completed_total"), Some(1.0));
}

/// A QUIC server with the `evil` certificate that answers `Have` with
/// every piece and `Piece` with the right number of wrong bytes.
fn evil_peer(rt: &tokio::runtime::Runtime, s: &Swarm) -> SocketAddr {
    let id = Identity::from_dir(&s.certs(), "evil").unwrap();
    let _guard = rt.enter();
    let ep =
        quinn::Endpoint::server(id.server_config(None).unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let piece = DEFAULT_PIECE as usize;
    let pieces = s.blob.len().div_ceil(piece);
    rt.spawn(async move {
        while let Some(inc) = ep.accept().await {
            let Ok(conn) = inc.await else { continue };
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(req) = strata::p2p::wire::read_msg::<Request>(&mut recv).await else {
                        continue;
                    };
                    let (resp, body) = match req {
                        Request::Have { .. } => (
                            Response::Have {
                                pieces,
                                have: strata::p2p::Bitfield::full(pieces).to_bytes(),
                            },
                            None,
                        ),
                        Request::Piece { .. } => {
                            (Response::Piece { len: piece as u64 }, Some(vec![0xEE; piece]))
                        }
                        // As a chain's upstream: the first piece, garbage.
                        Request::Stream { .. } => (
                            Response::Next {
                                index: 0,
                                len: piece as u64,
                            },
                            Some(vec![0xEE; piece]),
                        ),
                        _ => (Response::Ok, None),
                    };
                    let _ = strata::p2p::wire::write_msg(&mut send, &resp).await;
                    if let Some(b) = body {
                        let _ = send.write_all(&b).await;
                    }
                    let _ = send.finish();
                }
            });
        }
    });
    addr
}

#[test]
fn the_tracker_chains_agents_one_after_another_only_while_all_fit() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start_with(d.path(), 0, 1, 0.0, &["--p2p-chain", "2"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let members: std::collections::HashMap<&str, Node> =
        ["h1", "h2", "h3"].map(|h| (h, s.member(&rt, h))).into();
    let ask = |node: &str, port: u16| upstream(&rt, &members[node], &s, node, port);
    // The first streams from the origin, the second from the first, again
    // when it asks again (a restart); the third finds the chain full.
    assert!(matches!(ask("h1", 7001), Response::Upstream { peer: None }));
    let second = ask("h2", 7002);
    match &second {
        Response::Upstream { peer: Some(p) } => {
            assert_eq!((p.name.as_str(), p.addr.as_str()), ("h1", "127.0.0.1:7001"));
        }
        other => panic!("h2 should stream from h1: {other:?}"),
    }
    assert_eq!(format!("{:?}", ask("h2", 7002)), format!("{second:?}"));
    match ask("h3", 7003) {
        Response::Error { message } => assert!(message.contains("swarm"), "{message}"),
        other => panic!("the chain holds two: {other:?}"),
    }
    // With more agents registered than may chain, nobody chains: a chain
    // would hold the origin's uplink while the others wait.
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start_with(d.path(), 0, 1, 0.0, &["--p2p-chain", "2"]);
    let members: std::collections::HashMap<&str, Node> =
        ["r1", "r2", "r3"].map(|h| (h, s.member(&rt, h))).into();
    let ask = |node: &str, port: u16| upstream(&rt, &members[node], &s, node, port);
    for h in ["r1", "r2", "r3"] {
        let register = Request::Register {
            node: h.into(),
            addr: "127.0.0.1:7100".into(),
            zone: 0,
            labels: vec![],
        };
        assert!(matches!(
            rt.block_on(members[h].ask(s.p2p, &register)).unwrap().0,
            Response::Ok
        ));
    }
    match ask("r1", 7101) {
        Response::Error { message } => assert!(message.contains("3 agents"), "{message}"),
        other => panic!("three registered agents do not fit a chain of two: {other:?}"),
    }
    // Agents that can follow stripes are gathered first (`Busy` until
    // every live agent asked, or half a second passed), then each gets a
    // parent per stripe: ⌈log2(3 + 1)⌉ = 2 stripes, each fed by the origin
    // to one agent, every other parent a registered agent, never the
    // asker itself.
    let striped = |node: &str, members: &std::collections::HashMap<&str, Node>, s: &Swarm| {
        let req = Request::Upstream {
            blob: s.digest.clone(),
            node: node.into(),
            addr: format!("127.0.0.1:71{}", &node[1..]),
            stripes: true,
        };
        rt.block_on(members[node].ask(s.p2p, &req)).unwrap().0
    };
    for h in ["r1", "r2"] {
        match striped(h, &members, &s) {
            Response::Busy { retry_ms, .. } => assert!((1..=500).contains(&retry_ms), "{retry_ms}"),
            other => panic!("{h} waits while the others may still ask: {other:?}"),
        }
    }
    let mut roots = vec![0; 2];
    for h in ["r3", "r1", "r2"] {
        match striped(h, &members, &s) {
            Response::Stripes { parents, .. } => {
                assert_eq!(parents.len(), 2, "{h}: {parents:?}");
                for (k, p) in parents.iter().enumerate() {
                    match p {
                        None => roots[k] += 1,
                        Some(p) => {
                            assert!(
                                ["r1", "r2", "r3"].contains(&p.name.as_str()) && p.name != h,
                                "{h}: {p:?}"
                            );
                            assert_eq!(p.addr, format!("127.0.0.1:71{}", &p.name[1..]));
                        }
                    }
                }
            }
            other => panic!("{h} should get stripes: {other:?}"),
        }
    }
    assert_eq!(roots, [1, 1], "the origin feeds each stripe to one agent");
    // One that asks after the plan was made is not in it: it swarms.
    let late = s.member(&rt, "r4");
    let req = Request::Upstream {
        blob: s.digest.clone(),
        node: "r4".into(),
        addr: "127.0.0.1:7104".into(),
        stripes: true,
    };
    match rt.block_on(late.ask(s.p2p, &req)).unwrap().0 {
        Response::Error { message } => assert!(message.contains("too late"), "{message}"),
        other => panic!("r4 is not in the plan: {other:?}"),
    }

    // Three registered, two fetch (a deploy to some hosts of a larger
    // cluster): after half a second those two form a chain of their own,
    // in the order they asked; the third, asking later, swarms.
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start_with(d.path(), 0, 1, 0.0, &["--p2p-chain", "2"]);
    let members: std::collections::HashMap<&str, Node> =
        ["r1", "r2", "r3"].map(|h| (h, s.member(&rt, h))).into();
    for h in ["r1", "r2", "r3"] {
        let register = Request::Register {
            node: h.into(),
            addr: "127.0.0.1:7100".into(),
            zone: 0,
            labels: vec![],
        };
        assert!(matches!(
            rt.block_on(members[h].ask(s.p2p, &register)).unwrap().0,
            Response::Ok
        ));
    }
    for h in ["r2", "r1"] {
        assert!(matches!(striped(h, &members, &s), Response::Busy { .. }), "{h}");
    }
    std::thread::sleep(Duration::from_millis(600));
    assert!(matches!(
        striped("r2", &members, &s),
        Response::Upstream { peer: None }
    ));
    match striped("r1", &members, &s) {
        Response::Upstream { peer: Some(p) } => {
            assert_eq!((p.name.as_str(), p.addr.as_str()), ("r2", "127.0.0.1:712"));
        }
        other => panic!("r1 should stream from r2: {other:?}"),
    }
    assert!(matches!(striped("r3", &members, &s), Response::Error { .. }));
}

#[test]
fn a_cluster_larger_than_a_chain_streams_the_blob_down_stripe_trees() {
    let d = tempfile::tempdir().unwrap();
    // Six agents, chains of two: the tracker plans ⌈log2(6 + 1)⌉ = 3
    // stripes, each down a tree of its own.
    let k = 6;
    let s = Swarm::start_with(d.path(), k, 8, 80.0, &["--p2p-chain", "2"]);
    let origin = format!("http://127.0.0.1:{}", s.registry);
    let agents: Vec<(Proc, String)> = (0..k)
        .map(|i| {
            let a = s.agent_with(
                i,
                80.0,
                &["--registry", &origin, "--mirror-listen", "127.0.0.1:0"],
            );
            let m = a
                .line("mirror listening on", Duration::from_secs(20))
                .expect("mirror");
            let port = m.rsplit(':').next().unwrap().to_string();
            (a, format!("http://127.0.0.1:{port}"))
        })
        .collect();
    // Every agent registered before any asks, so the plan holds them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts = s.api("/strata/api/hosts");
        if hosts.as_array().is_some_and(|h| h.len() == k) {
            break;
        }
        assert!(Instant::now() < deadline, "agents did not register: {hosts}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every host pulls the blob through its own agent, all at once.
    let bodies: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let pulls: Vec<_> = agents
            .iter()
            .map(|(_, mirror)| {
                let url = format!("{mirror}/v2/app/blobs/{}", s.digest);
                scope.spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(90))
                        .build()
                        .unwrap();
                    let r = client.get(&url).send().unwrap();
                    assert_eq!(r.status(), 200, "{url}");
                    r.bytes().unwrap().to_vec()
                })
            })
            .collect();
        pulls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let size = s.blob.len() as f64;
    let (mut striped, mut took) = (0.0, 0);
    for (i, ((_, mirror), body)) in agents.iter().zip(&bodies).enumerate() {
        assert_eq!(
            Digest::sha256_of(body),
            s.digest,
            "agent-{i}'s mirror served other bytes"
        );
        let m = common::scrape(mirror, None);
        let down = common::metric(&m, "strata_p2p_bytes_streamed_total{how=\"stripes\"}").unwrap();
        took += usize::from(down > 0.0);
        let chained = common::metric(&m, "strata_p2p_bytes_streamed_total{how=\"chain\"}").unwrap();
        assert_eq!(chained, 0.0, "agent-{i}: six agents do not fit a chain of two");
        striped += down;
    }
    // An agent whose pull starts more than half a second after the first
    // is not in the plan, and a stripe that stalls leaves its pieces to
    // the swarm (both correct, and possible on a loaded machine); most
    // agents and bytes still come down the trees.
    assert!(
        took >= k - 1,
        "only {took} of {k} agents took pieces down the stripe trees"
    );
    assert!(
        striped >= 0.75 * k as f64 * size,
        "{striped} of {} bytes came down the stripe trees",
        k as f64 * size
    );
    // The origin feeds each stripe once: about one copy in all.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probe = s.node(&rt, "probe");
    let sent = s.origin_bytes(&rt, &probe) as f64;
    assert!(
        (size..=1.2 * size).contains(&sent),
        "origin egress {sent} for {size}"
    );
}

/// Tells the tracker that `node` (whose certificate `member` holds), at
/// `addr`, holds every piece of the swarm's blob.
fn announce_holding_all(
    rt: &tokio::runtime::Runtime,
    member: &Node,
    s: &Swarm,
    node: &str,
    addr: SocketAddr,
) {
    let announce = Request::Announce {
        blob: s.digest.clone(),
        node: node.into(),
        addr: addr.to_string(),
        zone: 0,
        have: strata::p2p::Bitfield::full(s.blob.len().div_ceil(DEFAULT_PIECE as usize)).to_bytes(),
    };
    assert!(matches!(
        rt.block_on(member.ask(s.p2p, &announce)).unwrap().0,
        Response::Ok
    ));
}

/// The tracker's answer to `node` (at 127.0.0.1:`port`) asking where to
/// stream the swarm's blob from.
fn upstream(rt: &tokio::runtime::Runtime, member: &Node, s: &Swarm, node: &str, port: u16) -> Response {
    let req = Request::Upstream {
        blob: s.digest.clone(),
        node: node.into(),
        addr: format!("127.0.0.1:{port}"),
        stripes: false,
    };
    rt.block_on(member.ask(s.p2p, &req)).unwrap().0
}

#[test]
fn a_piece_still_arriving_is_forwarded_and_one_that_fails_is_cut_short() {
    let d = tempfile::tempdir().unwrap();
    // Chains off: the agent swarms, and asks evil.
    let s = Swarm::start_with(d.path(), 1, 1, 0.0, &["--p2p-chain", "0"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let piece = DEFAULT_PIECE as usize;
    let half = piece / 2;
    // "evil" claims every piece, so the origin leaves them to it; it sends
    // the first half of each piece it is asked for, then waits for the
    // test to say whether the rest is right or garbage.
    let (evil, asked, gate) = pausing_peer(&rt, &s);
    let evil_member = s.node(&rt, "evil");
    announce_holding_all(&rt, &evil_member, &s, "evil", evil);
    let (a, agent) = s.agent_listening(0, 0.0, &["--fetch", &s.digest.to_string()]);
    let client = rt.block_on(quic_client(&s, agent));
    let bytes_of = |i: usize| &s.blob[i * piece..((i + 1) * piece).min(s.blob.len())];

    // Half of piece p is at the agent: a peer asking gets that half now.
    let p = asked
        .recv_timeout(Duration::from_secs(20))
        .expect("the agent asks evil");
    let (mut stream, len) = rt.block_on(ask_piece(&client, &s.digest, p));
    assert_eq!(len, piece);
    let first = rt.block_on(read_at_least(&mut stream, half));
    assert_eq!(first, bytes_of(p)[..half], "the half that arrived, forwarded");
    // The rest comes right, the piece passes its hash: the peer gets it whole.
    gate.send(true).unwrap();
    let rest = rt.block_on(read_to_end(&mut stream));
    assert_eq!(rest.as_ref().map(|r| r.len()), Ok(piece - half), "{rest:?}");
    assert_eq!([first, rest.unwrap()].concat(), bytes_of(p));

    // Piece q: the rest is garbage. The peer forwarded its first half
    // never gets a whole piece: the stream is reset with the code that
    // tells it the forwarder is not to blame.
    let q = asked
        .recv_timeout(Duration::from_secs(20))
        .expect("the agent asks evil again");
    let (mut stream, _) = rt.block_on(ask_piece(&client, &s.digest, q));
    let first = rt.block_on(read_at_least(&mut stream, half));
    gate.send(false).unwrap();
    match rt.block_on(read_to_end(&mut stream)) {
        Err(quinn::ReadError::Reset(code)) => assert_eq!(code, quinn::VarInt::from_u32(1)),
        Err(e) => panic!("a forward of a bad piece must be cut short, not end with {e}"),
        Ok(rest) => panic!(
            "a forward of a bad piece must be cut short: {} more bytes came",
            rest.len()
        ),
    }
    assert!(first.len() < piece);

    // The agent bans evil, gets the rest from the origin, and ends whole.
    let r = s.completed(&a, Duration::from_secs(60));
    assert_eq!(r["banned"], serde_json::json!(["evil"]), "{r}");
    s.assert_holds(0);
}

/// A QUIC server with the `evil` certificate that holds the swarm's blob
/// and answers each `Piece` with its first half, then, when the test says
/// so, the right rest (`true`) or garbage (`false`). Which piece was asked
/// for comes out of the receiver.
fn pausing_peer(
    rt: &tokio::runtime::Runtime,
    s: &Swarm,
) -> (
    SocketAddr,
    Receiver<usize>,
    tokio::sync::mpsc::UnboundedSender<bool>,
) {
    let id = Identity::from_dir(&s.certs(), "evil").unwrap();
    let _guard = rt.enter();
    let ep =
        quinn::Endpoint::server(id.server_config(None).unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let (asked_tx, asked) = channel();
    let (gate, gates) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let gates = std::sync::Arc::new(tokio::sync::Mutex::new(gates));
    let blob = std::sync::Arc::new(s.blob.clone());
    rt.spawn(async move {
        while let Some(inc) = ep.accept().await {
            let Ok(conn) = inc.await else { continue };
            let (asked_tx, gates, blob) = (asked_tx.clone(), gates.clone(), blob.clone());
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(req) = strata::p2p::wire::read_msg::<Request>(&mut recv).await else {
                        continue;
                    };
                    let Request::Piece { index, .. } = req else {
                        let _ = strata::p2p::wire::write_msg(&mut send, &Response::Ok).await;
                        let _ = send.finish();
                        continue;
                    };
                    let piece = DEFAULT_PIECE as usize;
                    let bytes = blob[index * piece..((index + 1) * piece).min(blob.len())].to_vec();
                    let half = bytes.len() / 2;
                    let (asked_tx, gates) = (asked_tx.clone(), gates.clone());
                    tokio::spawn(async move {
                        let head = Response::Piece {
                            len: bytes.len() as u64,
                        };
                        let _ = strata::p2p::wire::write_msg(&mut send, &head).await;
                        let _ = send.write_all(&bytes[..half]).await;
                        let _ = asked_tx.send(index);
                        let good = gates.lock().await.recv().await.unwrap_or(false);
                        let rest = if good {
                            bytes[half..].to_vec()
                        } else {
                            vec![0xEE; bytes.len() - half]
                        };
                        let _ = send.write_all(&rest).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    (addr, asked, gate)
}

/// A raw QUIC connection to `addr` with the `probe` certificate, to read
/// a piece's bytes as they come.
async fn quic_client(s: &Swarm, addr: SocketAddr) -> quinn::Connection {
    let id = Identity::from_dir(&s.certs(), "probe").unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(id.client_config().unwrap());
    ep.connect(addr, strata::p2p::tls::CLUSTER_NAME)
        .unwrap()
        .await
        .unwrap()
}

/// Asks for a piece until it is there (for up to 5 s: the bytes the
/// peer sent may still be on their way); the stream its bytes come on,
/// and their length.
async fn ask_piece(c: &quinn::Connection, blob: &Digest, index: usize) -> (quinn::RecvStream, usize) {
    let mut last = None;
    for _ in 0..100 {
        let (mut send, mut recv) = c.open_bi().await.unwrap();
        let req = Request::Piece {
            blob: blob.clone(),
            index,
        };
        strata::p2p::wire::write_msg(&mut send, &req).await.unwrap();
        send.finish().unwrap();
        match strata::p2p::wire::read_msg::<Response>(&mut recv).await.unwrap() {
            Response::Piece { len } => return (recv, len as usize),
            other => last = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("piece {index} not there within 5 s: {last:?}")
}

/// At least `n` bytes from the stream (within 10 s).
async fn read_at_least(r: &mut quinn::RecvStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let work = async {
        while got.len() < n {
            match r.read_chunk(usize::MAX, true).await {
                Ok(Some(c)) => got.extend_from_slice(&c.bytes),
                other => panic!("after {} bytes: {other:?}", got.len()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("bytes within 10 s");
    got
}

/// The rest of the stream (within 10 s), or how it ended early.
async fn read_to_end(r: &mut quinn::RecvStream) -> Result<Vec<u8>, quinn::ReadError> {
    let mut got = Vec::new();
    let work = async {
        loop {
            match r.read_chunk(usize::MAX, true).await? {
                Some(c) => got.extend_from_slice(&c.bytes),
                None => return Ok::<(), quinn::ReadError>(()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("an end within 10 s")?;
    Ok(got)
}

#[test]
fn killed_agents_and_a_stopped_origin_do_not_stop_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Swarm::start(d.path(), 6, 12, 40.0);
    let mut agents: Vec<Proc> = (0..6).map(|i| s.agent(i, 40.0)).collect();
    // A third of the agents die in the middle of the download.
    std::thread::sleep(Duration::from_millis(800));
    agents[4].kill();
    agents[5].kill();
    // The origin stops as soon as one full copy exists in the swarm.
    let first = (0..4)
        .find_map(|i| {
            agents[i]
                .line("{\"complete\"", Duration::from_secs(60))
                .map(|_| i)
        })
        .expect("a first agent completes");
    s.origin.kill();
    for (i, a) in agents.iter().enumerate().take(4) {
        if i != first {
            s.completed(a, Duration::from_secs(90));
        }
        s.assert_holds(i);
    }
}

#[test]
fn a_restarted_agent_resumes_from_the_verified_pieces_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 12, 24.0);
    let mut a = s.agent(0, 0.0);
    // 12 MiB at 3 MB/s: kill it a little after a second.
    let have = d.path().join(format!("agent-0/partial/{}.have", s.digest.hex()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read(&have).is_ok_and(|b| b.iter().map(|x| x.count_ones()).sum::<u32>() >= 3) {
        assert!(Instant::now() < deadline, "no pieces written");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.kill();
    let a = s.agent(0, 0.0);
    let r = s.completed(&a, Duration::from_secs(60));
    let resumed = r["resumed"].as_u64().unwrap();
    assert!(resumed >= 3, "{r}");
    let fetched = r["from_origin"].as_u64().unwrap() + r["from_peers"].as_u64().unwrap();
    assert_eq!(
        resumed + fetched,
        r["pieces"].as_u64().unwrap(),
        "nothing fetched twice: {r}"
    );
    s.assert_holds(0);
}

#[test]
fn a_process_without_a_cluster_certificate_gets_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 0, 1, 0.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A certificate from another CA, with the same node name.
    let other = certs(d.path(), "other-ca", &["probe"]);
    let id = Identity::from_dir(&other, "probe").unwrap();
    let stranger = rt
        .block_on(Node::start(NodeConfig {
            name: "probe".into(),
            zone: 0,
            listen: "127.0.0.1:0".parse().unwrap(),
            store: strata::store::Store::open(d.path().join("stranger")).unwrap(),
            partial_dir: d.path().join("stranger-partial"),
            origin: false,
            identity: id,
            upload_rate: None,
            download_rate: None,
            cache: None,
            chain_max: 0,
            revoked: None,
            authority: None,
        }))
        .unwrap();
    let r = rt.block_on(stranger.ask(
        s.p2p,
        &Request::Pieces {
            blob: s.digest.clone(),
        },
    ));
    assert!(r.is_err(), "a stranger got an answer: {:?}", r.map(|x| x.0));
    // The same request with a cluster certificate works.
    let probe = s.node(&rt, "probe");
    let r = rt
        .block_on(probe.ask(
            s.p2p,
            &Request::Pieces {
                blob: s.digest.clone(),
            },
        ))
        .unwrap();
    assert!(matches!(r.0, Response::Pieces { .. }));
}

#[test]
fn an_agent_with_a_certificate_from_another_ca_says_why_and_exits() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 0, 1, 0.0);
    let other = certs(d.path(), "other-ca", &["agent-0"]);
    let started = Instant::now();
    let mut child = strata()
        .args(["agent", "--name", "agent-0", "--certs"])
        .arg(&other)
        .args([
            "--origin",
            &s.p2p.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(d.path().join("agent-0"))
        .args(["--register-timeout", "3s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its stderr, line by line as it comes.
    let (tx, lines) = channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send((started.elapsed(), l));
        }
    });
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent still runs 30 s after it could not register");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let waited = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let got: Vec<(Duration, String)> = lines.try_iter().collect();
    let text: String = got.iter().map(|(_, l)| format!("{l}\n")).collect();
    assert!(!status.success(), "{text}");
    assert!(
        waited >= Duration::from_secs(3),
        "gave up after {waited:?}: {text}"
    );
    // At once (well before the bound), at error level: which origin, the
    // likely cause, and what to do.
    let first = got
        .iter()
        .find(|(_, l)| l.contains("ERROR") && l.contains(&s.p2p.to_string()))
        .unwrap_or_else(|| panic!("no error naming the origin: {text}"));
    assert!(
        first.0 < Duration::from_secs(3),
        "said after {:?}: {text}",
        first.0
    );
    for what in ["another cluster CA", "--join", "strata cluster issue agent-0"] {
        assert!(first.1.contains(what), "no `{what}` in: {}", first.1);
    }
    // The last words say why it exits.
    assert!(
        text.contains("not registered with the origin") && text.contains("within 3s"),
        "{text}"
    );
}

#[test]
fn the_engine_pulls_through_an_agent_and_runs_the_image() {
    if !have_docker() {
        return;
    }
    let Some(_) = debs() else { return };
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 1, 0.0);
    let repo_name = unique("tools").replace("strata-test-", "p2p/");
    s.push_tools_tier(&format!("{repo_name}:1"), true);
    let registry = format!("http://127.0.0.1:{}", s.registry);
    let agent = s.agent_with(
        0,
        0.0,
        &["--registry", &registry, "--mirror-listen", "127.0.0.1:0"],
    );
    let mirror = agent
        .line("mirror listening on", Duration::from_secs(20))
        .expect("mirror");
    let port = mirror.rsplit(':').next().unwrap().to_string();
    let image = format!("127.0.0.1:{port}/{repo_name}:1");
    let _cleanup = DockerCleanup {
        containers: vec![],
        images: vec![image.clone()],
    };
    let o = Command::new("docker").args(["pull", &image]).output().unwrap();
    assert!(
        o.status.success(),
        "docker pull through the agent: {}",
        stderr(&o)
    );
    assert_runs_with_the_timezone_fix(&image);
    // The layers came over QUIC from the origin's seeder.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probe = s.node(&rt, "probe");
    assert!(s.origin_bytes(&rt, &probe) > 1 << 20, "blobs travelled over P2P");
}

#[test]
fn prewarm_puts_an_image_on_the_chosen_hosts_and_a_pull_then_costs_the_origin_nothing() {
    if !have_docker() {
        return;
    }
    let Some(_) = debs() else { return };
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 3, 1, 0.0);
    let repo_name = unique("pre").replace("strata-test-", "p2p/");
    let image = format!("{repo_name}:1");
    s.push_tools_tier(&image, true);
    let server = format!("http://127.0.0.1:{}", s.registry);
    let mut mirrors = Vec::new();
    let agents: Vec<Proc> = (0..3)
        .map(|i| {
            let rack = if i < 2 { "rack=a" } else { "rack=b" };
            let p = s.agent_with(
                i,
                0.0,
                &[
                    "--registry",
                    &server,
                    "--mirror-listen",
                    "127.0.0.1:0",
                    "--label",
                    rack,
                ],
            );
            let m = p
                .line("mirror listening on", Duration::from_secs(20))
                .expect("mirror");
            mirrors.push(m.rsplit("//").next().unwrap().to_string());
            p
        })
        .collect();
    // Every agent registers with the server.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hosts = s.api("/strata/api/hosts");
        if hosts.as_array().is_some_and(|h| h.len() == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "agents did not register: {hosts}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _cleanup = DockerCleanup {
        containers: vec![],
        images: mirrors.iter().map(|m| format!("{m}/{image}")).collect(),
    };

    // Prewarm rack a only.
    let o = strata()
        .args([
            "prewarm", &image, "--server", &server, "--label", "rack=a", "--json", "--token", &s.token,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let job: Value = serde_json::from_slice(&o.stdout).unwrap();
    let hosts = job["hosts"].as_object().unwrap();
    assert_eq!(hosts.keys().collect::<Vec<_>>(), ["agent-0", "agent-1"], "{job}");
    assert!(
        hosts
            .values()
            .all(|h| h["state"] == "done" && h["total"].as_u64() > Some(0)),
        "{job}"
    );

    // A pull through a prewarmed host's agent costs the origin nothing.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let probe = s.node(&rt, "probe");
    let before = s.origin_bytes(&rt, &probe);
    let pulled = format!("{}/{image}", mirrors[0]);
    let o = Command::new("docker").args(["pull", &pulled]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        s.origin_bytes(&rt, &probe),
        before,
        "the origin sent pieces after the prewarm"
    );
    assert_runs_with_the_timezone_fix(&pulled);

    // --load on the other rack: the engine has the image afterwards.
    let o = strata()
        .args([
            "prewarm", &image, "--server", &server, "--hosts", "agent-2", "--load", "--token", &s.token,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let loaded = format!("{}/{image}", mirrors[2]);
    let o = Command::new("docker")
        .args(["image", "inspect", &loaded])
        .output()
        .unwrap();
    assert!(o.status.success(), "not loaded: {}", stderr(&o));

    // The server knows what each prewarmed agent holds.
    // (Its last piece announcements travel apart from the prewarm's answer.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hosts = s.api("/strata/api/hosts");
        let agent0 = hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == "agent-0")
            .unwrap();
        let blobs = agent0["blobs"].as_array().unwrap();
        if !blobs.is_empty() && blobs.iter().all(|b| b["percent"] == 100.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent-0 does not hold its blobs: {hosts}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Three hosts prewarmed, each timed.
    let m = common::scrape(&server, Some(&s.token));
    let ok = "strata_prewarm_host_seconds_count{outcome=\"ok\"}";
    assert_eq!(common::metric(&m, ok), Some(3.0), "{m}");

    // An unknown host: refused, saying which hosts exist.
    let o = strata()
        .args([
            "prewarm", &image, "--server", &server, "--hosts", "nope", "--token", &s.token,
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("nope") && stderr(&o).contains("agent-0"),
        "{}",
        stderr(&o)
    );
    drop(agents);
}

#[test]
fn the_cache_evicts_least_recently_used_blobs_between_its_watermarks() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 0, 4, 0.0);
    let mut digests = vec![s.digest.clone()];
    for seed in [11u64, 12] {
        let blob = noise(4 << 20, seed);
        let dg = Digest::sha256_of(&blob);
        let r = reqwest::blocking::Client::new()
            .post(format!(
                "http://127.0.0.1:{}/v2/app/blobs/uploads/?digest={dg}",
                s.registry
            ))
            .body(blob)
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        digests.push(dg);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = strata::store::Store::open(d.path().join("cached")).unwrap();
    let cached = rt
        .block_on(Node::start(NodeConfig {
            name: "probe".into(),
            zone: 0,
            listen: "127.0.0.1:0".parse().unwrap(),
            store: store.clone(),
            partial_dir: d.path().join("cached-partial"),
            origin: false,
            identity: Identity::from_dir(&s.certs(), "probe").unwrap(),
            upload_rate: None,
            download_rate: None,
            cache: Some((10 << 20, 9 << 20)),
            chain_max: 0,
            revoked: None,
            authority: None,
        }))
        .unwrap();
    for dg in &digests[..2] {
        let r = rt.block_on(cached.fetch(s.p2p, dg)).unwrap();
        assert!(r.evicted.is_empty(), "8 MiB is under the 10 MiB mark");
    }
    // The first blob is used again (a peer reads a piece of it): the second
    // is now the least recently used.
    std::thread::sleep(Duration::from_millis(20));
    let other = s.node(&rt, "evil");
    let piece = Request::Piece {
        blob: digests[0].clone(),
        index: 0,
    };
    let (_, body) = rt.block_on(other.ask(cached.local_addr(), &piece)).unwrap();
    assert_eq!(body.map(|b| b.len() as u64), Some(DEFAULT_PIECE));
    let r = rt.block_on(cached.fetch(s.p2p, &digests[2])).unwrap();
    assert_eq!(
        r.evicted,
        vec![digests[1].to_string()],
        "12 MiB > 10: down to 8 ≤ 9"
    );
    assert!(store.has(&digests[0]) && !store.has(&digests[1]) && store.has(&digests[2]));
}

#[test]
fn an_agent_joins_with_a_token_and_its_key_stays_home() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 0, 2, 0.0);
    let o = strata()
        .args(["cluster", "token", "--dir"])
        .arg(d.path().join("ca"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    let registry = format!("http://127.0.0.1:{}", s.registry);
    let join = |name: &str, token: &str| {
        let mut c = strata();
        c.args(["agent", "--name", name, "--certs"])
            .arg(d.path().join("joined"))
            .args([
                "--origin",
                &s.p2p.to_string(),
                "--listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(d.path().join(name))
            .args([
                "--registry",
                &registry,
                "--mirror-listen",
                "127.0.0.1:0",
                "--join",
                token,
            ])
            .args(["--fetch", &s.digest.to_string()]);
        c
    };
    // A wrong token: refused, nothing written.
    let o = join("newbie", "join_wrong").output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("join token is not valid"), "{}", stderr(&o));
    assert!(!d.path().join("joined/newbie.pem").exists());
    // The origin's name cannot be taken.
    let o = join("origin", &token).output().unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("not allowed"),
        "{}",
        stderr(&o)
    );
    // The right token: a certificate, and the agent fetches through the swarm.
    let a = Proc::spawn(&mut join("newbie", &token));
    assert!(a.line("p2p listening on", Duration::from_secs(20)).is_some());
    s.completed(&a, Duration::from_secs(60));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("joined/newbie.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(d.path().join("joined/ca.pem").is_file());
}

/// `strata agent --name NAME --join TOKEN` against the swarm's server,
/// certificates into DIR/joined; it fetches the swarm's blob.
fn joining(s: &Swarm, name: &str, token: &str) -> Command {
    let mut c = strata();
    c.args(["agent", "--name", name, "--certs"])
        .arg(s.dir.join("joined"))
        .args([
            "--origin",
            &s.p2p.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(s.dir.join(name))
        .args([
            "--registry",
            &format!("http://127.0.0.1:{}", s.registry),
            "--mirror-listen",
            "127.0.0.1:0",
            "--join",
            token,
        ])
        .args(["--fetch", &s.digest.to_string()]);
    c
}

/// `strata cluster token` with `args`, on the swarm's CA.
fn join_token(s: &Swarm, args: &[&str]) -> String {
    let o = strata()
        .args(["cluster", "token", "--dir"])
        .arg(s.dir.join("ca"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o).trim().to_string()
}

#[test]
fn join_tokens_expire_and_run_out() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 0, 1, 0.0);
    // Expired: refused, saying so, nothing written.
    let short = join_token(&s, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let o = joining(&s, "late", &short).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("join token expired"), "{}", stderr(&o));
    assert!(!d.path().join("joined/late.pem").exists());
    // Two uses: two hosts join, the third is told the token is used up.
    let twice = join_token(&s, &["--uses", "2"]);
    for name in ["first", "second"] {
        let a = Proc::spawn(&mut joining(&s, name, &twice));
        s.completed(&a, Duration::from_secs(30));
    }
    let o = joining(&s, "third", &twice).output().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("join token has been used up (2 uses"),
        "{}",
        stderr(&o)
    );
    assert!(!d.path().join("joined/third.pem").exists());
    // A refused name does not use the token up.
    let once = join_token(&s, &["--uses", "1"]);
    let o = joining(&s, "origin", &once).output().unwrap();
    assert!(stderr(&o).contains("not allowed"), "{}", stderr(&o));
    let a = Proc::spawn(&mut joining(&s, "fourth", &once));
    s.completed(&a, Duration::from_secs(30));
}

#[test]
fn a_revoked_node_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 1, 0.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // agent-0 is a member: connected, registered, in the swarm.
    let member = s.node(&rt, "agent-0");
    let register = Request::Register {
        node: "agent-0".into(),
        addr: "127.0.0.1:7000".into(),
        zone: 0,
        labels: vec![],
    };
    let ask = |req: &Request| rt.block_on(member.ask(s.p2p, req));
    assert!(matches!(ask(&register).unwrap().0, Response::Ok));
    let o = strata()
        .args(["cluster", "revoke", "agent-0", "--data"])
        .arg(d.path().join("origin"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // On the connection it already has: refused by the tracker.
    match ask(&register) {
        Ok((Response::Error { message }, _)) => assert!(message.contains("revoked"), "{message}"),
        other => panic!("a revoked node registered: {other:?}"),
    }
    // A new connection with its certificate: refused in the handshake; a
    // real agent says so and exits.
    let started = Instant::now();
    let o = strata()
        .args(["agent", "--name", "agent-0", "--certs"])
        .arg(s.certs())
        .args([
            "--origin",
            &s.p2p.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(d.path().join("agent-0"))
        .args(["--register-timeout", "3s"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
    // Other members are not affected, and the name cannot join again.
    let probe = s.node(&rt, "probe");
    let pieces = Request::Pieces {
        blob: s.digest.clone(),
    };
    assert!(matches!(
        rt.block_on(probe.ask(s.p2p, &pieces)).unwrap().0,
        Response::Pieces { .. }
    ));
    let token = join_token(&s, &[]);
    let o = joining(&s, "agent-0", &token).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("revoked"), "{}", stderr(&o));
    // The list outlives the server: a restarted origin still refuses.
    assert!(
        std::fs::read_to_string(d.path().join("origin/revoked-nodes"))
            .unwrap()
            .contains("agent-0")
    );
}

#[test]
fn an_agent_renews_its_certificate_before_it_expires() {
    let d = tempfile::tempdir().unwrap();
    // Certificates from the join endpoint live 12 s: the agent renews
    // when less than a third is left, over its QUIC link to the origin.
    let s = Swarm::start_with(d.path(), 0, 1, 0.0, &["--cert-lifetime", "12s"]);
    let token = join_token(&s, &[]);
    let a = Proc::spawn(&mut joining(&s, "renewer", &token));
    let listening = a
        .line("p2p listening on", Duration::from_secs(20))
        .expect("the agent starts");
    let agent: SocketAddr = listening.rsplit(' ').next().unwrap().parse().unwrap();
    // The joined certificate, read before the first renewal can be due
    // (12 s, a tenth of it back-dated; whole seconds).
    let pem = d.path().join("joined/renewer.pem");
    let first = strata::p2p::identity::read_cert_file(&pem).unwrap();
    assert!(first.not_after - first.not_before <= 14, "{first:?}");
    s.completed(&a, Duration::from_secs(30));
    // Past the first certificate's end: a newer one is on disk, and the
    // agent, which reconnects with it, is still registered.
    let deadline = Instant::now() + Duration::from_secs(40);
    let renewed = loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let c = strata::p2p::identity::read_cert_file(&pem).unwrap();
        if now > first.not_after + 2 && c.not_after > first.not_after {
            break c;
        }
        assert!(Instant::now() < deadline, "not renewed: {c:?} (first {first:?})");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(renewed.name, "renewer");
    // A peer connecting now is shown the new certificate.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shown = rt.block_on(async {
        let c = quic_client(&s, agent).await;
        let certs = c
            .peer_identity()
            .unwrap()
            .downcast::<Vec<quinn::rustls::pki_types::CertificateDer<'static>>>()
            .unwrap();
        strata::p2p::identity::read_cert(&certs[0]).unwrap()
    });
    assert!(shown.not_after > first.not_after, "{shown:?} {first:?}");
    std::thread::sleep(Duration::from_secs(4));
    let seen = s.hosts()["renewer"]["seen_seconds_ago"].as_f64().unwrap();
    assert!(
        seen < 4.0,
        "no heartbeat for {seen} s after the first certificate expired"
    );
}

#[test]
fn the_download_cap_holds() {
    let d = tempfile::tempdir().unwrap();
    let s = Swarm::start(d.path(), 1, 4, 0.0);
    let a = s.agent_with(
        0,
        0.0,
        &["--download-mbit", "16", "--fetch", &s.digest.to_string()],
    );
    let r = s.completed(&a, Duration::from_secs(60));
    // 4 MiB at 16 Mbit/s is 2.1 s; the first piece goes at once.
    let secs = r["seconds"].as_f64().unwrap();
    assert!(secs >= 1.5, "4 MiB under a 16 Mbit/s cap took {secs} s");
    s.assert_holds(0);
}

#[test]
fn two_fetches_of_one_blob_download_it_once() {
    let d = tempfile::tempdir().unwrap();
    let (s, rt, node) = Swarm::with_probe(d.path(), 4, 0.0);
    let (a, b) =
        rt.block_on(async { tokio::join!(node.fetch(s.p2p, &s.digest), node.fetch(s.p2p, &s.digest)) });
    let (a, b) = (a.unwrap(), b.unwrap());
    // One did the download, the other waited for it.
    let mut pieces = [a.pieces, b.pieces];
    pieces.sort();
    let all = s.blob.len().div_ceil(DEFAULT_PIECE as usize);
    assert_eq!(pieces, [0, all], "{a:?} {b:?}");
    let stored = std::fs::read(
        d.path()
            .join(format!("probe-store/blobs/sha256/{}", s.digest.hex())),
    )
    .unwrap();
    assert!(stored == s.blob);
}
