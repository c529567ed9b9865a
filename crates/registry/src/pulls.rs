//! When tags and manifests were last pulled, for retention's "pulled within D days". Each
//! pull is noted in memory; a worker writes them in batches ([`Registry::flush_pulls`]), so a
//! pull never waits on the metadata store and no flood of pulls writes a row per request.
//! What is noted but not yet written when the process stops is lost: pull times may lag by
//! one flush period, never run ahead.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_meta::Pull;
use berth_oci::{Reference, RepositoryName};

use crate::{Registry, Result};

/// Distinct (repository, reference) pairs held between flushes; past it new ones wait for the
/// next pull after a flush.
const MAX_PENDING: usize = 100_000;
/// Pulls written per store call.
const BATCH: usize = 500;

#[derive(Default)]
pub(crate) struct PullTimes {
    pending: Mutex<HashMap<(String, String), i64>>,
}

impl PullTimes {
    pub(crate) fn note(&self, repository: &RepositoryName, reference: &Reference) {
        let key = (repository.to_string(), reference.to_string());
        let now = berth_meta::now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() < MAX_PENDING || pending.contains_key(&key) {
            pending.insert(key, now);
        }
    }

    fn take(&self) -> Vec<Pull> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending)
            .into_iter()
            .map(|((repository, reference), at)| Pull {
                repository,
                reference,
                at,
            })
            .collect()
    }
}

impl Registry {
    /// Writes the pulls noted since the last flush; returns how many. Failed batches are
    /// dropped (pull times are a hint for retention, not a record).
    pub async fn flush_pulls(&self) -> Result<usize> {
        let pulls = self.pulls.take();
        for batch in pulls.chunks(BATCH) {
            self.meta.record_pulls(batch).await?;
        }
        Ok(pulls.len())
    }
}
