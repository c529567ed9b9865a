//! A project's lifecycle policy: which tags are immutable, and which artifacts retention
//! keeps. One JSON document per project in the metadata store, set through the admin API
//! (`PUT /api/v1/projects/{name}/policy`) or `berth policy set`; the project is a repository
//! name's first segment, in every auth mode.
//!
//! ```json
//! {
//!   "immutable": [{"repositories": "**", "tags": "v*"}],
//!   "retention": {
//!     "rules": [
//!       {"repositories": "**", "tags": "**", "keep": {"latest_pushed": 5}},
//!       {"tags": "release-*", "keep": "always"},
//!       {"keep": {"pulled_within_days": 30}}
//!     ],
//!     "untagged": {"delete_after_days": 7}
//!   },
//!   "quota_bytes": 5368709120
//! }
//! ```
//!
//! [`Registry::project_policy`] reads it through a short cache; quotas are checked here
//! before bytes move ([`Registry::check_quota`]) and again by the store at commit.
//!
//! Patterns are globs over the repository name without the project (`app`, `team/app`) and
//! over tags: `*` matches any run of characters except `/`, `**` any run including `/`, `?`
//! one character; anything else matches itself. A missing pattern matches everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_meta::{MetaError, Quota};
use berth_oci::{Digest, RepositoryName};
use serde::{Deserialize, Serialize};

use crate::{Registry, RegistryError, Result};

/// How long a policy read from the metadata store is used before it is read again: the
/// staleness of a change made by another process (pushes consult the policy; reading it from
/// the store on every push cost more CPU than the push itself for small blobs).
pub const POLICY_TTL: Duration = Duration::from_secs(2);
/// Projects whose policies are cached at once; past it the cache starts over.
const POLICY_CACHE_MAX: usize = 10_000;

/// Recently read policies by project (see [`POLICY_TTL`]).
#[derive(Default)]
pub(crate) struct PolicyCache {
    entries: Mutex<HashMap<String, (Instant, Arc<Policy>)>>,
}

impl PolicyCache {
    pub(crate) fn get(&self, project: &str) -> Option<Arc<Policy>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(project)
            .filter(|(read, _)| read.elapsed() < POLICY_TTL)
            .map(|(_, policy)| policy.clone())
    }

    pub(crate) fn put(&self, project: &str, policy: Arc<Policy>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= POLICY_CACHE_MAX {
            entries.clear();
        }
        entries.insert(project.to_owned(), (Instant::now(), policy));
    }

    pub(crate) fn forget(&self, project: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(project);
    }
}

/// Everything a project's policy says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Tags matching one of these can be pushed once and then neither moved nor deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub immutable: Vec<ImmutableRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Bytes the project may store: its repositories' committed blobs, each counted once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImmutableRule {
    #[serde(default = "everything")]
    pub repositories: String,
    pub tags: String,
}

/// Retention: an artifact (a manifest with its tags) of a repository some rule applies to is
/// kept if any rule keeps one of its tags (Harbor's "any rule retains it"); the others are
/// deleted. Repositories no rule applies to are left alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub rules: Vec<RetentionRule>,
    /// What happens to manifests without tags (that no index lists and that are not a
    /// referrer of a kept subject); `None` keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untagged: Option<Untagged>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    #[serde(default = "everything")]
    pub repositories: String,
    #[serde(default = "everything")]
    pub tags: String,
    pub keep: Keep,
}

/// What a rule keeps, among the tags its patterns match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Keep {
    /// Every matching tag.
    Always,
    /// The newest N by push time, per repository.
    LatestPushed(u32),
    /// Tags pushed within the last D days.
    PushedWithinDays(u32),
    /// Tags pulled within the last D days.
    PulledWithinDays(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Untagged {
    pub delete_after_days: u32,
}

fn everything() -> String {
    "**".into()
}

impl Policy {
    /// Parses and checks a policy document; the error says what is wrong with it.
    pub fn parse(json: &str) -> std::result::Result<Policy, String> {
        let policy: Policy = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let patterns = policy
            .immutable
            .iter()
            .flat_map(|r| [&r.repositories, &r.tags])
            .chain(
                policy
                    .retention
                    .iter()
                    .flat_map(|r| &r.rules)
                    .flat_map(|r| [&r.repositories, &r.tags]),
            );
        for p in patterns {
            if p.is_empty() {
                return Err("a pattern is empty (leave it out to match everything)".into());
            }
        }
        Ok(policy)
    }

    /// The immutability rule protecting `tag` of `repository`, if any.
    pub fn immutable_rule(&self, repository: &RepositoryName, tag: &str) -> Option<&ImmutableRule> {
        let within = repository.path_in_project();
        self.immutable
            .iter()
            .find(|r| glob_match(&r.repositories, within) && glob_match(&r.tags, tag))
    }
}

impl std::fmt::Display for ImmutableRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "immutability rule (repositories {:?}, tags {:?})",
            self.repositories, self.tags
        )
    }
}

/// Whether `text` matches the glob `pattern` (see the module docs).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p {
            [] => t.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=t.len()).any(|i| go(rest, &t[i..])),
            [b'*', rest @ ..] => {
                let run = t.iter().position(|&c| c == b'/').unwrap_or(t.len());
                (0..=run).any(|i| go(rest, &t[i..]))
            }
            [b'?', rest @ ..] => !t.is_empty() && t[0] != b'/' && go(rest, &t[1..]),
            [c, rest @ ..] => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

impl Registry {
    /// The lifecycle policy of `repository`'s project; the empty policy when it has none.
    pub async fn policy_of(&self, repository: &RepositoryName) -> Result<Arc<Policy>> {
        self.project_policy(repository.project()).await
    }

    /// A project's lifecycle policy; the empty policy when it has none. Read through a
    /// cache: pushes and deletes consult it, and a change made elsewhere (another replica,
    /// the CLI) holds here within [`crate::policy::POLICY_TTL`].
    pub async fn project_policy(&self, project: &str) -> Result<Arc<Policy>> {
        if let Some(policy) = self.policies.get(project) {
            return Ok(policy);
        }
        let policy = Arc::new(match self.meta.project_policy(project).await? {
            None => Policy::default(),
            Some(json) => Policy::parse(&json).map_err(|e| {
                RegistryError::Meta(MetaError::Corrupt(format!(
                    "the stored policy of project {project}: {e}"
                )))
            })?,
        });
        self.policies.put(project, policy.clone());
        Ok(policy)
    }

    /// The quota of `repository`'s project, when its policy sets one.
    pub(crate) async fn quota_of(&self, repository: &RepositoryName) -> Result<Option<Quota>> {
        let project = repository.project();
        Ok(self
            .project_policy(project)
            .await?
            .quota_bytes
            .map(|limit| Quota {
                project: project.to_owned(),
                limit,
            }))
    }

    /// Refuses, before any byte moves, storing `size` more bytes in the quota's project
    /// when that would pass it; a blob (`digest`) the project links already is free.
    /// The commit checks again, atomically (`MetadataStore::add_blob`).
    pub(crate) async fn check_quota(
        &self,
        quota: &Quota,
        digest: Option<&Digest>,
        size: u64,
    ) -> Result<()> {
        if let Some(d) = digest {
            if self.meta.linked_in_project(&quota.project, d).await? {
                return Ok(());
            }
        }
        let usage = self.meta.project_usage(&quota.project, false).await?.bytes;
        if usage + size > quota.limit {
            return Err(RegistryError::QuotaExceeded(crate::error::quota_message(
                &MetaError::QuotaExceeded {
                    project: quota.project.clone(),
                    usage,
                    size,
                    limit: quota.limit,
                },
            )));
        }
        Ok(())
    }

    /// What `project` stores: its repositories' committed blobs, deduplicated, and its quota.
    pub async fn project_usage(&self, project: &str) -> Result<(berth_meta::Usage, Option<u64>)> {
        let usage = self.meta.project_usage(project, true).await?;
        Ok((usage, self.project_policy(project).await?.quota_bytes))
    }

    /// Sets a project's lifecycle policy (validated), or removes it with `None`.
    pub async fn set_project_policy(&self, project: &str, policy: Option<&Policy>) -> Result<()> {
        let json = policy
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| RegistryError::Meta(MetaError::Backend(e.to_string())))?;
        let stored = self.meta.put_project_policy(project, json.as_deref()).await;
        self.policies.forget(project);
        Ok(stored?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (pattern, text, want) in [
            ("**", "a/b/c", true),
            ("*", "app", true),
            ("*", "team/app", false),
            ("team/*", "team/app", true),
            ("v*", "v1.2.3", true),
            ("v*", "latest", false),
            ("release-?", "release-1", true),
            ("release-?", "release-10", false),
            ("1.*.*", "1.2.3", true),
            ("latest", "latest", true),
            ("**/app", "x/y/app", true),
        ] {
            assert_eq!(glob_match(pattern, text), want, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn parses_the_documented_example_and_refuses_nonsense() {
        let policy = Policy::parse(
            r#"{"immutable":[{"tags":"v*"}],
                "retention":{"rules":[{"tags":"**","keep":{"latest_pushed":5}},
                                      {"tags":"release-*","keep":"always"},
                                      {"keep":{"pulled_within_days":30}}],
                             "untagged":{"delete_after_days":7}}}"#,
        )
        .unwrap();
        assert_eq!(policy.immutable[0].repositories, "**");
        let retention = policy.retention.as_ref().unwrap();
        assert_eq!(retention.rules[0].keep, Keep::LatestPushed(5));
        assert_eq!(retention.rules[1].keep, Keep::Always);
        let app: RepositoryName = "proj/app".parse().unwrap();
        assert!(policy.immutable_rule(&app, "v1").is_some());
        assert!(policy.immutable_rule(&app, "latest").is_none());
        assert!(Policy::parse(r#"{"immutable":[{"tags":""}]}"#).is_err());
        assert!(Policy::parse(r#"{"retention":{"rules":[{"keep":"sometimes"}]}}"#).is_err());
        assert!(Policy::parse(r#"{"immutables":[]}"#).is_err());
    }
}
