//! A `strata serve` process for tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

use reqwest::blocking::Client;

use super::{stderr, stdout, strata};

/// A `strata serve` process on a free loopback port, killed on drop.
pub struct Serve {
    pub child: Child,
    pub port: u16,
    /// A deploy token (it reads, pushes and deploys).
    pub token: String,
    /// What the server wrote to stderr as it started (who may do what).
    pub startup: Vec<String>,
    /// Every line it wrote to stderr after that, as they come.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    pub fn start(data: &Path) -> Serve {
        Serve::start_with(data, &[])
    }

    pub fn start_with(data: &Path, extra: &[&str]) -> Serve {
        Serve::start_env(data, extra, &[])
    }

    /// With `env` set (and `STRATA_FAULT` unset unless `env` sets it).
    pub fn start_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Serve {
        // A push token, made once per data directory with the real command.
        let saved = data.with_extension("token");
        let token = match std::fs::read_to_string(&saved) {
            Ok(t) => t,
            Err(_) => {
                let o = strata()
                    .args(["token", "create", "tests", "--data"])
                    .arg(data)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", stderr(&o));
                let t = stdout(&o).trim().to_string();
                std::fs::write(&saved, &t).unwrap();
                t
            }
        };
        let mut cmd = strata();
        cmd.env_remove("STRATA_FAULT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("listening line");
        // The startup lines end with "Ctrl-C stops"; the rest is drained
        // so the server never blocks on a full pipe.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut startup = Vec::new();
        loop {
            let mut l = String::new();
            if err.read_line(&mut l).unwrap_or(0) == 0 {
                break;
            }
            let done = l.contains("Ctrl-C stops");
            startup.push(l.trim_end().to_string());
            if done {
                break;
            }
        }
        let log: Arc<Mutex<Vec<String>>> = Default::default();
        let lines = log.clone();
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(l);
            }
        });
        Serve {
            child,
            port,
            token,
            startup,
            log,
        }
    }

    /// `GET path` with `token` (none: anonymously).
    pub fn get(&self, path: &str, token: Option<&str>) -> reqwest::blocking::Response {
        let mut rq = Client::new().get(self.url(path));
        if let Some(t) = token {
            rq = rq.bearer_auth(t);
        }
        rq.send().unwrap()
    }

    /// A client that sends the push token with every request.
    pub fn client(&self) -> Client {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        Client::builder().default_headers(h).build().unwrap()
    }

    /// Whether a line it wrote to stderr after starting contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| l.contains(text))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A registry error answer as (status, its first error's code, message).
pub fn error_of(resp: reqwest::blocking::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_slice(&resp.bytes().unwrap_or_default()).unwrap_or(serde_json::Value::Null);
    let e = &body["errors"][0];
    (
        status,
        e["code"].as_str().unwrap_or("").to_string(),
        e["message"].as_str().unwrap_or("").to_string(),
    )
}

/// Pushes `body` as a blob of `repo` in one request.
pub fn push_blob(s: &Serve, c: &Client, repo: &str, body: &[u8]) -> strata::digest::Digest {
    let dg = strata::digest::Digest::sha256_of(body);
    let r = c
        .post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={dg}")))
        .body(body.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{repo}");
    dg
}
