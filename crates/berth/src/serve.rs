//! `berth serve`: open the stores, build the API and serve it until SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context;
use berth_api::{ApiConfig, Authenticator, Registry};
use berth_auth::Htpasswd;
use berth_meta::SqliteStore;
use berth_storage::FsBlobStore;
use tracing_subscriber::EnvFilter;

use crate::compat::Notice;
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

pub fn run(config: Config, notices: Vec<Notice>) -> anyhow::Result<()> {
    init_logging(&config);
    for n in &notices {
        if n.unsupported {
            tracing::warn!("{}", n.message);
        } else {
            tracing::info!("{}", n.message);
        }
    }
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
    let auth = authenticator(&config)?;
    let registry = Registry::new(
        Arc::new(blobs),
        Arc::new(meta),
        ApiConfig {
            delete_enabled: config.storage.delete_enabled,
            max_manifest_bytes: usize::try_from(config.limits.max_manifest_bytes)
                .unwrap_or(usize::MAX),
        },
        auth,
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

/// How often the htpasswd file is checked for changes (a rotated Kubernetes Secret).
const HTPASSWD_POLL: std::time::Duration = std::time::Duration::from_secs(2);

fn authenticator(config: &Config) -> anyhow::Result<Authenticator> {
    if config.auth.mode != "htpasswd" {
        return Ok(Authenticator::Open);
    }
    let file = Arc::new(Htpasswd::open(&config.auth.htpasswd_path)?);
    let watched = file.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HTPASSWD_POLL);
        loop {
            tick.tick().await;
            match watched.reload_if_changed() {
                Ok(true) => tracing::info!(path = %watched.path().display(), "htpasswd reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!("htpasswd not reloaded, previous users stay: {e}"),
            }
        }
    });
    tracing::info!(path = %config.auth.htpasswd_path, "basic authentication with htpasswd");
    Ok(Authenticator::Htpasswd {
        realm: config.auth.realm.clone(),
        file,
    })
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
