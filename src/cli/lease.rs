//! `strata lease`: the cluster's IP leases (what deploys use to keep an
//! instance's address across redeploys), for inspection and repair.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use strata::deploy::spec;
use strata::lease::{self, Pool};

/// Take, release and list IP leases of a pool.
///
/// An instance keeps its address across redeploys because it holds a
/// lease on it; the lease goes only when the instance is removed. With
/// --store etcd://HOST:PORT several orchestrators share the leases safely
/// (each lease is one etcd transaction); the default is a file under --data.
///
/// Examples:
///   strata lease list                 # every app's pool, from deploy/apps
///   strata lease list shop            # the pool of app shop
///   strata lease take web --range 10.90.0.10-10.90.0.209 shop-1 shop-2
///   strata lease list web --range 10.90.0.10-10.90.0.209 --store etcd://127.0.0.1:2379
///   strata lease release web --range 10.90.0.10-10.90.0.209 shop-2
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Args)]
pub struct PoolArgs {
    /// The pool's name.
    pub pool: String,
    /// Its addresses, FIRST-LAST (outside the engine's dynamic range).
    #[arg(long)]
    pub range: String,
    /// `file` or `etcd://HOST:PORT[,HOST:PORT…]`.
    #[arg(long, env = "STRATA_LEASES", default_value = "file")]
    pub store: String,
    /// Data directory for the file store.
    #[arg(long, env = "STRATA_DATA", default_value = "strata-data")]
    pub data: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Lease an address to each OWNER (the one it holds, or a new one);
    /// prints `OWNER IP` lines.
    Take {
        #[command(flatten)]
        pool: PoolArgs,
        #[arg(required = true)]
        owners: Vec<String>,
    },
    /// Free the addresses of OWNERs.
    Release {
        #[command(flatten)]
        pool: PoolArgs,
        #[arg(required = true)]
        owners: Vec<String>,
    },
    /// Print `IP OWNER POOL` for every lease of every app's pool (read
    /// from the app specs) or of one app's; with --range, `IP OWNER` for
    /// the pool given by name.
    List {
        /// An app (its pool comes from its spec), or with --range a pool.
        name: Option<String>,
        /// The pool's addresses, FIRST-LAST: NAME is a pool, not an app.
        #[arg(long, requires = "name")]
        range: Option<String>,
        /// Folder of app specs.
        #[arg(long, env = "STRATA_APPS", default_value = "deploy/apps")]
        apps: PathBuf,
        /// `file` or `etcd://HOST:PORT[,HOST:PORT…]`.
        #[arg(long, env = "STRATA_LEASES", default_value = "file")]
        store: String,
        /// Data directory for the file store.
        #[arg(long, env = "STRATA_DATA", default_value = "strata-data")]
        data: PathBuf,
    },
}

pub fn run(a: Args) -> Result<()> {
    let open =
        |p: &PoolArgs| -> Result<_> { Ok((Pool::new(&p.pool, &p.range)?, lease::open(&p.store, &p.data)?)) };
    match a.what {
        What::Take { pool, owners } => {
            let (pool, store) = open(&pool)?;
            for o in owners {
                let ip = store.acquire(&pool, &o)?;
                println!("{o} {ip}");
            }
        }
        What::Release { pool, owners } => {
            let (pool, store) = open(&pool)?;
            for o in owners {
                if !store.release(&pool, &o)? {
                    eprintln!("{o} held no address in {}", pool.name);
                }
            }
        }
        What::List {
            name,
            range,
            apps,
            store,
            data,
        } => {
            let named = range.is_some();
            let pools = match (name, range) {
                (Some(n), Some(r)) => vec![Pool::new(&n, &r)?],
                (Some(app), None) => vec![spec::find(&apps, &app)?.network.pool],
                (None, _) => {
                    let mut pools: Vec<Pool> = Vec::new();
                    for app in spec::list(&apps) {
                        let p = spec::find(&apps, &app)
                            .with_context(|| format!("reading the pools of {}", apps.display()))?
                            .network
                            .pool;
                        if !pools.iter().any(|q| q.name == p.name) {
                            pools.push(p);
                        }
                    }
                    if pools.is_empty() {
                        bail!("no app specs in {}: name a pool with --range", apps.display());
                    }
                    pools
                }
            };
            let store = lease::open(&store, &data)?;
            for pool in pools {
                for (ip, owner) in store.list(&pool)? {
                    if named {
                        println!("{ip} {owner}");
                    } else {
                        println!("{ip} {owner} {}", pool.name);
                    }
                }
            }
        }
    }
    Ok(())
}
