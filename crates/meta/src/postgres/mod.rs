//! The scale-out backend: PostgreSQL, through a pool of `tokio-postgres` connections.
//!
//! Every write runs in one transaction, retried from the start when PostgreSQL reports a
//! serialization failure or a deadlock. Most are `SERIALIZABLE`, which gives each write what
//! SQLite's single writer gives it — the reference check of a manifest push and the re-check of
//! garbage collection's mark see a state no concurrent write changes under them — so the rules
//! are written once, as for SQLite, and replicas may write at the same time. The writes every
//! push of a shared layer or of one busy user repeats on the same rows (`reserve_blob`,
//! `add_blob`, `create_upload`) run at `READ COMMITTED` with the check inside the upsert or
//! behind an advisory lock instead (see `registry.rs`): serializable, they failed round after
//! round under 32 parallel pushes. Reads run as single statements outside a transaction, except the access
//! snapshot, which reads in one repeatable-read transaction so it matches its generation.
//!
//! Migrations are the shared ones (`migrations/`), applied at startup under an advisory lock,
//! so replicas starting together apply each one once.
//!
//! Writes that change a repository's manifests or tags `NOTIFY` [`CHANGES_CHANNEL`] with the
//! repository's name in their transaction, so the notice goes out exactly when they commit;
//! every process that watches changes holds one connection that `LISTEN`s, so caches of all
//! replicas drop the repository's entries within milliseconds instead of waiting out a TTL.

mod access;
mod registry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use deadpool_postgres::{
    Client, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::migrations::{CREATE_VERSION_TABLE, MIGRATIONS};
use crate::{now, Changed, MetaError, Observer, Result};

/// Attempts of one write before it is reported as a conflict.
const MAX_ATTEMPTS: u32 = 12;
/// Key of the advisory lock held while migrations run (any constant shared by all replicas).
const MIGRATION_LOCK: i64 = 0x6265_7274_685f_6d67; // "berth_mg"

/// Runs `$body` (a block using `$tx`, a `&Transaction`, and evaluating to a [`TxResult`]) as
/// write `$op` of `$store`: in a transaction (serializable, unless an isolation level is
/// given) that commits when the block
/// succeeds, run again from the start while PostgreSQL reports it lost a race with another
/// transaction (serialization failure, deadlock). An error from the block, or an early
/// `return`, rolls back everything it did. A macro rather than a function taking a closure,
/// because the block borrows the caller's arguments across `.await`s, which async closures
/// cannot yet do inside the `Send` futures the store traits return.
macro_rules! write_tx {
    ($store:expr, $op:literal, |$tx:ident| $body:block) => {
        $crate::postgres::write_tx!(
            $store,
            $op,
            tokio_postgres::IsolationLevel::Serializable,
            |$tx| $body
        )
    };
    ($store:expr, $op:literal, $isolation:expr, |$tx:ident| $body:block) => {{
        let store: &$crate::postgres::PostgresStore = $store;
        store
            .observed($op, async {
                let mut client = store.client().await?;
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    let outcome = $crate::postgres::attempt(async {
                        let transaction = store.begin(&mut client, $isolation).await?;
                        let value = $crate::postgres::attempt(async {
                            let $tx = &transaction;
                            $body
                        })
                        .await?;
                        transaction.commit().await?;
                        Ok(value)
                    })
                    .await;
                    if let Some(result) = store.settle(outcome, attempt).await {
                        break result;
                    }
                }
            })
            .await
    }};
}
pub(crate) use write_tx;

/// Pins the type of a write's body, so that `?` inside it converts into [`Failure`].
pub(crate) fn attempt<T, F: std::future::Future<Output = TxResult<T>>>(body: F) -> F {
    body
}

/// The channel on which committed writes name the repositories whose references changed.
pub(crate) const CHANGES_CHANNEL: &str = "berth_repository_changed";
/// Announcements a slow watcher may fall behind by before it is told `Changed::Anything`.
const CHANGES_BACKLOG: usize = 1024;

/// How the store connects.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// Connections kept at most.
    pub pool_size: usize,
    /// Waiting this long for a connection (from the pool, or a new one) fails the call as
    /// `Unavailable`.
    pub connect_timeout: Duration,
    /// A statement running longer is cancelled by the server and reported as `Unavailable`.
    pub statement_timeout: Duration,
    /// PEM file of the certificate authorities a TLS server certificate must chain to (a
    /// private CA, a cloud provider's bundle); `None` trusts the Mozilla roots. Whether TLS
    /// is used is the URL's `sslmode`: `disable`, `prefer` (the default: TLS when the server
    /// offers it) or `require`. Certificates are always verified, host name included.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            tls_ca_file: None,
        }
    }
}

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// For the listening connection, which is not one of the pool's.
    config: tokio_postgres::Config,
    /// `None` when the URL says `sslmode=disable`.
    tls: Option<MakeRustlsConnect>,
    /// Started on the first call of `watch_changes`.
    changes: Arc<std::sync::OnceLock<broadcast::Sender<Changed>>>,
    observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`, libpq's URL form)
    /// and applies the migrations this version needs.
    pub async fn open(url: &str, options: PostgresOptions) -> Result<Self> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| MetaError::Backend(format!("metadata URL: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        config.options(format!(
            "-c statement_timeout={}",
            options.statement_timeout.as_millis()
        ));
        config.application_name("berth");
        let manager_config = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => None,
            _ => Some(tls_connector(&options)?),
        };
        let manager = match &tls {
            None => Manager::from_config(config.clone(), NoTls, manager_config()),
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config()),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| MetaError::Backend(e.to_string()))?;
        let store = PostgresStore {
            pool,
            config,
            tls,
            changes: Arc::default(),
            observer: None,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Reports every operation, with its time from call to answer, to `observer`.
    pub fn observed_by(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| MetaError::Unavailable(format!("no database connection: {}", chain(&e))))
    }

    fn observe<T>(&self, op: &'static str, started: Instant, result: &Result<T>) {
        if let Some(observer) = &self.observer {
            observer.operation(op, started.elapsed(), result.is_err());
        }
    }

    /// Times `work` as operation `op`.
    pub(crate) async fn observed<T>(
        &self,
        op: &'static str,
        work: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let result = work.await;
        self.observe(op, started, &result);
        result
    }

    /// Opens a transaction on `client` at `isolation`.
    pub(crate) async fn begin<'c>(
        &self,
        client: &'c mut Client,
        isolation: IsolationLevel,
    ) -> TxResult<Transaction<'c>> {
        Ok(client
            .build_transaction()
            .isolation_level(isolation)
            .start()
            .await?)
    }

    /// What to do after attempt `attempt` of a write ended with `outcome`: hand the result
    /// back, or wait a little and run it again (it lost a race).
    pub(crate) async fn settle<T>(&self, outcome: TxResult<T>, attempt: u32) -> Option<Result<T>> {
        match outcome {
            Ok(value) => Some(Ok(value)),
            Err(Failure::Retry(e)) if attempt < MAX_ATTEMPTS => {
                tracing::debug!(attempt, "retrying a write that lost a race: {e}");
                tokio::time::sleep(backoff(attempt)).await;
                None
            }
            Err(Failure::Retry(e)) => Some(Err(MetaError::Conflict(format!(
                "gave up after {attempt} attempts: {e}"
            )))),
            Err(Failure::Final(e)) => Some(Err(e)),
        }
    }

    /// The announcements of every process's committed changes, from one listening
    /// connection started on the first call (and restarted, with `Changed::Anything`, after
    /// it is lost).
    pub(crate) fn changes(&self) -> broadcast::Receiver<Changed> {
        self.changes
            .get_or_init(|| {
                let (sender, _) = broadcast::channel(CHANGES_BACKLOG);
                tokio::spawn(listen(
                    self.config.clone(),
                    self.tls.clone(),
                    sender.clone(),
                ));
                sender
            })
            .subscribe()
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.client().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let applied = apply_migrations(&mut client).await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        applied?;
        unlocked?;
        Ok(())
    }
}

async fn apply_migrations(client: &mut Client) -> Result<()> {
    client.batch_execute(CREATE_VERSION_TABLE).await?;
    let applied: Option<i64> = client
        .query_one("SELECT MAX(version) FROM berth_schema", &[])
        .await?
        .get(0);
    let applied = applied.unwrap_or(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| MetaError::Migration(format!("version {version}: {e}")))?;
        tx.execute(
            "INSERT INTO berth_schema (version, applied_at) VALUES ($1, $2)",
            &[version, &now()],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied metadata migration");
    }
    Ok(())
}

/// Forwards the notifications of [`CHANGES_CHANNEL`] to `changes`, reconnecting after a
/// lost connection, until nobody watches any more.
async fn listen(
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    changes: broadcast::Sender<Changed>,
) {
    loop {
        let outcome = match &tls {
            None => match config.connect(NoTls).await {
                Ok((client, connection)) => forward(client, connection, &changes).await,
                Err(e) => Err(e),
            },
            Some(tls) => match config.connect(tls.clone()).await {
                Ok((client, connection)) => forward(client, connection, &changes).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = outcome {
            tracing::debug!("the metadata change listener: {e}");
        }
        if changes.send(Changed::Anything).is_err() {
            return; // nobody watches any more
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Listens on one connection until it is lost.
async fn forward<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    changes: &broadcast::Sender<Changed>,
) -> std::result::Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_postgres::AsyncMessage;
    let forwarded = changes.clone();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = forwarded.send(Changed::Repository(n.payload().into()));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("the metadata change listener lost its connection: {e}");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
        .await?;
    // Whatever changed while nobody listened is unknown.
    let _ = changes.send(Changed::Anything);
    let _ = driver.await;
    Ok(())
}

/// The TLS connector for `options`: rustls with `ring`, trusting the configured CAs.
fn tls_connector(options: &PostgresOptions) -> Result<MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    match &options.tls_ca_file {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                MetaError::Backend(format!("metadata TLS CA file {}: {e}", path.display()))
            };
            let pem = std::fs::read(path).map_err(|e| bad(&e))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"no certificate in it"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| MetaError::Backend(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Up to 2 ms × 2^attempt, with jitter, so racing writers do not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 2u64 << attempt.min(8);
    Duration::from_millis(rand::random::<u64>() % ceiling + 1)
}

/// What one attempt of a write returns: its statements' errors keep whether the attempt only
/// lost a race (and is run again) or failed for good.
pub(crate) type TxResult<T> = std::result::Result<T, Failure>;

/// How one attempt of a write ended badly.
pub(crate) enum Failure {
    /// Lost a race with another transaction: running it again may succeed.
    Retry(tokio_postgres::Error),
    Final(MetaError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c)
                if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                Failure::Retry(e)
            }
            _ => Failure::Final(e.into()),
        }
    }
}

impl From<MetaError> for Failure {
    fn from(e: MetaError) -> Self {
        Failure::Final(e)
    }
}

/// An error with its causes, `outer: inner: …`: a failed TLS handshake says why only in its
/// source (an unknown issuer, a wrong host name).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// PostgreSQL's errors in the store's backend-neutral terms.
impl From<tokio_postgres::Error> for MetaError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(code) = e.code() else {
            // No SQLSTATE: the connection failed or closed.
            return MetaError::Unavailable(chain(&e));
        };
        let text = e.to_string();
        if *code == SqlState::DISK_FULL {
            MetaError::Full(text)
        } else if *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::FOREIGN_KEY_VIOLATION
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            MetaError::Conflict(text)
        } else if *code == SqlState::QUERY_CANCELED
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::OUT_OF_MEMORY
            || *code == SqlState::TOO_MANY_CONNECTIONS
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            || code.code().starts_with("08")
        {
            MetaError::Unavailable(text)
        } else if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
            MetaError::Corrupt(text)
        } else {
            MetaError::Backend(text)
        }
    }
}
