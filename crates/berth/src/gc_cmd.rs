//! `berth gc [--dry-run]`: one garbage collection from the command line, beside a running
//! server or without one. It coordinates with servers through the metadata store like any
//! replica does, so running it while serving is safe.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_meta::SqliteStore;
use berth_registry::{Events, Registry};
use berth_storage::FsBlobStore;

use crate::config::Config;

pub fn run(config: Config, dry_run: bool, grace: Option<u64>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let blobs = FsBlobStore::open(&config.storage.root)
            .await
            .with_context(|| {
                format!("opening blob storage at {}", config.storage.root.display())
            })?;
        let sqlite = config.sqlite_path();
        let meta = SqliteStore::open(&sqlite)
            .await
            .with_context(|| format!("opening metadata at {}", sqlite.display()))?;
        let registry = Registry::new(
            Arc::new(blobs),
            Arc::new(meta),
            config.registry_config(),
            Events::default(),
        );
        let grace = Duration::from_secs(grace.unwrap_or(config.gc.grace_seconds));
        let report = if dry_run {
            registry.garbage_dry_run(grace).await?
        } else {
            registry.collect_garbage(grace).await?
        };
        for (digest, size) in &report.removed {
            println!("{digest}\t{size}");
        }
        let verb = if dry_run { "would remove" } else { "removed" };
        eprintln!(
            "{verb} {} blobs, {} bytes (grace {} s)",
            report.blobs_deleted,
            report.bytes_freed,
            grace.as_secs()
        );
        Ok(())
    })
}
