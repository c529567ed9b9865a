//! Group commit for SQLite. Commits run with `synchronous=NORMAL`, which writes the WAL without
//! an fsync per transaction; a writer whose change must be durable before it answers waits here
//! for one `fdatasync` of the WAL file that covers every commit finished before it started.
//! Same durability as `synchronous=FULL`, but concurrent pushes share fsyncs instead of queueing
//! one fsync each behind the single writer connection.

use std::fs::File;
use std::path::PathBuf;

use tokio::sync::{mpsc, oneshot};

use crate::{MetaError, Result};

type Waiter = oneshot::Sender<std::result::Result<(), String>>;

#[derive(Clone, Debug)]
pub struct WalSync {
    tx: mpsc::UnboundedSender<Waiter>,
}

fn sync(path: &PathBuf) -> std::io::Result<()> {
    // fsync flushes the inode's dirty pages whichever descriptor asks.
    File::open(path)?.sync_data()
}

impl WalSync {
    /// Syncs `wal` (or `db` when there is no WAL file yet) for whoever waits.
    pub fn spawn(wal: PathBuf, db: PathBuf) -> WalSync {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            let mut waiters = Vec::new();
            // Every waiter in a batch registered after its commit finished, so the fsync that
            // starts now covers it; commits finishing meanwhile wait for the next round.
            while rx.recv_many(&mut waiters, 4096).await > 0 {
                let (w, d) = (wal.clone(), db.clone());
                let result = tokio::task::spawn_blocking(move || sync(&w).or_else(|_| sync(&d)))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                for waiter in waiters.drain(..) {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        WalSync { tx }
    }

    /// Returns once every commit that finished before this call is on disk.
    pub async fn wait(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(tx)
            .map_err(|_| MetaError::Durability("the WAL sync task stopped".into()))?;
        rx.await
            .map_err(|_| MetaError::Durability("the WAL sync task stopped".into()))?
            .map_err(MetaError::Durability)
    }
}
