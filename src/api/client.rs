//! The CLI's side of the API: `strata deploy|hotfix|rollback|status|
//! history|logs --server URL` call a remote `strata serve` instead of
//! driving the engines from this machine. Blocking (the CLI has no
//! runtime of its own for these commands).

use std::io::{BufRead, BufReader};
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::de::DeserializeOwned;

use crate::deploy::state::HistoryEntry;
use crate::deploy::{Report, Status};

#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error("reaching {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url}: {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: unexpected answer: {why}")]
    Answer { url: String, why: String },
}

pub type Result<T, E = ApiClientError> = std::result::Result<T, E>;

/// A strata server's API.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client,
}

impl ApiClient {
    pub fn new(server: &str, token: Option<String>) -> Result<ApiClient> {
        let base = server.trim_end_matches('/').to_string();
        // Deploys take as long as the app needs to get healthy.
        let http = Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .map_err(|source| ApiClientError::Http {
                url: base.clone(),
                source,
            })?;
        Ok(ApiClient { base, token, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, url: &str, req: RequestBuilder) -> Result<Response> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let r = req.send().map_err(|source| ApiClientError::Http {
            url: url.to_string(),
            source,
        })?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status().as_u16();
        let body = r.bytes().unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(ApiClientError::Refused {
            url: url.to_string(),
            status,
            message,
        })
    }

    fn json<T: DeserializeOwned>(&self, url: &str, req: RequestBuilder) -> Result<T> {
        let r = self.send(url, req)?;
        let body = r.bytes().map_err(|source| ApiClientError::Http {
            url: url.to_string(),
            source,
        })?;
        serde_json::from_slice(&body).map_err(|e| ApiClientError::Answer {
            url: url.to_string(),
            why: e.to_string(),
        })
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: serde_json::Value) -> Result<T> {
        let url = self.url(path);
        let req = self
            .http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body.to_string());
        self.json(&url, req)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        self.json(&url, self.http.get(&url))
    }

    /// Deploys `image` (REPO:TAG of the server's registry; None: the
    /// spec's image) with `mode` (auto, hotfix, redeploy).
    pub fn deploy(&self, app: &str, image: Option<&str>, mode: &str) -> Result<Report> {
        self.post(
            &format!("/strata/api/apps/{app}/deploy"),
            serde_json::json!({ "image": image, "mode": mode }),
        )
    }

    pub fn rollback(&self, app: &str, to: Option<u64>) -> Result<Report> {
        self.post(
            &format!("/strata/api/apps/{app}/rollback"),
            serde_json::json!({ "to": to }),
        )
    }

    pub fn status(&self, app: &str, verify: bool) -> Result<Status> {
        let q = if verify { "?verify=true" } else { "" };
        self.get(&format!("/strata/api/apps/{app}{q}"))
    }

    pub fn history(&self, app: &str) -> Result<Vec<HistoryEntry>> {
        self.get(&format!("/strata/api/apps/{app}/history"))
    }

    /// Streams `NAME | line` lines to `out` until the server ends the
    /// stream (never, with `follow`, until interrupted).
    pub fn logs(
        &self,
        app: &str,
        instance: Option<u32>,
        tail: Option<usize>,
        follow: bool,
        out: &mut dyn FnMut(&str),
    ) -> Result<()> {
        let mut q = vec![format!("follow={follow}")];
        if let Some(i) = instance {
            q.push(format!("instance={i}"));
        }
        if let Some(t) = tail {
            q.push(format!("tail={t}"));
        }
        let url = self.url(&format!("/strata/api/apps/{app}/logs?{}", q.join("&")));
        let r = self.send(&url, self.http.get(&url))?;
        for line in BufReader::new(r).lines() {
            let line = line.map_err(|e| ApiClientError::Answer {
                url: url.clone(),
                why: e.to_string(),
            })?;
            out(&line);
        }
        Ok(())
    }
}
