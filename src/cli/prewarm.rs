//! `strata prewarm`: put an image on hosts before a deploy.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::human;

/// Put an image on hosts before a deploy, through the swarm.
///
/// The server asks each host's agent to fetch every blob of IMAGE (from
/// peers first, the origin as a last resort) and shows per-host progress
/// until every host holds it. With --load each host's engine also pulls
/// the image from its agent, so a deploy starts without transferring a
/// byte. Hosts are agents registered with the server (`strata agent`).
///
/// Examples:
///   strata prewarm strata/app:42 --server http://10.0.0.1:5000
///   strata prewarm strata/app:42 --label rack=a --load
///   strata prewarm strata/app:42 --hosts host-1,host-2 --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// REPO:TAG or REPO@DIGEST in the server's registry.
    pub image: String,
    /// The server (`strata serve --p2p-listen …`).
    #[arg(long, env = "STRATA_SERVER", default_value = "http://127.0.0.1:5000")]
    pub server: String,
    /// Host names, comma separated (default: every registered host).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Only hosts with this KEY=VALUE label.
    #[arg(long)]
    pub label: Option<String>,
    /// Also pull the image into each host's Docker engine.
    #[arg(long)]
    pub load: bool,
    /// A push token (`strata token create`).
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Give up waiting after this many seconds (the job goes on).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// Print the finished job as JSON.
    #[arg(long)]
    pub json: bool,
    /// The closing line goes to stderr (a caller's stdout is its own).
    #[arg(skip)]
    pub report_on_stderr: bool,
}

pub fn run(a: Args) -> Result<()> {
    let base = a.server.trim_end_matches('/');
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let body = serde_json::json!({ "image": a.image, "hosts": a.hosts, "label": a.label, "load": a.load });
    let mut req = http
        .post(format!("{base}/strata/api/prewarm"))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(t) = &a.token {
        req = req.bearer_auth(t);
    }
    let r = req
        .send()
        .with_context(|| format!("reaching the server at {base}"))?;
    let status = r.status();
    let v: Value = serde_json::from_slice(&r.bytes()?).unwrap_or_default();
    if !status.is_success() {
        bail!(
            "the server refused the prewarm ({status}): {}",
            v["error"].as_str().unwrap_or("no reason given")
        );
    }
    let id = v["id"].as_u64().context("the server sent no job id")?;
    let tty = std::io::stderr().is_terminal() && !a.json;
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut last_print = Instant::now() - Duration::from_secs(60);
    let job = loop {
        let mut get = http.get(format!("{base}/strata/api/prewarm/{id}"));
        if let Some(t) = &a.token {
            get = get.bearer_auth(t);
        }
        let job: Value = serde_json::from_slice(&get.send()?.bytes()?)?;
        let done = job["done"].as_bool().unwrap_or(false);
        if !a.json && (done || last_print.elapsed() > Duration::from_secs(if tty { 1 } else { 5 })) {
            last_print = Instant::now();
            print_hosts(&job, tty);
        }
        if done {
            break job;
        }
        if Instant::now() > deadline {
            bail!(
                "prewarm job {id} still running after {} s; see {base}/strata/api/prewarm/{id}",
                a.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    }
    let failed: Vec<_> = job["hosts"]
        .as_object()
        .map(|h| {
            h.iter()
                .filter(|(_, p)| p["state"] != "done")
                .map(|(n, _)| n.clone())
                .collect()
        })
        .unwrap_or_default();
    if !failed.is_empty() {
        bail!("prewarm of {} failed on {}", a.image, failed.join(", "));
    }
    if !a.json {
        let line = format!(
            "{} is on {} host(s) in {:.1} s",
            a.image,
            job["hosts"].as_object().map_or(0, |h| h.len()),
            job["seconds"].as_f64().unwrap_or(0.0)
        );
        if a.report_on_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

fn print_hosts(job: &Value, tty: bool) {
    let Some(hosts) = job["hosts"].as_object() else {
        return;
    };
    for (name, p) in hosts {
        let (done, total) = (p["done"].as_u64().unwrap_or(0), p["total"].as_u64().unwrap_or(0));
        let pct = (done * 100).checked_div(total).unwrap_or(0);
        eprintln!(
            "  {name:20} {:8} {:>3}% {:>9} of {:>9}  {}",
            p["state"].as_str().unwrap_or(""),
            pct,
            human(done),
            human(total),
            p["message"].as_str().unwrap_or("")
        );
    }
    if tty {
        eprintln!();
    }
}
