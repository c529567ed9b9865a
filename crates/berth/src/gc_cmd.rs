//! `berth gc [--dry-run]`: one garbage collection from the command line, beside a running
//! server or without one. It coordinates with servers through the metadata store like any
//! replica does, so running it while serving is safe.

use std::time::Duration;

use berth_registry::{Events, Registry};

use crate::command::runtime;
use crate::config::Config;
use crate::stores;

pub fn run(config: Config, dry_run: bool, grace: Option<u64>) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let blobs = stores::open_blobs(&config, None).await?;
        let meta = stores::open_metadata(&config, None).await?;
        let registry = Registry::new(blobs, meta, config.registry_config(), Events::default());
        registry.refresh_read_only().await?;
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
