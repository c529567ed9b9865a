//! The audit log: who did what, when, from where. Events are queued without blocking the
//! request, written to the metadata store in batches, and optionally streamed as JSON lines
//! to stdout or a file. Secrets never reach an event.
//!
//! Events that a flood can produce at will are folded: refusals (logins refused by the rate
//! limit) per client address and action, pulls per client, caller and reference. The first in
//! a [`FOLD_WINDOW`] is written, the rest are only counted and written as one summary event
//! when the window closes, so no flood writes a row per request: 30,000 manifest GETs a second
//! of one tag were 30,000 rows a second and kept the metadata store's writer fsyncing. Old
//! events are pruned by age and count ([`AuditLog::prune`]).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_meta::{AccessStore, AuditEvent};
use tokio::sync::mpsc;

/// Events waiting to be written; beyond this the newest are dropped and counted.
const QUEUE: usize = 16_384;
const BATCH: usize = 512;
/// How long repeated events are counted before their summary is written.
pub const FOLD_WINDOW: Duration = Duration::from_secs(60);
/// Keys folded at once; beyond, events are counted under one `*` entry per action, so a window
/// writes at most this many first events and summaries.
const MAX_FOLDS: usize = 10_000;
/// User names a summary lists.
const FOLD_NAMES: usize = 8;

#[derive(Clone)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<AuditEvent>>,
    dropped: Arc<AtomicU64>,
    folds: Arc<Mutex<HashMap<FoldKey, Fold>>>,
    /// Record every manifest pull (off keeps the log to logins, pushes, deletes, changes).
    pub pulls: bool,
}

/// What repeats are folded under: the client address, the action, and for pulls the caller
/// and the reference (empty for refusals, which fold whoever they claim to be).
#[derive(PartialEq, Eq, Hash)]
struct FoldKey {
    client: String,
    action: String,
    subject: String,
}

/// Events seen for one key in the current window, after the first.
struct Fold {
    first: AuditEvent,
    more: u64,
    actors: BTreeSet<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An event that happens now.
fn event_now(
    actor: &str,
    action: &str,
    resource: &str,
    outcome: &str,
    client: &str,
    detail: &str,
) -> AuditEvent {
    AuditEvent {
        at_ms: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        resource: resource.to_owned(),
        outcome: outcome.to_owned(),
        client: client.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Writes one batch. A full disk is waited out (the queue holds what comes meanwhile, and
/// drops and counts the newest beyond it), logged once; other failures are retried three
/// times, then the batch is dropped with an error.
async fn write_batch(store: &dyn AccessStore, batch: &[AuditEvent]) {
    let mut attempt = 0;
    let mut full_since: Option<std::time::Instant> = None;
    loop {
        let Err(e) = store.record_audit(batch).await else {
            if let Some(since) = full_since {
                tracing::warn!(
                    waited_s = since.elapsed().as_secs(),
                    "audit events are written again"
                );
            }
            return;
        };
        if e.is_storage_full() {
            if full_since.is_none() {
                tracing::error!(
                    "the metadata store is full: {} audit events wait until space is freed",
                    batch.len()
                );
                full_since = Some(std::time::Instant::now());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        attempt += 1;
        tracing::error!(
            "writing {} audit events failed (attempt {attempt}): {e}",
            batch.len()
        );
        if attempt >= 3 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl AuditLog {
    /// An audit log that records nothing (tests, tools).
    pub fn disabled() -> AuditLog {
        AuditLog {
            tx: None,
            dropped: Arc::default(),
            folds: Arc::default(),
            pulls: false,
        }
    }

    /// Starts the writer task, and the task that writes folded refusals' summaries every
    /// `fold_window`.
    pub fn spawn(
        store: Arc<dyn AccessStore>,
        mut stream: Option<Box<dyn Write + Send>>,
        pulls: bool,
        fold_window: Duration,
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
                write_batch(&*store, &batch).await;
                batch.clear();
            }
        });
        let log = AuditLog {
            tx: Some(tx),
            dropped: Arc::default(),
            folds: Arc::default(),
            pulls,
        };
        let summaries = log.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(fold_window);
            tick.tick().await;
            loop {
                tick.tick().await;
                summaries.close_folds(fold_window);
            }
        });
        log
    }

    /// Records a refusal a client can repeat at will: the first per (client, action) in a
    /// window is written, the others are counted into one summary.
    pub fn record_refusal(
        &self,
        actor: &str,
        action: &str,
        resource: &str,
        client: &str,
        detail: &str,
    ) {
        let event = event_now(actor, action, resource, "denied", client, detail);
        self.fold(String::new(), event);
    }

    /// Records a manifest pull: the first per (client, caller, reference) in a window is
    /// written, the others are counted into one summary.
    pub fn record_pull(&self, actor: &str, resource: &str, client: &str) {
        let event = event_now(actor, "pull", resource, "ok", client, "");
        self.fold(format!("{actor} {resource}"), event);
    }

    /// Writes `event` if it opens a fold in this window, else counts it into the fold.
    fn fold(&self, subject: String, event: AuditEvent) {
        {
            let mut folds = self.folds.lock().unwrap_or_else(|p| p.into_inner());
            let key = if folds.len() < MAX_FOLDS {
                FoldKey {
                    client: event.client.clone(),
                    action: event.action.clone(),
                    subject,
                }
            } else {
                FoldKey {
                    client: "*".to_owned(),
                    action: event.action.clone(),
                    subject: String::new(),
                }
            };
            if let Some(fold) = folds.get_mut(&key) {
                fold.more += 1;
                if fold.actors.len() < FOLD_NAMES {
                    fold.actors.insert(event.actor);
                }
                return;
            }
            folds.insert(
                key,
                Fold {
                    first: event.clone(),
                    more: 0,
                    actors: BTreeSet::new(),
                },
            );
        }
        self.send(event);
    }

    /// Ends the current window: one summary event per key seen again after its first event;
    /// the next event of a key opens a new window.
    fn close_folds(&self, window: Duration) {
        let folds = std::mem::take(&mut *self.folds.lock().unwrap_or_else(|p| p.into_inner()));
        for (key, fold) in folds {
            if fold.more == 0 {
                continue;
            }
            let names: Vec<&str> = fold.actors.iter().map(String::as_str).collect();
            let what = match fold.first.detail.as_str() {
                "" => String::new(),
                detail => format!("{detail} "),
            };
            self.send(AuditEvent {
                at_ms: now_ms(),
                actor: fold.first.actor,
                action: fold.first.action,
                resource: fold.first.resource,
                outcome: fold.first.outcome,
                client: key.client,
                detail: format!(
                    "{} more {what}in {} s (as {})",
                    fold.more,
                    window.as_secs(),
                    names.join(", ")
                ),
            });
        }
    }

    /// Deletes events older than `max_age` and beyond the newest `max_events` (0 = no limit
    /// for either).
    pub async fn prune(
        store: &dyn AccessStore,
        max_age: Duration,
        max_events: u64,
    ) -> Result<u64, berth_meta::MetaError> {
        let before = (!max_age.is_zero()).then(|| now_ms() - max_age.as_millis() as i64);
        store
            .prune_audit(before, (max_events > 0).then_some(max_events))
            .await
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
        self.send(event_now(actor, action, resource, outcome, client, detail));
    }

    fn send(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else { return };
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

/// The audit log records the registry's changes and (when `pulls`) its pulls, folded like
/// refusals, with the actions and resources it always used: `push` of
/// `repo:reference@digest`, `delete` of `repo:reference` or `repo@digest`, `pull` of
/// `repo:reference`.
impl berth_registry::Subscriber for AuditLog {
    fn deliver(&self, event: &berth_registry::Event) {
        use berth_registry::Change;
        let (action, resource) = match &event.change {
            Change::ManifestPushed {
                repository,
                reference,
                digest,
                ..
            } => ("push", format!("{repository}:{reference}@{digest}")),
            Change::ManifestDeleted { repository, digest } => {
                ("delete", format!("{repository}:{digest}"))
            }
            Change::TagDeleted { repository, tag } => ("delete", format!("{repository}:{tag}")),
            Change::RepositoryDeleted { repository } => {
                ("repository.delete", repository.to_string())
            }
            Change::BlobDeleted { repository, digest } => {
                ("delete", format!("{repository}@{digest}"))
            }
            Change::Imported {
                repositories,
                manifests,
                tags,
            } => (
                "import",
                format!(
                    "registry:2 ({repositories} repositories, {manifests} manifests, {tags} tags)"
                ),
            ),
            Change::Pulled {
                repository,
                reference,
            } if self.pulls => {
                let resource = format!("{repository}:{reference}");
                self.record_pull(&event.actor.name, &resource, &event.actor.client);
                return;
            }
            // Blob commits and mounts are steps of a push; the manifest push is the record.
            Change::Pulled { .. } | Change::BlobCommitted { .. } | Change::BlobMounted { .. } => {
                return
            }
        };
        self.send(AuditEvent {
            at_ms: event.at_ms,
            actor: event.actor.name.clone(),
            action: action.to_owned(),
            resource,
            outcome: "ok".to_owned(),
            client: event.actor.client.clone(),
            detail: String::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_meta::{AuditQuery, SqliteStore};

    /// A real SQLite store in a directory that lives as long as the returned guard.
    async fn sqlite() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("m.sqlite"))
            .await
            .unwrap();
        (dir, Arc::new(store))
    }

    async fn events(store: &SqliteStore, want: usize) -> Vec<AuditEvent> {
        for _ in 0..100 {
            let found = store
                .query_audit(&AuditQuery {
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .unwrap();
            if found.len() >= want {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {want} audit events");
    }

    #[tokio::test]
    async fn a_flood_of_refusals_is_one_event_and_one_summary() {
        let (_dir, store) = sqlite().await;
        let log = AuditLog::spawn(store.clone(), None, false, Duration::from_millis(200));
        for i in 0..3000 {
            log.record_refusal(
                &format!("u{}", i % 3),
                "login",
                "token",
                "10.0.0.9",
                "rate limited",
            );
        }
        log.record_refusal("solo", "login", "token", "10.0.0.10", "rate limited");
        let found = events(&store, 3).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let found_later = events(&store, 3).await;
        assert_eq!(
            found.len(),
            found_later.len(),
            "nothing more after the summary"
        );
        assert_eq!(found.len(), 3, "{found:?}");
        let summary = found
            .iter()
            .find(|e| e.detail.starts_with("2999 more"))
            .unwrap_or_else(|| panic!("no summary in {found:?}"));
        assert_eq!(summary.client, "10.0.0.9");
        assert!(summary.detail.contains("u0, u1, u2"), "{}", summary.detail);

        // A new window writes its first refusal again.
        log.record_refusal("u0", "login", "token", "10.0.0.9", "rate limited");
        assert_eq!(events(&store, 4).await.len(), 4);
    }

    #[tokio::test]
    async fn a_flood_of_pulls_is_one_event_per_puller_and_reference_and_one_summary() {
        let (_dir, store) = sqlite().await;
        let log = AuditLog::spawn(store.clone(), None, true, Duration::from_millis(300));
        for _ in 0..3000 {
            log.record_pull("ci", "team/app:v1", "10.0.0.9");
        }
        // Another reference, another caller and another address are each written.
        log.record_pull("ci", "team/app:v2", "10.0.0.9");
        log.record_pull("dev", "team/app:v1", "10.0.0.9");
        log.record_pull("ci", "team/app:v1", "10.0.0.10");
        let found = events(&store, 5).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            events(&store, 5).await.len(),
            5,
            "nothing more after the summary"
        );
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found
            .iter()
            .all(|e| e.action == "pull" && e.outcome == "ok"));
        let summary = found
            .iter()
            .find(|e| e.detail.starts_with("2999 more in"))
            .unwrap_or_else(|| panic!("no summary in {found:?}"));
        assert_eq!(
            (
                summary.actor.as_str(),
                summary.resource.as_str(),
                summary.client.as_str()
            ),
            ("ci", "team/app:v1", "10.0.0.9")
        );
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("m.sqlite"))
            .await
            .unwrap();
        let event = |at_ms: i64| AuditEvent {
            at_ms,
            actor: "a".into(),
            action: "push".into(),
            resource: "r".into(),
            outcome: "ok".into(),
            client: "c".into(),
            detail: String::new(),
        };
        let now = now_ms();
        let old: Vec<_> = (0..5).map(|i| event(now - 10 * 86_400_000 - i)).collect();
        let recent: Vec<_> = (0..10).map(|i| event(now - i)).collect();
        store.record_audit(&old).await.unwrap();
        store.record_audit(&recent).await.unwrap();
        let deleted = AuditLog::prune(&store, Duration::from_secs(86_400), 0)
            .await
            .unwrap();
        assert_eq!(deleted, 5, "older than a day");
        let deleted = AuditLog::prune(&store, Duration::ZERO, 4).await.unwrap();
        assert_eq!(deleted, 6);
        let left = events(&store, 4).await;
        assert_eq!(left.len(), 4);
        assert!(
            left.iter().all(|e| e.at_ms > now - 4),
            "the newest stay: {left:?}"
        );
    }
}
