//! `berth import`: indexes a `registry:2` registry (CNCF Distribution's data directory or S3
//! bucket) into the metadata store, so Berth serves every image it held
//! (`berth_registry::import`). In place (no `--from`, or `--from` naming the configured
//! storage) it copies nothing; from elsewhere it copies each blob, verified, first.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use berth_registry::Actor;
use berth_storage::{BlobStore, FsBlobStore};

use crate::command::{runtime, Progress};
use crate::config::{Config, StorageDriver};
use crate::stores;

pub fn run(config: Config, from: Option<&Path>) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let source = match from {
            Some(path) => open_source(&config, path).await?,
            None => None,
        };
        let (registry, meta) = stores::open_registry(&config).await?;
        let progress = Progress::on_terminal();
        let actor = Actor::new("cli", "local");
        let report = registry
            .import_distribution(&actor, source.as_deref(), |p| {
                progress.show(format_args!(
                    "repositories {:>8} / {:<8} {:>14} bytes copied",
                    p.repositories_done, p.repositories_total, p.copied_bytes
                ))
            })
            .await
            .context("importing")?;
        progress.done();
        for skipped in &report.skipped {
            println!("skipped\t{}\t{}", skipped.item, skipped.reason);
        }
        let summary = berth_registry::import::summary(&report);
        println!("imported\t{summary}");
        crate::access_cmd::audit_cli(&*meta, "import", "registry:2", &summary).await?;
        eprintln!(
            "imported registry:2's repositories; `berth serve` with this configuration serves them"
        );
        Ok(())
    })
}

/// The store `--from` names: a directory holding Distribution's tree, or a configuration
/// file whose `[storage]` does (an S3 bucket, say). `None` when that is the configured
/// storage itself: the import is in place.
async fn open_source(config: &Config, path: &Path) -> anyhow::Result<Option<Arc<dyn BlobStore>>> {
    if path.is_file() {
        let (source, _) = Config::load(Some(path), &[])
            .with_context(|| format!("reading the source storage from {}", path.display()))?;
        if source.storage.driver == config.storage.driver
            && source.storage.root == config.storage.root
            && source.storage.s3 == config.storage.s3
        {
            return Ok(None);
        }
        return Ok(Some(stores::open_blobs(&source, None).await?));
    }
    let index = path.join("docker/registry/v2/repositories");
    anyhow::ensure!(
        index.is_dir(),
        "no registry:2 data under {} (expected {})",
        path.display(),
        index.display()
    );
    let same = config.storage.driver == StorageDriver::Filesystem
        && std::fs::canonicalize(path).ok() == std::fs::canonicalize(&config.storage.root).ok();
    if same {
        return Ok(None);
    }
    Ok(Some(Arc::new(FsBlobStore::existing(path))))
}
