//! The embedded default backend: SQLite in WAL mode, on `rusqlite`.
//!
//! Writes go to one writer thread that owns the only read-write connection. It takes every
//! write queued while it was busy and runs them as one transaction, each inside its own
//! savepoint (so one failing write does not undo the others), then commits once with
//! `synchronous=FULL`: a single WAL fsync makes the whole group durable before any of them is
//! answered. Concurrent pushes thus share fsyncs, and a write costs one hand-off to the writer
//! thread instead of a round trip per statement.
//!
//! Reads run on the blocking pool with a connection from a small pool of read-only
//! connections; WAL lets them proceed while the writer commits.

mod access;
mod registry;

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{oneshot, Semaphore};

use crate::migrations::{CREATE_VERSION_TABLE, MIGRATIONS};
use crate::{now, MetaError, Observer, Result};

/// Writes run in one transaction at most this many at a time.
const MAX_GROUP: usize = 256;
/// Read connections open at most, so reads under load use a bounded number of blocking threads
/// and of per-connection page caches.
const MAX_READERS: usize = 8;
/// How long a connection waits for another process's lock (the CLI writing while a server
/// runs) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Box<dyn Job>>,
    readers: Arc<Readers>,
    observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.readers.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database file at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_owned();
        let (conn, path) = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| MetaError::Migration(e.to_string()))?;
            }
            let mut conn = Connection::open(&path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
            )?;
            migrate(&mut conn)?;
            Ok::<_, MetaError>((conn, path))
        })
        .await
        .map_err(|e| MetaError::Backend(e.to_string()))??;
        let (writer, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name("berth-meta-writer".into())
            .spawn(move || run_writer(conn, jobs))
            .map_err(|e| MetaError::Backend(e.to_string()))?;
        Ok(SqliteStore {
            writer,
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(MAX_READERS)),
            }),
            observer: None,
        })
    }

    /// Reports every operation, with its time from call to answer, to `observer`.
    pub fn observed_by(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe<T>(&self, op: &'static str, started: Instant, result: &Result<T>) {
        if let Some(observer) = &self.observer {
            observer.operation(op, started.elapsed(), result.is_err());
        }
    }

    /// Runs `f` (operation `op`) in the next group-committed write transaction and returns
    /// its result once the transaction is durable. An error from `f` undoes only `f`'s changes.
    pub(crate) async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let started = Instant::now();
        let result = self.write_now(f).await;
        self.observe(op, started, &result);
        result
    }

    async fn write_now<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Pending {
            work: Some(f),
            outcome: None,
            reply,
        };
        self.writer
            .send(Box::new(job))
            .map_err(|_| MetaError::Backend("the metadata writer stopped".into()))?;
        answer
            .await
            .map_err(|_| MetaError::Backend("the metadata writer stopped".into()))?
    }

    /// Runs `f` (operation `op`) on a read-only connection, off the async threads.
    pub(crate) async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let started = Instant::now();
        let result = self.read_now(f).await;
        self.observe(op, started, &result);
        result
    }

    async fn read_now<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        let permit = readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| MetaError::Backend(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = readers.take()?;
            let result = f(&conn);
            readers.give(conn);
            result
        })
        .await
        .map_err(|e| MetaError::Backend(e.to_string()))?
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(CREATE_VERSION_TABLE)?;
    let applied: Option<i64> =
        conn.query_row("SELECT MAX(version) FROM berth_schema", [], |r| r.get(0))?;
    let applied = applied.unwrap_or(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|e| MetaError::Migration(format!("version {version}: {e}")))?;
        tx.execute(
            "INSERT INTO berth_schema (version, applied_at) VALUES ($1, $2)",
            (version, now()),
        )?;
        tx.commit()?;
        tracing::info!(version, "applied metadata migration");
    }
    Ok(())
}

/// A write waiting for its group: runs inside the group's transaction, then hears whether the
/// group committed.
trait Job: Send {
    fn run(&mut self, conn: &Connection);
    fn finish(self: Box<Self>, committed: &Result<()>);
}

struct Pending<T, F> {
    work: Option<F>,
    outcome: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(work) = self.work.take() {
            self.outcome = Some(in_savepoint(conn, work));
        }
    }

    fn finish(self: Box<Self>, committed: &Result<()>) {
        let result = match (committed, self.outcome) {
            (Err(e), _) => Err(e.clone()),
            (Ok(()), Some(outcome)) => outcome,
            (Ok(()), None) => Err(MetaError::Backend("a write was never run".into())),
        };
        // The caller may have gone away (request cancelled); its write stands regardless.
        let _ = self.reply.send(result);
    }
}

fn in_savepoint<T>(conn: &Connection, work: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch("SAVEPOINT job")?;
    let outcome = work(conn);
    let closed = if outcome.is_ok() {
        conn.execute_batch("RELEASE job")
    } else {
        conn.execute_batch("ROLLBACK TO job; RELEASE job")
    };
    match (outcome, closed) {
        (Ok(value), Ok(())) => Ok(value),
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}

/// The writer thread: group after group until every sender is gone.
fn run_writer(conn: Connection, jobs: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let committed = commit_group(&conn, &mut group);
        for job in group {
            job.finish(&committed);
        }
    }
}

fn commit_group(conn: &Connection, group: &mut [Box<dyn Job>]) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for job in group.iter_mut() {
        job.run(conn);
    }
    conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        MetaError::from(e)
    })
}

/// SQLite's errors in the store's backend-neutral terms.
impl From<rusqlite::Error> for MetaError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as Code;
        match &e {
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                Code::DiskFull => MetaError::Full(e.to_string()),
                Code::DatabaseBusy | Code::DatabaseLocked | Code::CannotOpen => {
                    MetaError::Unavailable(e.to_string())
                }
                Code::ConstraintViolation => MetaError::Conflict(e.to_string()),
                Code::DatabaseCorrupt | Code::NotADatabase => MetaError::Corrupt(e.to_string()),
                _ => MetaError::Backend(e.to_string()),
            },
            _ => MetaError::Backend(e.to_string()),
        }
    }
}

/// Read-only connections, opened on demand and kept while idle; a permit is held while one is
/// in use.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl Readers {
    fn take(&self) -> Result<Connection> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(BUSY_TIMEOUT)?;
                Ok(conn)
            }
        }
    }

    fn give(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}
