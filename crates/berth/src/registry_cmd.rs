//! `berth read-only` and `berth repository rm`: operating the registry from the command line,
//! beside running servers or without one. Both go through the metadata store the servers
//! share, so every replica follows (the read-only switch within two seconds).

use std::sync::Arc;

use anyhow::Context;
use berth_meta::Store;
use berth_oci::RepositoryName;
use berth_registry::{Actor, Events, Registry};
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

/// The registry over the configured stores, and the metadata store itself for the audit.
async fn open(config: &Config) -> anyhow::Result<(Registry, Arc<dyn Store>)> {
    let blobs = stores::open_blobs(config, None).await?;
    let meta = stores::open_metadata(config, None).await?;
    let registry = Registry::new(
        blobs,
        meta.clone(),
        config.registry_config(),
        Events::default(),
    );
    Ok((registry, meta))
}

pub fn read_only(config: Config, command: ReadOnlyCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (registry, meta) = open(&config).await?;
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
        let (registry, meta) = open(&config).await?;
        registry.refresh_read_only().await?;
        registry
            .delete_repository(&Actor::new("cli", "local"), &repository)
            .await
            .with_context(|| format!("deleting {repository}"))?;
        audit_cli(&*meta, "repository.delete", repository.as_str(), "").await?;
        eprintln!("deleted {repository}; its blobs go with the next garbage collection");
        Ok(())
    })
}
