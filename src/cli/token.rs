//! `strata token`: registry credentials.

use std::path::PathBuf;

use anyhow::Result;

/// Manage the tokens `strata serve` accepts (pushes, the API, the dashboard).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    Create(Create),
}

/// Create a token and print it once (only its hash is stored).
///
/// Use it as a password with any user name (`--dest-creds NAME:TOKEN`,
/// `docker login`), as `Authorization: Bearer TOKEN`, or to log in to the
/// dashboard (/ui). A running server rereads the file when it changes, so
/// the token works at once.
///
/// Examples:
///   strata token create jenkins --data /var/lib/strata            # pushes, deploys (deploy role)
///   strata token create viewer --role read --data /var/lib/strata # reads the API, dashboard, /metrics
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Create {
    /// A name for the token, e.g. the CI job using it.
    pub name: String,
    /// The server's data directory (the file is DATA/credentials).
    #[arg(long, env = "STRATA_DATA", default_value = "strata-data")]
    pub data: PathBuf,
    /// Write to this credentials file instead.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// What the token may do: `read` (pull, read the API, the dashboard
    /// and /metrics), `deploy` (also push, prewarm, deploy, roll back),
    /// `admin` (also create tokens through the API).
    #[arg(long, default_value = "deploy")]
    pub role: strata::registry::auth::Role,
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Create(c) => {
            let path = c.credentials.unwrap_or_else(|| c.data.join("credentials"));
            let token = strata::registry::auth::create_token_with_role(&path, &c.name, c.role)?;
            println!("{token}");
            eprintln!(
                "{} token `{}` added to {}; it is not shown again",
                c.role,
                c.name,
                path.display()
            );
            Ok(())
        }
    }
}
