//! `berth read-only` and `berth repository rm`: operating the registry from the command line,
//! beside running servers or without one. Both go through the metadata store the servers
//! share, so every replica follows (the read-only switch within two seconds).

use anyhow::Context;
use berth_oci::RepositoryName;
use berth_registry::Actor;
use clap::Subcommand;

use crate::access_cmd::audit_cli;
use crate::command::runtime;
use crate::config::Config;
use crate::{stores, StoreArgs};

#[derive(Subcommand)]
pub enum ReadOnlyCommand {
    /// Refuse every write (405 UNSUPPORTED with the reason); pulls keep working.
    On {
        /// Shown to clients whose writes are refused.
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Accept writes again (unless storage.read_only keeps read-only mode on).
    Off {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Whether writes are refused, and why.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl ReadOnlyCommand {
    pub fn store(&self) -> &StoreArgs {
        match self {
            ReadOnlyCommand::On { store, .. }
            | ReadOnlyCommand::Off { store }
            | ReadOnlyCommand::Status { store } => store,
        }
    }
}

pub fn read_only(config: Config, command: ReadOnlyCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (registry, meta) = stores::open_registry(&config).await?;
        match &command {
            ReadOnlyCommand::On { reason, .. } => {
                registry.switch_read_only(Some(reason)).await?;
                audit_cli(&*meta, "read_only.on", "registry", reason).await?;
            }
            ReadOnlyCommand::Off { .. } => {
                registry.switch_read_only(None).await?;
                audit_cli(&*meta, "read_only.off", "registry", "").await?;
            }
            ReadOnlyCommand::Status { .. } => registry.refresh_read_only().await?,
        }
        match registry.read_only() {
            Some(reason) => println!("read-only: {reason}"),
            None => println!("writable"),
        }
        Ok(())
    })
}

/// Deletes a whole repository: tags, manifests and blob links; its bytes go with the next
/// garbage collection.
pub fn remove_repository(config: Config, name: &str) -> anyhow::Result<()> {
    let repository: RepositoryName = name
        .parse()
        .with_context(|| format!("{name:?} is not a repository name"))?;
    runtime()?.block_on(async {
        let (registry, meta) = stores::open_registry(&config).await?;
        registry
            .delete_repository(&Actor::new("cli", "local"), &repository)
            .await
            .with_context(|| format!("deleting {repository}"))?;
        audit_cli(&*meta, "repository.delete", repository.as_str(), "").await?;
        eprintln!("deleted {repository}; its blobs go with the next garbage collection");
        Ok(())
    })
}
