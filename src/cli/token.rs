//! `strata token`: registry credentials.

use std::path::PathBuf;

use anyhow::Result;

/// Manage the tokens `strata serve` accepts for pushes.
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
/// `docker login`) or as `Authorization: Bearer TOKEN`. A running server
/// reads new tokens when it restarts.
#[derive(Debug, clap::Args)]
pub struct Create {
    /// A name for the token, e.g. the CI job using it.
    pub name: String,
    /// The server's data directory (the file is DATA/credentials).
    #[arg(long, env = "STRATA_DATA", default_value = "strata-data")]
    pub data: PathBuf,
    /// Write to this credentials file instead.
    #[arg(long)]
    pub credentials: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    match a.command {
        Command::Create(c) => {
            let path = c.credentials.unwrap_or_else(|| c.data.join("credentials"));
            let token = strata::registry::auth::create_token(&path, &c.name)?;
            println!("{token}");
            eprintln!(
                "token `{}` added to {}; it is not shown again",
                c.name,
                path.display()
            );
            Ok(())
        }
    }
}
