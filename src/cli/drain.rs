//! `strata drain HOST`: a Docker host takes no more instances, and every
//! app's instances on it move to the app's other hosts with their IPs.

use anyhow::{Result, bail};
use strata::deploy::drain::DrainList;
use strata::deploy::spec;

use super::deploy::{AppArgs, SiteArgs, orchestrator, print_report};

/// Take a Docker host out of service: its instances move to other hosts,
/// keeping their IPs, and no new instance goes there.
///
/// HOST is one of the engines in the apps' `hosts` lists, whole
/// (`tcp://10.77.0.14:2376?tls=DIR`) or by its address (`10.77.0.14`).
/// Each app with instances there is redeployed with the image it runs:
/// only the instances on HOST move, each to the least loaded of the app's
/// other hosts, handed over warm when the app has a `dynamic_range` (the
/// new container warms up, then takes the IP and announces it).
///
/// HOST must answer, since its containers are stopped there. For a host
/// that is down for good, --force moves its instances anyway and fences
/// the host: strata cannot stop what it still runs, so every later
/// command that reaches it removes the apps' containers there before
/// anything else. Until then, if it comes back, it may serve the IPs
/// that moved: keep it off the network.
///
/// The list of drained hosts is DATA/drained.json (in etcd with --state
/// etcd://…, shared by every orchestrator); --undo takes HOST off it
/// (nothing moves back; new instances may go there again).
///
/// Examples:
///   strata drain 10.77.0.14
///   strata drain 10.77.0.14 --force     # the host is dead
///   strata drain 10.77.0.14 --undo
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The engine: as in the apps' `hosts`, or its address alone.
    pub host: String,
    /// The host does not answer and will not: move its instances anyway.
    #[arg(long, conflicts_with = "undo")]
    pub force: bool,
    /// Put the host back into service (nothing moves).
    #[arg(long)]
    pub undo: bool,
    #[command(flatten)]
    pub site: SiteArgs,
}

/// Whether `endpoint` (as a spec writes it) is what `arg` names: the
/// whole endpoint, its `HOST:PORT` or its `HOST`.
fn names(endpoint: &str, arg: &str) -> bool {
    if endpoint == arg {
        return true;
    }
    let Some(rest) = endpoint.strip_prefix("tcp://") else {
        return false;
    };
    let authority = rest.split('?').next().unwrap_or(rest);
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    arg == authority || arg == host
}

pub fn run(a: Args) -> Result<()> {
    // Every app that lists the host.
    let mut apps = Vec::new();
    let mut endpoints = std::collections::BTreeSet::new();
    for name in spec::list(&a.site.apps) {
        let app = spec::find(&a.site.apps, &name)?;
        let hit: Vec<String> = app
            .hosts
            .iter()
            .map(|h| h.to_string())
            .filter(|h| names(h, &a.host))
            .collect();
        if !hit.is_empty() {
            endpoints.extend(hit);
            apps.push(name);
        }
    }
    let endpoint = match endpoints.len() {
        0 => bail!(
            "no app in {} lists a host `{}` (see the `hosts` of its specs)",
            a.site.apps.display(),
            a.host
        ),
        1 => endpoints.into_iter().next().expect("one"),
        _ => bail!(
            "`{}` names several hosts: {}; give the whole endpoint",
            a.host,
            endpoints.into_iter().collect::<Vec<_>>().join(", ")
        ),
    };
    let state = a.site.state_store()?;
    let mut list = DrainList::load(state.as_ref())?;
    if a.undo {
        if list.remove(&endpoint) {
            list.save(state.as_ref())?;
            eprintln!("{endpoint} is back in service: new instances may go there (nothing moved back)");
        } else {
            eprintln!("{endpoint} was not drained");
        }
        return Ok(());
    }
    let by = a
        .site
        .actor
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(strata::deploy::state::whoami);
    list.add(&endpoint, by, a.force);
    list.save(state.as_ref())?;
    eprintln!(
        "{endpoint} drained{}: moving the instances of {}",
        if a.force { " and fenced (--force)" } else { "" },
        apps.join(", ")
    );
    let mut failed = Vec::new();
    for name in &apps {
        let args = AppArgs {
            app: name.clone(),
            site: a.site.clone(),
        };
        let o = args.open()?;
        let orch = orchestrator(&args, &o)?;
        match orch.evacuate(&endpoint) {
            Ok(None) => eprintln!("{name}: no instance on {endpoint}"),
            Ok(Some(r)) => print_report(&args, Ok(r))?,
            Err(e) => {
                eprintln!("{name}: {e}");
                failed.push(name.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{endpoint} stays drained, but the instances of {} did not move (see above)",
            failed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_host_is_named_whole_or_by_its_address() {
        let e = "tcp://10.77.0.14:2376?tls=/var/tmp/lab/tls/client";
        for yes in [e, "10.77.0.14", "10.77.0.14:2376"] {
            assert!(super::names(e, yes), "{yes}");
        }
        for no in ["10.77.0.1", "10.77.0.140", "2376", "tcp://10.77.0.14"] {
            assert!(!super::names(e, no), "{no}");
        }
        assert!(super::names(
            "unix:///var/run/docker.sock",
            "unix:///var/run/docker.sock"
        ));
        assert!(!super::names("unix:///var/run/docker.sock", "docker.sock"));
    }
}
