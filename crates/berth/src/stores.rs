//! The configured backends, opened: the one place where the binary's commands turn
//! configuration into stores.

use std::sync::Arc;

use anyhow::Context;
use berth_meta::{PostgresStore, SqliteStore, Store};
use berth_registry::{Events, Registry};
use berth_storage::{BlobStore, FsBlobStore, S3BlobStore};

use crate::config::{Config, MetadataBackend, StorageDriver};

/// The registry over the configured stores, for a one-shot command (`gc`, `check`, `import`,
/// `retention`, …): a replica named `cli@<host>` among any servers sharing the stores, with
/// the read-only switch as it stands. The metadata store comes back too, for the audit.
pub async fn open_registry(config: &Config) -> anyhow::Result<(Registry, Arc<dyn Store>)> {
    let blobs = open_blobs(config, None).await?;
    let meta = open_metadata(config, None).await?;
    let mut registry_config = config.registry_config();
    registry_config.instance = format!("cli@{}", registry_config.instance);
    let registry = Registry::new(blobs, meta.clone(), registry_config, Events::default());
    registry.refresh_read_only().await?;
    Ok((registry, meta))
}

/// The metadata backend (`metadata.url` or the SQLite file), reporting its operations to
/// `observer` when given.
pub async fn open_metadata(
    config: &Config,
    observer: Option<Arc<dyn berth_meta::Observer>>,
) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config.metadata_backend() {
        MetadataBackend::Sqlite => {
            let path = config.sqlite_path();
            let mut store = SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening metadata at {}", path.display()))?;
            if let Some(o) = observer {
                store = store.observed_by(o);
            }
            Arc::new(store)
        }
        MetadataBackend::Postgres => {
            let mut store = PostgresStore::open(&config.metadata.url, config.postgres_options())
                .await
                .context("opening the PostgreSQL metadata database (metadata.url)")?;
            if let Some(o) = observer {
                store = store.observed_by(o);
            }
            tracing::info!("metadata in PostgreSQL");
            Arc::new(store)
        }
    })
}

/// The blob store (`storage.driver`), reporting its operations to `observer` when given.
pub async fn open_blobs(
    config: &Config,
    observer: Option<Arc<dyn berth_storage::Observer>>,
) -> anyhow::Result<Arc<dyn BlobStore>> {
    let root = &config.storage.root;
    Ok(match config.storage.driver {
        StorageDriver::Filesystem => {
            let mut store = FsBlobStore::open(root)
                .await
                .with_context(|| format!("opening blob storage at {}", root.display()))?;
            if let Some(o) = observer {
                store = store.observed_by(o);
            }
            Arc::new(store)
        }
        StorageDriver::S3 => {
            let s3 = &config.storage.s3;
            let mut store = S3BlobStore::new(&config.s3_config())
                .with_context(|| format!("opening S3 bucket {:?}", s3.bucket))?;
            // Wrong credentials, bucket or endpoint are the operator's to fix: say so now. A
            // store that is merely down may come back; /readyz reports it meanwhile.
            match store.check().await {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!("S3 bucket {:?} is not reachable yet: {e}", s3.bucket)
                }
                Err(e) => {
                    let endpoint = if s3.region_endpoint.is_empty() {
                        "AWS"
                    } else {
                        &s3.region_endpoint
                    };
                    return Err(e).with_context(|| {
                        format!("S3 bucket {:?} at {endpoint} refused Berth", s3.bucket)
                    });
                }
            }
            if let Some(o) = observer {
                store = store.observed_by(o);
            }
            tracing::info!(bucket = %s3.bucket, "blobs in S3");
            Arc::new(store)
        }
    })
}
