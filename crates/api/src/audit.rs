//! The audit log: who did what, when, from where. Events are queued without blocking the
//! request, written to the metadata store in batches, and optionally streamed as JSON lines
//! to stdout or a file. Secrets never reach an event.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_meta::{AccessStore, AuditEvent};
use tokio::sync::mpsc;

/// Events waiting to be written; beyond this the newest are dropped and counted.
const QUEUE: usize = 16_384;
const BATCH: usize = 512;

#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<AuditEvent>>,
    dropped: Arc<AtomicU64>,
    /// Record every manifest pull (off keeps the log to logins, pushes, deletes, changes).
    pub pulls: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AuditLog {
    /// An audit log that records nothing (tests, tools).
    pub fn disabled() -> AuditLog {
        AuditLog {
            tx: None,
            dropped: Arc::default(),
            pulls: false,
        }
    }

    /// Starts the writer task.
    pub fn spawn(
        store: Arc<dyn AccessStore>,
        mut stream: Option<Box<dyn Write + Send>>,
        pulls: bool,
    ) -> AuditLog {
        let (tx, mut rx) = mpsc::channel::<AuditEvent>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                if let Some(out) = stream.as_mut() {
                    for e in &batch {
                        if let Ok(line) = serde_json::to_string(e) {
                            let _ = writeln!(out, "{line}");
                        }
                    }
                    let _ = out.flush();
                }
                let mut attempt = 0;
                while let Err(e) = store.record_audit(&batch).await {
                    attempt += 1;
                    tracing::error!(
                        "writing {} audit events failed (attempt {attempt}): {e}",
                        batch.len()
                    );
                    if attempt >= 3 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                batch.clear();
            }
        });
        AuditLog {
            tx: Some(tx),
            dropped: Arc::default(),
            pulls,
        }
    }

    pub fn record(
        &self,
        actor: &str,
        action: &str,
        resource: &str,
        outcome: &str,
        client: &str,
        detail: &str,
    ) {
        let Some(tx) = &self.tx else { return };
        let event = AuditEvent {
            at_ms: now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            resource: resource.to_owned(),
            outcome: outcome.to_owned(),
            client: client.to_owned(),
            detail: detail.to_owned(),
        };
        if tx.try_send(event).is_err()
            && self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
        {
            tracing::warn!("audit queue full; events are being dropped");
        }
    }
}
