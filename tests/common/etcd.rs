//! A real etcd (Debian's etcd-server) on loopback ports, for tests: its
//! data directory is the caller's (a temp dir), and the process is killed
//! when the handle is dropped, also when the test fails.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Etcd {
    child: Child,
    pub port: u16,
}

impl Etcd {
    /// `etcd://127.0.0.1:PORT`, as `--leases` and `--state` take it.
    pub fn spec(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts etcd with its data under `dir/etcd` and waits until it answers.
pub fn start(dir: &Path) -> Etcd {
    let (client, peer) = (free_port(), free_port());
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args(["--name", "strata-test"])
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
        ])
        .args([
            "--initial-cluster",
            &format!("strata-test=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let e = Etcd { child, port: client };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = TcpStream::connect(("127.0.0.1", client)).is_ok()
            && reqwest::blocking::Client::new()
                .post(format!("http://127.0.0.1:{client}/v3/kv/range"))
                .body(r#"{"key":"AA=="}"#)
                .send()
                .is_ok_and(|r| r.status().is_success());
        if up {
            return e;
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
}
