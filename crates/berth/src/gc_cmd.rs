//! `berth gc [--dry-run]`: one garbage collection from the command line, beside a running
//! server or without one. It coordinates with servers through the metadata store like any
//! replica does, so running it while serving is safe.

use std::time::Duration;

use crate::command::runtime;
use crate::config::Config;
use crate::stores;

pub fn run(config: Config, dry_run: bool, grace: Option<u64>) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (registry, _) = stores::open_registry(&config).await?;
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

/// `berth gc --history`: the latest collections of every replica and the CLI, newest first.
pub fn history(config: Config, limit: u32) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (registry, _) = stores::open_registry(&config).await?;
        println!("started	seconds	instance	blobs	bytes	outcome");
        for run in registry.gc_history(limit).await? {
            let outcome = if run.error.is_empty() {
                "ok".to_owned()
            } else {
                format!("failed: {}", run.error)
            };
            println!(
                "{}	{}	{}	{}	{}	{outcome}",
                run.started_at,
                run.finished_at - run.started_at,
                run.instance,
                run.blobs_deleted,
                run.bytes_freed
            );
        }
        Ok(())
    })
}
