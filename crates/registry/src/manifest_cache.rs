//! The registry's read-through cache of manifests: manifest GET and HEAD are its hottest path,
//! and a manifest is small and, by digest, immutable.
//!
//! Every write of the registry that changes what a repository's references name (a push, a
//! tag deleted, a manifest or the repository deleted) invalidates the repository's entries
//! once the write is done, so this process always reads its own writes; a read that raced a
//! write is not cached. Entries that writes of other processes changed are dropped when the
//! metadata store announces those writes (PostgreSQL does, through `LISTEN`/`NOTIFY`);
//! otherwise entries are fresh for [`TTL`], which then bounds how long another replica
//! sharing the database can serve a tag that was moved elsewhere. A request that finds its entry just expired is answered from it while one
//! background read refreshes it, so hot manifests never make a request wait on the database
//! (that wait, for every hot entry every TTL, was the tail latency under load); past
//! `TTL + STALE_GRACE` an entry is not served at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_meta::{Changed, MetadataStore, StoredManifest};
use berth_oci::{Reference, RepositoryName};

/// How long a cached answer is fresh.
pub const TTL: Duration = Duration::from_secs(2);
/// How long past `TTL` an entry may still answer while its refresh is under way.
const STALE_GRACE: Duration = Duration::from_secs(2);
/// Bytes of manifests kept at most; beyond, the cache starts over.
const MAX_BYTES: usize = 64 * 1024 * 1024;

struct Entry {
    fetched: Instant,
    manifest: Option<Arc<StoredManifest>>,
    refreshing: bool,
}

impl Entry {
    fn size(&self) -> usize {
        self.manifest.as_ref().map(|m| m.content.len()).unwrap_or(0)
    }
}

/// Cached answers of one repository, so a write drops exactly its repository's entries.
#[derive(Default)]
struct RepoEntries {
    by_reference: HashMap<String, Entry>,
    bytes: usize,
}

#[derive(Default)]
struct Entries {
    repos: HashMap<String, RepoEntries>,
    bytes: usize,
    /// Bumped by every write, so a read that started before one is not cached.
    writes: u64,
}

impl Entries {
    /// Caches what a read that started at write count `writes` found, unless a write came since.
    fn remember(
        &mut self,
        repo: &str,
        reference: String,
        found: Option<Arc<StoredManifest>>,
        writes: u64,
    ) {
        if self.writes != writes {
            self.forget(repo, &reference);
            return;
        }
        let entry = Entry {
            fetched: Instant::now(),
            manifest: found,
            refreshing: false,
        };
        let size = entry.size();
        if self.bytes + size > MAX_BYTES {
            *self = Entries {
                writes: self.writes,
                ..Entries::default()
            };
        }
        let r = self.repos.entry(repo.to_owned()).or_default();
        let replaced = r
            .by_reference
            .insert(reference, entry)
            .map(|old| old.size())
            .unwrap_or(0);
        r.bytes = r.bytes + size - replaced;
        self.bytes = self.bytes + size - replaced;
    }

    fn forget(&mut self, repo: &str, reference: &str) {
        if let Some(r) = self.repos.get_mut(repo) {
            if let Some(old) = r.by_reference.remove(reference) {
                r.bytes -= old.size();
                self.bytes -= old.size();
            }
        }
    }
}

fn lock(entries: &Mutex<Entries>) -> std::sync::MutexGuard<'_, Entries> {
    entries.lock().unwrap_or_else(|p| p.into_inner())
}

fn forget_repository(entries: &Mutex<Entries>, repo: &str) {
    let mut e = lock(entries);
    e.writes += 1;
    if let Some(gone) = e.repos.remove(repo) {
        e.bytes -= gone.bytes;
    }
}

fn forget_all(entries: &Mutex<Entries>) {
    let mut e = lock(entries);
    *e = Entries {
        writes: e.writes + 1,
        ..Entries::default()
    };
}

enum Lookup {
    Fresh(Option<Arc<StoredManifest>>),
    /// Expired but within the grace period; `true` when this caller is to refresh it.
    Stale(Option<Arc<StoredManifest>>, bool),
    Missing,
}

/// The cached manifests of one registry, read from its metadata store.
pub(crate) struct ManifestCache {
    store: Arc<dyn MetadataStore>,
    entries: Arc<Mutex<Entries>>,
}

impl ManifestCache {
    pub(crate) fn new(store: Arc<dyn MetadataStore>) -> Self {
        ManifestCache {
            store,
            entries: Arc::new(Mutex::new(Entries::default())),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        lock(&self.entries)
    }

    /// Drops the cached answers of `repo`; call it once a write to the repository is done,
    /// whether it succeeded or not.
    pub(crate) fn invalidate(&self, repo: &RepositoryName) {
        forget_repository(&self.entries, repo.as_str());
    }

    /// Keeps the cache in step with writes of other processes, for as long as the store
    /// announces them ([`MetadataStore::watch_changes`]); the TTL bounds staleness otherwise.
    pub(crate) fn follow_changes(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut changes) = self.store.watch_changes() else {
            return;
        };
        let entries = self.entries.clone();
        runtime.spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match changes.recv().await {
                    Ok(Changed::Repository(repo)) => forget_repository(&entries, &repo),
                    Ok(Changed::Anything) | Err(RecvError::Lagged(_)) => forget_all(&entries),
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }

    /// What the cache holds for `reference`, and the write count to remember a read under.
    fn lookup(&self, repo: &RepositoryName, reference: &str) -> (Lookup, u64) {
        let mut e = self.entries();
        let writes = e.writes;
        let Some(entry) = e
            .repos
            .get_mut(repo.as_str())
            .and_then(|r| r.by_reference.get_mut(reference))
        else {
            return (Lookup::Missing, writes);
        };
        let age = entry.fetched.elapsed();
        let value = || entry.manifest.clone();
        let found = if age < TTL {
            Lookup::Fresh(value())
        } else if age < TTL + STALE_GRACE {
            let claim = !entry.refreshing;
            entry.refreshing = true;
            Lookup::Stale(value(), claim)
        } else {
            Lookup::Missing
        };
        (found, writes)
    }

    /// Re-reads one entry off the request path; on failure the entry is dropped, so the next
    /// request reads it itself.
    fn refresh(&self, repo: &RepositoryName, reference: &Reference, key: String, writes: u64) {
        let (store, entries) = (self.store.clone(), self.entries.clone());
        let (repo, reference) = (repo.clone(), reference.clone());
        tokio::spawn(async move {
            let found = store.get_manifest(&repo, &reference).await;
            let mut e = entries.lock().unwrap_or_else(|p| p.into_inner());
            match found {
                Ok(found) => e.remember(repo.as_str(), key, found, writes),
                Err(_) => e.forget(repo.as_str(), &key),
            }
        });
    }

    /// The manifest `reference` names in `repo`, from the cache when it has a fresh answer.
    pub(crate) async fn get(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> berth_meta::Result<Option<Arc<StoredManifest>>> {
        let key = reference.to_string();
        match self.lookup(repo, &key) {
            (Lookup::Fresh(found) | Lookup::Stale(found, false), _) => Ok(found),
            (Lookup::Stale(found, true), writes) => {
                self.refresh(repo, reference, key, writes);
                Ok(found)
            }
            (Lookup::Missing, writes) => {
                let found = self.store.get_manifest(repo, reference).await?;
                self.entries()
                    .remember(repo.as_str(), key, found.clone(), writes);
                Ok(found)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_meta::{MetadataStore, NewManifest, SqliteStore};
    use berth_oci::{Digest, Reference, RepositoryName, Tag};

    use super::{ManifestCache, TTL};

    async fn open() -> (tempfile::TempDir, Arc<SqliteStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("meta.db"))
            .await
            .unwrap();
        (dir, Arc::new(store))
    }

    async fn push(store: &SqliteStore, repo: &RepositoryName, content: &[u8], tag: &str) -> Digest {
        let digest = Digest::sha256_of(content);
        store
            .put_manifest(NewManifest {
                repository: repo,
                digest: &digest,
                media_type: "application/vnd.oci.image.manifest.v1+json",
                content,
                blobs: &[],
                children: &[],
                allow_missing: false,
                subject: None,
                artifact_type: None,
                annotations_json: None,
                tags: &[tag.parse::<Tag>().unwrap()],
                immutable_tags: &[],
            })
            .await
            .unwrap();
        digest
    }

    fn digest_of(found: Option<Arc<berth_meta::StoredManifest>>) -> Option<Digest> {
        found.map(|m| m.digest.clone())
    }

    /// Writes followed by `invalidate` are seen at once: a moved tag, an untag, a delete.
    #[tokio::test]
    async fn reads_its_own_writes() {
        let (_dir, store) = open().await;
        let cache = ManifestCache::new(store.clone());
        let r = "cached".parse::<RepositoryName>().unwrap();
        let v1 = Reference::Tag("v1".parse::<Tag>().unwrap());
        assert_eq!(
            digest_of(cache.get(&r, &v1).await.unwrap()),
            None,
            "a miss is cached too"
        );

        let a = push(&store, &r, b"{\"a\":1}", "v1").await;
        cache.invalidate(&r);
        assert_eq!(
            digest_of(cache.get(&r, &v1).await.unwrap()),
            Some(a.clone())
        );

        let b = push(&store, &r, b"{\"b\":2}", "v1").await;
        cache.invalidate(&r);
        assert_eq!(
            digest_of(cache.get(&r, &v1).await.unwrap()),
            Some(b),
            "moved tag"
        );

        assert!(store
            .delete_tag(&r, &"v1".parse::<Tag>().unwrap())
            .await
            .unwrap());
        cache.invalidate(&r);
        assert_eq!(
            digest_of(cache.get(&r, &v1).await.unwrap()),
            None,
            "untagged"
        );

        let by_digest = Reference::Digest(a.clone());
        assert!(cache.get(&r, &by_digest).await.unwrap().is_some());
        assert!(store.delete_manifest(&r, &a).await.unwrap());
        cache.invalidate(&r);
        assert_eq!(
            digest_of(cache.get(&r, &by_digest).await.unwrap()),
            None,
            "deleted"
        );
    }

    /// A tag moved behind the cache's back (another replica, the CLI) is served from the cache
    /// until the entry expires; the first request after that still gets the cached answer at
    /// once while the entry refreshes in the background, and the requests after it see the move.
    #[tokio::test]
    async fn refreshes_expired_entries_in_the_background() {
        let (_dir, store) = open().await;
        let cache = ManifestCache::new(store.clone());
        let r = "refresh".parse::<RepositoryName>().unwrap();
        let v1 = Reference::Tag("v1".parse::<Tag>().unwrap());
        let a = push(&store, &r, b"{\"a\":1}", "v1").await;
        assert_eq!(
            digest_of(cache.get(&r, &v1).await.unwrap()),
            Some(a.clone())
        );

        let b = push(&store, &r, b"{\"b\":2}", "v1").await;
        assert_eq!(
            digest_of(cache.get(&r, &v1).await.unwrap()),
            Some(a.clone()),
            "fresh entry"
        );

        tokio::time::sleep(TTL + std::time::Duration::from_millis(100)).await;
        assert_eq!(
            digest_of(cache.get(&r, &v1).await.unwrap()),
            Some(a.clone()),
            "an expired entry answers once more while it refreshes"
        );
        let mut seen = Some(a);
        for _ in 0..100 {
            seen = digest_of(cache.get(&r, &v1).await.unwrap());
            if seen.as_ref() == Some(&b) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(seen, Some(b), "the refresh brought the moved tag");
    }
}
