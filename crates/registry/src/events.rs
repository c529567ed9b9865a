//! Domain events: every completed change (and every pull) is published once, after it is
//! durable, to the subscribers registered at startup.
//!
//! Delivery is in-process and synchronous: [`Events::publish`] calls each subscriber in turn,
//! and a subscriber must not block (the audit log only queues). An event is lost if the
//! process dies between the change and its delivery, or if a subscriber drops it; consumers
//! that must not miss one (replication, webhooks) will read a durable outbox table written in
//! the same transaction as the change — the planned path, not built yet.

use std::sync::Arc;

use berth_oci::{Digest, Reference, RepositoryName, Tag};

/// Who caused an event, as the interface that served them knows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// A user or robot name, `anonymous`, or `<issuer>:<subject>` for an external token.
    pub name: String,
    /// The client's address.
    pub client: String,
}

impl Actor {
    pub fn new(name: impl Into<String>, client: impl Into<String>) -> Actor {
        Actor {
            name: name.into(),
            client: client.into(),
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A manifest was stored (or stored again) under `reference`, with `tags` pointing at it.
    ManifestPushed {
        repository: RepositoryName,
        reference: Reference,
        digest: Digest,
        tags: Vec<Tag>,
    },
    /// A manifest and every tag pointing at it were deleted.
    ManifestDeleted {
        repository: RepositoryName,
        digest: Digest,
    },
    /// A repository was deleted with its tags, manifests and links.
    RepositoryDeleted { repository: RepositoryName },
    /// A tag was removed; its manifest stays.
    TagDeleted {
        repository: RepositoryName,
        tag: Tag,
    },
    /// An upload was verified, made durable and linked to the repository.
    BlobCommitted {
        repository: RepositoryName,
        digest: Digest,
        size: u64,
    },
    /// A blob was made visible in a repository by a cross-repository mount.
    BlobMounted {
        repository: RepositoryName,
        from: RepositoryName,
        digest: Digest,
    },
    /// A blob was unlinked from a repository (its bytes go when nothing reaches them).
    BlobDeleted {
        repository: RepositoryName,
        digest: Digest,
    },
    /// `registry:2`'s repositories were imported (`Registry::import_distribution`).
    Imported {
        repositories: u64,
        manifests: u64,
        tags: u64,
    },
    /// A manifest was read by a client (GET, not HEAD).
    Pulled {
        repository: RepositoryName,
        reference: Reference,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub actor: Actor,
    pub change: Change,
}

/// Receives events. Called on the publishing task: must return at once.
pub trait Subscriber: Send + Sync {
    fn deliver(&self, event: &Event);
}

/// The subscribers of one registry.
#[derive(Clone, Default)]
pub struct Events {
    subscribers: Vec<Arc<dyn Subscriber>>,
}

impl Events {
    pub fn subscribe(&mut self, subscriber: Arc<dyn Subscriber>) {
        self.subscribers.push(subscriber);
    }

    pub fn publish(&self, actor: &Actor, change: Change) {
        if self.subscribers.is_empty() {
            return;
        }
        let event = Event {
            at_ms: now_ms(),
            actor: actor.clone(),
            change,
        };
        for s in &self.subscribers {
            s.deliver(&event);
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
