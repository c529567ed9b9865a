//! `berth serve`: open the stores, build the API and serve it until SIGTERM or Ctrl-C.

use std::sync::Arc;

use anyhow::Context;
use berth_api::observe::Metrics;
use berth_api::workers::{FirstRun, Workers};
use berth_api::{Api, ApiConfig, AuditLog, Authenticator, TokenAuth};
use berth_auth::{Htpasswd, TokenIssuer, TokenVerifier};
use berth_meta::Store;
use tracing_subscriber::EnvFilter;

use crate::compat::Notice;
use crate::config::{AuthMode, Config, LogFormat, MetadataBackend, StorageDriver};
use crate::{server, stores, tls};

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: `kubectl logs` and log files would show the escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log.format == LogFormat::Json {
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
    let metrics = Arc::new(Metrics::default());
    let blobs = stores::open_blobs(&config, Some(metrics.store_observer("blob"))).await?;
    let meta = stores::open_metadata(&config, Some(metrics.store_observer("metadata"))).await?;
    let workers = Arc::new(Workers::default());
    let auth = authenticator(&config, meta.clone(), &workers).await?;
    let audit = AuditLog::spawn(
        meta.clone(),
        audit_stream(&config.audit.stream)?,
        config.audit.pulls,
        berth_api::audit::FOLD_WINDOW,
    );
    let pruned = meta.clone();
    let audit_age = std::time::Duration::from_secs(config.audit.retention_days * 86_400);
    let max_events = config.audit.max_events;
    workers.spawn("audit_prune", HOURLY, FirstRun::Now, move || {
        let pruned = pruned.clone();
        async move {
            match AuditLog::prune(&*pruned, audit_age, max_events).await {
                Ok(0) => Ok(String::new()),
                Ok(n) => Ok(format!("pruned {n} old audit events")),
                Err(e) => Err(format!("pruning the audit log failed: {e}")),
            }
        }
    });
    let mut api = Api::new(
        blobs,
        meta.clone(),
        config.registry_config(),
        ApiConfig {
            tls: !config.tls.certificate.is_empty(),
            login_limits: berth_auth::LoginLimits {
                per_user_and_address: config.auth.failed_login_limit.max(1),
                per_address: config.auth.failed_login_address_limit.max(1),
                window: std::time::Duration::from_secs(config.auth.failed_login_window_seconds),
            },
            body_read_timeout: std::time::Duration::from_secs(
                config.server.body_read_timeout_seconds.max(1),
            ),
            backends: backends(&config),
        },
        auth,
        audit,
        metrics,
    );
    if !config.tracing.otlp_endpoint.is_empty() {
        let exporter = berth_api::otlp::TraceExporter::spawn(
            &config.tracing.otlp_endpoint,
            &config.tracing.service_name,
        )
        .map_err(anyhow::Error::msg)?;
        tracing::info!(endpoint = %config.tracing.otlp_endpoint, "exporting request spans over OTLP");
        api.traces = Some(exporter);
    }
    api.workers = workers.clone();
    let api = Arc::new(api);
    if config.gc.interval_seconds > 0 {
        let collector = api.registry.clone();
        let every = std::time::Duration::from_secs(config.gc.interval_seconds);
        let grace = std::time::Duration::from_secs(config.gc.grace_seconds);
        workers.spawn("gc", every, FirstRun::AfterPeriod, move || {
            let collector = collector.clone();
            async move {
                match collector.lead("gc", every * LEASE_PERIODS).await {
                    Ok(true) => {}
                    Ok(false) => return Ok("another replica collects garbage".into()),
                    // A full disk cannot record the lease; collecting is what frees it.
                    Err(e) if e.is_storage_full() => {}
                    Err(e) => return Err(format!("garbage collection lease: {e}")),
                }
                if collector.read_only().is_some() {
                    return Ok("read-only mode: garbage collection waits".into());
                }
                match collector.collect_garbage(grace).await {
                    Ok(r) if r.blobs_deleted > 0 => Ok(format!(
                        "garbage collection freed {} blobs, {} bytes",
                        r.blobs_deleted, r.bytes_freed
                    )),
                    Ok(_) => Ok(String::new()),
                    Err(e) => Err(format!("garbage collection failed: {e}")),
                }
            }
        });
    }
    if config.retention.interval_seconds > 0 {
        let keeper = api.registry.clone();
        let every = std::time::Duration::from_secs(config.retention.interval_seconds);
        workers.spawn("retention", every, FirstRun::AfterPeriod, move || {
            let keeper = keeper.clone();
            async move {
                if keeper.read_only().is_some() {
                    return Ok("read-only mode: retention waits".into());
                }
                match keeper.lead("retention", every * LEASE_PERIODS).await {
                    Ok(true) => {}
                    Ok(false) => return Ok("another replica applies retention".into()),
                    Err(e) => return Err(format!("retention lease: {e}")),
                }
                let actor = berth_registry::Actor::new("retention", "schedule");
                match keeper.run_all_retention(&actor).await {
                    Ok(reports) => {
                        let deleted: usize = reports.iter().map(|r| r.deleted.len()).sum();
                        Ok(if deleted == 0 {
                            String::new()
                        } else {
                            format!("retention deleted {deleted} manifests")
                        })
                    }
                    Err(e) => Err(format!("retention failed: {e}")),
                }
            }
        });
    }
    let recorder = api.registry.clone();
    workers.spawn("pull_times", PULL_FLUSH, FirstRun::AfterPeriod, move || {
        let recorder = recorder.clone();
        async move {
            recorder
                .flush_pulls()
                .await
                .map(|_| String::new())
                .map_err(|e| format!("recording pull times: {e}"))
        }
    });
    let purger = api.registry.clone();
    let max_age = std::time::Duration::from_secs(config.storage.upload_purge_hours * 3600);
    workers.spawn("upload_purge", HOURLY, FirstRun::Now, move || {
        let purger = purger.clone();
        async move {
            match purger.lead("upload_purge", HOURLY * LEASE_PERIODS).await {
                Ok(true) => {}
                Ok(false) => return Ok("another replica purges uploads".into()),
                // A full disk cannot record the lease; purging is what frees it.
                Err(e) if e.is_storage_full() => {}
                Err(e) => return Err(format!("upload purge lease: {e}")),
            }
            if purger.read_only().is_some() {
                return Ok("read-only mode: the upload purge waits".into());
            }
            match purger.purge_uploads(max_age).await {
                Ok(0) => Ok(String::new()),
                Ok(n) => Ok(format!("discarded {n} abandoned uploads")),
                Err(e) => Err(format!("purging abandoned uploads failed: {e}")),
            }
        }
    });
    follow_read_only(&api, &workers).await;
    import_on_first_start(&api, &workers).await;
    workers.spawn(
        "memory_trim",
        MEMORY_TRIM,
        FirstRun::AfterPeriod,
        || async {
            tokio::task::spawn_blocking(crate::trim_malloc)
                .await
                .map(|_| String::new())
                .map_err(|e| format!("trimming the allocator: {e}"))
        },
    );
    let sessions = api.clone();
    workers.spawn("session_prune", HOURLY, FirstRun::Now, move || {
        let sessions = sessions.clone();
        async move {
            match sessions.prune_sessions().await {
                Ok(0) => Ok(String::new()),
                Ok(n) => Ok(format!("ended {n} expired UI sessions")),
                Err(e) => Err(format!("pruning UI sessions failed: {e}")),
            }
        }
    });
    let app = berth_api::router_with(api.clone(), berth_ui::router());
    if !config.server.metrics_addr.is_empty() {
        let metrics = axum::Router::new()
            .route("/metrics", axum::routing::get(berth_api::observe::metrics))
            .with_state(api.clone());
        let listener = tokio::net::TcpListener::bind(&config.server.metrics_addr)
            .await
            .with_context(|| format!("listening on {} for metrics", config.server.metrics_addr))?;
        tokio::spawn(async move { axum::serve(listener, metrics).await });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections, finishing requests in flight");
        let _ = stop_tx.send(true);
    });
    let drain = std::time::Duration::from_secs(config.server.drain_seconds);
    let listener = tokio::net::TcpListener::bind(&config.server.addr)
        .await
        .with_context(|| format!("listening on {}", config.server.addr))?;
    let local = listener.local_addr()?;
    let scheme = if config.tls.certificate.is_empty() {
        "http"
    } else {
        "https"
    };
    tracing::info!(addr = %local, scheme, root = %config.storage.root.display(), "berth is ready");
    let tls_config = if config.tls.certificate.is_empty() {
        None
    } else {
        let cert =
            tls::ReloadingCert::load(config.tls.certificate.as_ref(), config.tls.key.as_ref())?;
        watch(
            &workers,
            "tls_reload",
            cert.clone(),
            |c| c.reload_if_changed(),
            "TLS certificate",
        );
        Some(tls::server_config(cert)?)
    };
    let s = &config.server;
    let limits = server::Limits {
        header_read: std::time::Duration::from_secs(s.header_read_timeout_seconds.max(1)),
        tls_handshake: std::time::Duration::from_secs(s.tls_handshake_timeout_seconds.max(1)),
        idle: std::time::Duration::from_secs(s.idle_timeout_seconds.max(1)),
        max_connections: match s.max_connections {
            0 => server::default_max_connections(),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
    };
    tracing::info!(
        max_connections = limits.max_connections,
        "connection limits"
    );
    // A plain line on stdout that scripts and tests can wait for.
    println!("berth listening on {scheme}://{local}");
    tokio::select! {
        _ = server::serve(listener, app, tls_config, limits, stop_rx.clone()) => {}
        _ = drain_over(stop_rx, drain) => {
            tracing::warn!("drain time over; exiting with requests still in flight (their uploads resume after restart)");
        }
    }
    workers.shutdown().await;
    tracing::info!("berth stopped");
    Ok(())
}

/// Re-checks a watched file every [`FILE_POLL`] as the worker `name`, logging reloads; a file
/// that fails to load keeps the previous version and counts as the worker's failure.
fn watch<T: Send + Sync + 'static, E: std::fmt::Display>(
    workers: &Workers,
    name: &'static str,
    target: Arc<T>,
    reload: impl Fn(&T) -> Result<bool, E> + Send + Sync + 'static,
    what: &'static str,
) {
    let reload = Arc::new(reload);
    workers.spawn(name, FILE_POLL, FirstRun::AfterPeriod, move || {
        let (target, reload) = (target.clone(), reload.clone());
        async move {
            match reload(&target) {
                Ok(true) => Ok(format!("{what} reloaded")),
                Ok(false) => Ok(String::new()),
                Err(e) => Err(format!("{what} not reloaded, the previous one stays: {e}")),
            }
        }
    });
}

/// Reads the run-time read-only switch now and every [`FILE_POLL`] after, so a switch made
/// through another replica's admin API or `berth read-only` holds here within two seconds.
async fn follow_read_only(api: &Arc<Api>, workers: &Workers) {
    if let Err(e) = api.registry.refresh_read_only().await {
        tracing::warn!("could not read the read-only switch: {e}");
    }
    if let Some(reason) = api.registry.read_only() {
        tracing::warn!("read-only mode: writes are refused ({reason})");
    }
    let registry = api.registry.clone();
    workers.spawn(
        "read_only_refresh",
        FILE_POLL,
        FirstRun::AfterPeriod,
        move || {
            let registry = registry.clone();
            async move {
                let before = registry.read_only();
                registry
                    .refresh_read_only()
                    .await
                    .map_err(|e| format!("reading the read-only switch: {e}"))?;
                Ok(match (before, registry.read_only()) {
                    (None, Some(reason)) => format!("read-only mode on: {reason}"),
                    (Some(_), None) => "read-only mode off: writes are accepted".into(),
                    _ => String::new(),
                })
            }
        },
    );
}

/// The seed's migration: a `registry:2` data directory (or bucket) served by Berth for the
/// first time is imported in the background, `/readyz` false until it is done, so every old
/// image pulls after the switch with no manual step. One replica imports (the lease); an
/// import that failed or stopped halfway (a restart) is resumed every [`IMPORT_RETRY`].
async fn import_on_first_start(api: &Arc<Api>, workers: &Workers) {
    match api.registry.distribution_import_due().await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!("could not tell whether registry:2 data needs importing: {e}");
            return;
        }
    }
    tracing::info!("found registry:2 repositories and no metadata: importing them");
    api.readiness.hold("importing registry:2's repositories");
    let api = api.clone();
    workers.spawn(
        "distribution_import",
        IMPORT_RETRY,
        FirstRun::Now,
        move || {
            let api = api.clone();
            async move {
                // Ready once the import is done (here or on another replica); a failed one is
                // resumed each period, and until then old images would be missing.
                let outcome = import_if_due(&api.registry).await;
                if outcome.is_ok()
                    && !api
                        .registry
                        .distribution_import_unfinished()
                        .await
                        .unwrap_or(true)
                {
                    api.readiness.ready();
                }
                outcome
            }
        },
    );
}

async fn import_if_due(registry: &berth_registry::Registry) -> Result<String, String> {
    match registry.distribution_import_due().await {
        Ok(true) => {}
        Ok(false) => return Ok(String::new()),
        Err(e) => return Err(format!("registry:2 import: {e}")),
    }
    match registry
        .lead("distribution_import", IMPORT_RETRY * LEASE_PERIODS)
        .await
    {
        Ok(true) => {}
        Ok(false) => return Ok("another replica imports registry:2's repositories".into()),
        Err(e) => return Err(format!("registry:2 import lease: {e}")),
    }
    let actor = berth_registry::Actor::new("berth", "startup");
    match registry.import_distribution(&actor, None, |_| {}).await {
        Ok(report) => {
            for skipped in &report.skipped {
                tracing::warn!(item = %skipped.item, "registry:2 import skipped it: {}", skipped.reason);
            }
            Ok(format!(
                "imported registry:2's repositories: {}",
                berth_registry::import::summary(&report)
            ))
        }
        Err(e) => Err(format!("importing registry:2's repositories failed: {e}")),
    }
}

/// How often the hourly workers (upload purge, audit pruning) run; the first run is at startup.
const HOURLY: std::time::Duration = std::time::Duration::from_secs(3600);
/// A replica that runs shared background work holds its lease for this many of the task's
/// periods: it renews it every run, and another replica takes over this long after the last.
const LEASE_PERIODS: u32 = 3;

/// How often an unfinished registry:2 import is tried again.
const IMPORT_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// How often freed memory goes back to the kernel (`crate::trim_malloc`).
const MEMORY_TRIM: std::time::Duration = std::time::Duration::from_secs(5);

/// How often noted pulls are written to the metadata store (retention's pull times).
const PULL_FLUSH: std::time::Duration = std::time::Duration::from_secs(30);

/// How often watched files (htpasswd, TLS certificate) are checked for changes: a rotated
/// Kubernetes Secret takes effect within this time, without a restart.
const FILE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Where audit events are streamed as JSON lines, besides the metadata store.
fn audit_stream(target: &str) -> anyhow::Result<Option<Box<dyn std::io::Write + Send>>> {
    Ok(match target {
        "" => None,
        "stdout" => Some(Box::new(std::io::stdout())),
        path => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the audit stream {path}"))?,
        )),
    })
}

/// What the status page says this server runs on (never credentials).
fn backends(config: &Config) -> Vec<(String, String)> {
    let storage = match config.storage.driver {
        StorageDriver::Filesystem => format!("filesystem {}", config.storage.root.display()),
        StorageDriver::S3 => format!("s3 {}", config.storage.s3.bucket),
    };
    let metadata = match config.metadata_backend() {
        MetadataBackend::Sqlite => format!("sqlite {}", config.sqlite_path().display()),
        MetadataBackend::Postgres => "postgresql".to_owned(),
    };
    vec![
        ("storage".into(), storage),
        ("metadata".into(), metadata),
        (
            "auth".into(),
            format!("{:?}", config.auth.mode).to_lowercase(),
        ),
    ]
}

async fn authenticator(
    config: &Config,
    store: Arc<dyn Store>,
    workers: &Workers,
) -> anyhow::Result<Authenticator> {
    let htpasswd = if config.auth.htpasswd_path.is_empty() {
        None
    } else {
        let file = Arc::new(Htpasswd::open(&config.auth.htpasswd_path)?);
        watch(
            workers,
            "htpasswd_reload",
            file.clone(),
            |f| f.reload_if_changed(),
            "htpasswd file",
        );
        Some(file)
    };
    match (config.auth.mode, htpasswd) {
        (AuthMode::Htpasswd, Some(file)) => {
            tracing::info!(path = %config.auth.htpasswd_path, "basic authentication with htpasswd");
            Ok(Authenticator::Htpasswd {
                realm: config.auth.realm.clone(),
                file,
            })
        }
        (AuthMode::Token, htpasswd) => {
            let a = &config.auth;
            bootstrap_admin(&*store, &a.bootstrap_admin_password).await?;
            let issuer = TokenIssuer::open(
                &config.token_key_path(),
                &a.token_issuer,
                &a.token_service,
                std::time::Duration::from_secs(a.token_ttl_seconds.max(30)),
            )?;
            let external = if a.external_public_key_path.is_empty() {
                None
            } else {
                let pem = std::fs::read(&a.external_public_key_path)
                    .with_context(|| format!("reading {}", a.external_public_key_path))?;
                Some(TokenVerifier::from_public_pem(
                    &pem,
                    &a.external_issuer,
                    &a.token_service,
                )?)
            };
            let realm = (!a.token_realm.is_empty()).then(|| a.token_realm.clone());
            let token = Arc::new(TokenAuth::new(issuer, external, htpasswd, store, realm).await?);
            // Changes made by the CLI or another replica reach this process within FILE_POLL.
            let watched = token.clone();
            workers.spawn(
                "access_refresh",
                FILE_POLL,
                FirstRun::AfterPeriod,
                move || {
                    let watched = watched.clone();
                    async move {
                        watched
                            .refresh()
                            .await
                            .map(|_| String::new())
                            .map_err(|e| format!("reloading users and projects failed: {e}"))
                    }
                },
            );
            tracing::info!(service = %a.token_service, "token authentication with users, projects and robots");
            Ok(Authenticator::Token(token))
        }
        _ => Ok(Authenticator::Open),
    }
}

/// Token mode needs a first admin; with no user at all, `bootstrap_admin_password` makes one.
async fn bootstrap_admin(store: &dyn Store, password: &str) -> anyhow::Result<()> {
    if password.is_empty() || !store.access_snapshot().await?.users.is_empty() {
        return Ok(());
    }
    berth_auth::admin::put_user(store, "admin", password, true).await?;
    tracing::info!("created the first admin user, admin");
    Ok(())
}

/// Resolves once shutdown was asked for.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Resolves `drain` after shutdown was asked for.
async fn drain_over(rx: tokio::sync::watch::Receiver<bool>, drain: std::time::Duration) {
    stopped(rx).await;
    tokio::time::sleep(drain).await;
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
