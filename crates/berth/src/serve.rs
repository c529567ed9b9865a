//! `berth serve`: open the stores, build the API and serve it until SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context;
use berth_api::{ApiConfig, Registry};
use berth_meta::SqliteStore;
use berth_storage::FsBlobStore;
use tracing_subscriber::EnvFilter;

use crate::config::Config;

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn run(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let blobs = FsBlobStore::open(&config.storage.root)
        .await
        .with_context(|| format!("opening blob storage at {}", config.storage.root.display()))?;
    let sqlite_path = config.sqlite_path();
    let meta = SqliteStore::open(&sqlite_path)
        .await
        .with_context(|| format!("opening metadata at {}", sqlite_path.display()))?;
    let registry = Registry::new(
        Arc::new(blobs),
        Arc::new(meta),
        ApiConfig {
            delete_enabled: config.storage.delete_enabled,
            max_manifest_bytes: usize::try_from(config.limits.max_manifest_bytes)
                .unwrap_or(usize::MAX),
        },
    );
    let app = berth_api::router(Arc::new(registry));
    let listener = tokio::net::TcpListener::bind(&config.server.addr)
        .await
        .with_context(|| format!("listening on {}", config.server.addr))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, root = %config.storage.root.display(), "berth is ready");
    // A plain line on stdout that scripts and tests can wait for.
    println!("berth listening on http://{local}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("berth stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
