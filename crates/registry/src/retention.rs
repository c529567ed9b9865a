//! Tag retention: what a project's retention rules keep, and deleting the rest.
//!
//! For each repository some rule applies to, an artifact (a manifest with its tags) is kept
//! when any rule keeps one of its tags, or when an immutability rule protects one; the others
//! are deleted. With an untagged policy, manifests without tags pushed more than its days ago
//! go too, in every repository of the project. Whatever goes, an index's children that
//! nothing else lists go with it, and so do referrers (signatures, SBOMs) of what goes; a
//! manifest another kept manifest lists as a child is kept, and so is a referrer whose subject
//! stays ("never before its subject").
//!
//! A run first plans (the same plan `--dry-run` prints), then deletes manifest by manifest,
//! parents before children and subjects before referrers, each with a delete the store
//! refuses when the manifest is needed after all
//! ([`MetadataStore::delete_planned_manifest`](berth_meta::MetadataStore)): a tag pushed
//! since the plan, an index that was kept, a subject that stays. Every
//! deletion is published as an event (the audit log records it). The bytes are freed by the
//! next garbage collection; the plan's byte count is the blobs only the deleted manifests
//! reference.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use berth_meta::{Inventory, Page};
use berth_oci::{Digest, RepositoryName};

use crate::policy::{glob_match, Keep, RetentionRule, Untagged};
use crate::{Actor, Change, Registry, Result};

const DAY: i64 = 86_400;

/// One manifest retention deletes, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedDeletion {
    pub repository: String,
    pub digest: String,
    /// Its tags, which go with it.
    pub tags: Vec<String>,
    pub reason: String,
}

/// What retention would delete in a project now.
#[derive(Clone, Debug, Default)]
pub struct RetentionPlan {
    pub project: String,
    /// When the plan was made: a tag pushed from then on keeps its manifest.
    pub planned_at: i64,
    /// In deletion order (parents before children) per repository.
    pub deletions: Vec<PlannedDeletion>,
    /// Bytes of the blobs only the deleted manifests reference (freed by the next GC).
    pub bytes_freed: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RetentionReport {
    pub plan: RetentionPlan,
    /// The planned deletions done (all of them unless pushes raced the run).
    pub deleted: Vec<PlannedDeletion>,
    /// Planned deletions a push since the plan prevented.
    pub kept_by_push: u64,
}

impl Registry {
    /// What retention would delete in `project` now.
    pub async fn plan_retention(&self, project: &str) -> Result<RetentionPlan> {
        let planned_at = berth_meta::now();
        let policy = self.project_policy(project).await?;
        let mut plan = RetentionPlan {
            project: project.to_owned(),
            planned_at,
            ..Default::default()
        };
        let Some(retention) = &policy.retention else {
            return Ok(plan);
        };
        let mut blobs: BTreeMap<String, u64> = BTreeMap::new();
        let mut doomed: HashSet<(String, String)> = HashSet::new();
        for repository in self.project_repositories(project).await? {
            let within = repository.path_in_project();
            let rules: Vec<&RetentionRule> = retention
                .rules
                .iter()
                .filter(|r| glob_match(&r.repositories, within))
                .collect();
            if rules.is_empty() && retention.untagged.is_none() {
                continue;
            }
            let inventory = self.meta.repository_inventory(&repository).await?;
            let by_digest: HashMap<&str, &berth_meta::InventoryManifest> = inventory
                .manifests
                .iter()
                .map(|m| (m.digest.as_str(), m))
                .collect();
            let immutable = |tag: &str| policy.immutable_rule(&repository, tag).is_some();
            for (digest, tags, reason) in decide(
                &rules,
                retention.untagged.as_ref(),
                &immutable,
                &inventory,
                planned_at,
            ) {
                if let Some(m) = by_digest.get(digest.as_str()) {
                    blobs.extend(m.blobs.iter().cloned());
                }
                doomed.insert((repository.to_string(), digest.clone()));
                plan.deletions.push(PlannedDeletion {
                    repository: repository.to_string(),
                    digest,
                    tags,
                    reason,
                });
            }
        }
        for (blob, size) in blobs {
            let Ok(digest) = blob.parse::<Digest>() else {
                continue;
            };
            let users = self.meta.blob_users(&digest).await?;
            if users.iter().all(|u| doomed.contains(u)) {
                plan.bytes_freed += size;
            }
        }
        Ok(plan)
    }

    /// Plans retention in `project` and, unless `dry_run`, deletes what the plan names.
    pub async fn run_retention(
        &self,
        actor: &Actor,
        project: &str,
        dry_run: bool,
    ) -> Result<RetentionReport> {
        if !dry_run {
            self.require_writable()?;
        }
        // Pulls this process noted since its last flush count for "pulled within".
        self.flush_pulls().await?;
        let plan = self.plan_retention(project).await?;
        let mut report = RetentionReport::default();
        if !dry_run {
            for deletion in &plan.deletions {
                let (Ok(repository), Ok(digest)) = (
                    deletion.repository.parse::<RepositoryName>(),
                    deletion.digest.parse::<Digest>(),
                ) else {
                    continue;
                };
                let deleted = self
                    .meta
                    .delete_planned_manifest(&repository, &digest, plan.planned_at)
                    .await;
                self.manifests.invalidate(&repository);
                if deleted? {
                    report.deleted.push(deletion.clone());
                    self.publish(actor, Change::ManifestDeleted { repository, digest });
                } else {
                    report.kept_by_push += 1;
                }
            }
        }
        report.plan = plan;
        Ok(report)
    }

    /// Runs retention in every project that has a policy (the scheduled run).
    pub async fn run_all_retention(&self, actor: &Actor) -> Result<Vec<RetentionReport>> {
        let mut reports = Vec::new();
        for project in self.meta.projects_with_policies().await? {
            let policy = self.project_policy(&project).await?;
            if policy.retention.is_some() {
                reports.push(self.run_retention(actor, &project, false).await?);
            }
        }
        Ok(reports)
    }

    /// The repositories of `project`: the one named like it, and those under `project/`.
    async fn project_repositories(&self, project: &str) -> Result<Vec<RepositoryName>> {
        let prefix = format!("{project}/");
        let mut found = Vec::new();
        if let Ok(bare) = project.parse::<RepositoryName>() {
            // `None`: no such repository. One row is enough to tell.
            let one = Page {
                last: None,
                limit: Some(1),
            };
            if self.meta.list_tags(&bare, one).await?.is_some() {
                found.push(bare);
            }
        }
        let mut last = prefix.clone();
        loop {
            let page = self
                .meta
                .list_repositories(Page {
                    last: Some(&last),
                    limit: Some(1000),
                })
                .await?;
            let Some(end) = page.last().cloned() else {
                break;
            };
            let done = page.len() < 1000 || !end.starts_with(&prefix);
            found.extend(
                page.iter()
                    .filter(|n| n.starts_with(&prefix))
                    .filter_map(|n| n.parse().ok()),
            );
            if done {
                break;
            }
            last = end;
        }
        Ok(found)
    }
}

/// The manifests of one repository retention deletes, as (digest, tags, reason), parents
/// before children: the rules that apply to it (`rules`, possibly none), the project's
/// untagged policy, and which tags are immutable, over its inventory at `now`.
pub(crate) fn decide(
    rules: &[&RetentionRule],
    untagged: Option<&Untagged>,
    immutable: &dyn Fn(&str) -> bool,
    inventory: &Inventory,
    now: i64,
) -> Vec<(String, Vec<String>, String)> {
    let mut tags_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for t in &inventory.tags {
        tags_of.entry(&t.manifest).or_default().push(&t.name);
    }
    let mut kept: HashSet<&str> = inventory
        .tags
        .iter()
        .map(|t| t.name.as_str())
        .filter(|t| immutable(t))
        .collect();
    for rule in rules {
        let mut matching: Vec<_> = inventory
            .tags
            .iter()
            .filter(|t| glob_match(&rule.tags, &t.name))
            .collect();
        match rule.keep {
            Keep::Always => {}
            Keep::LatestPushed(n) => {
                matching.sort_by(|a, b| b.pushed_at.cmp(&a.pushed_at).then(a.name.cmp(&b.name)));
                matching.truncate(n as usize);
            }
            Keep::PushedWithinDays(d) => {
                matching.retain(|t| t.pushed_at >= now - i64::from(d) * DAY)
            }
            Keep::PulledWithinDays(d) => {
                matching.retain(|t| t.pulled_at >= now - i64::from(d) * DAY)
            }
        }
        kept.extend(matching.iter().map(|t| t.name.as_str()));
    }

    let exists: HashSet<&str> = inventory
        .manifests
        .iter()
        .map(|m| m.digest.as_str())
        .collect();
    let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
    for m in &inventory.manifests {
        for child in &m.children {
            parents.entry(child).or_default().push(&m.digest);
        }
    }
    let subject_of: HashMap<&str, &str> = inventory
        .manifests
        .iter()
        .filter_map(|m| m.subject.as_deref().map(|s| (m.digest.as_str(), s)))
        .collect();
    let has_kept_tag = |digest: &str| {
        tags_of
            .get(digest)
            .is_some_and(|t| t.iter().any(|t| kept.contains(t)))
    };

    let mut doomed: BTreeMap<&str, String> = BTreeMap::new();
    for m in &inventory.manifests {
        match tags_of.get(m.digest.as_str()) {
            Some(tags) if !rules.is_empty() && !tags.iter().any(|t| kept.contains(t)) => {
                doomed.insert(
                    &m.digest,
                    format!("no rule keeps its tags {}", tags.join(", ")),
                );
            }
            None => {
                if let Some(u) = untagged {
                    let days = i64::from(u.delete_after_days);
                    if m.created_at < now - days * DAY {
                        doomed.insert(
                            &m.digest,
                            format!("untagged, pushed more than {days} days ago"),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    // Children and referrers follow what goes; what a kept manifest needs stays.
    for _ in 0..64 {
        let mut changed = false;
        let members: Vec<&str> = doomed.keys().copied().collect();
        for d in members {
            let listed_by_kept = parents
                .get(d)
                .is_some_and(|p| p.iter().any(|p| !doomed.contains_key(p)));
            let subject_stays = subject_of
                .get(d)
                .is_some_and(|s| exists.contains(s) && !doomed.contains_key(s));
            if listed_by_kept || subject_stays {
                doomed.remove(d);
                changed = true;
            }
        }
        for m in &inventory.manifests {
            let d = m.digest.as_str();
            if doomed.contains_key(d) || has_kept_tag(d) {
                continue;
            }
            let only_in_doomed = !tags_of.contains_key(d)
                && parents
                    .get(d)
                    .is_some_and(|p| p.iter().all(|p| doomed.contains_key(p)));
            let subject = m.subject.as_deref().filter(|s| doomed.contains_key(s));
            if only_in_doomed {
                doomed.insert(d, "listed only by an index that goes".into());
                changed = true;
            } else if let Some(s) = subject {
                doomed.insert(d, format!("a referrer of {s}, which goes"));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }

    // Parents and subjects first: a manifest goes once nothing left in the plan lists it
    // and its subject has gone (the store refuses either way; the order makes it succeed).
    let mut order = Vec::new();
    let mut left: BTreeSet<&str> = doomed.keys().copied().collect();
    while !left.is_empty() {
        let roots: Vec<&str> = left
            .iter()
            .copied()
            .filter(|d| {
                let listed = parents
                    .get(d)
                    .is_some_and(|p| p.iter().any(|p| left.contains(p) && p != d));
                let subject_left = subject_of
                    .get(d)
                    .is_some_and(|s| left.contains(s) && s != d);
                !listed && !subject_left
            })
            .collect();
        let next = if roots.is_empty() {
            left.iter().copied().collect() // a cycle cannot be pushed; never loop on one
        } else {
            roots
        };
        for d in next {
            left.remove(d);
            let mut tags: Vec<String> = tags_of
                .get(d)
                .map(|t| t.iter().map(|t| (*t).to_owned()).collect())
                .unwrap_or_default();
            tags.sort();
            order.push((d.to_owned(), tags, doomed[d].clone()));
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_meta::{InventoryManifest, InventoryTag};

    fn manifest(digest: &str, created_at: i64) -> InventoryManifest {
        InventoryManifest {
            digest: digest.into(),
            media_type: String::new(),
            size: 1,
            created_at,
            pulled_at: 0,
            subject: None,
            children: Vec::new(),
            blobs: Vec::new(),
        }
    }

    fn tag(name: &str, manifest: &str, pushed_at: i64, pulled_at: i64) -> InventoryTag {
        InventoryTag {
            name: name.into(),
            manifest: manifest.into(),
            pushed_at,
            pulled_at,
        }
    }

    fn rule(tags: &str, keep: Keep) -> RetentionRule {
        RetentionRule {
            repositories: "**".into(),
            tags: tags.into(),
            keep,
        }
    }

    fn doomed(
        rules: &[RetentionRule],
        untagged: Option<u32>,
        immutable: &[&str],
        inventory: &Inventory,
    ) -> Vec<String> {
        let rules: Vec<&RetentionRule> = rules.iter().collect();
        let untagged = untagged.map(|d| Untagged {
            delete_after_days: d,
        });
        let immutable = |t: &str| immutable.contains(&t);
        decide(&rules, untagged.as_ref(), &immutable, inventory, 100 * DAY)
            .into_iter()
            .map(|(d, _, _)| d)
            .collect()
    }

    #[test]
    fn a_tag_any_rule_keeps_keeps_its_artifact() {
        let day = |n: i64| n * DAY;
        let inventory = Inventory {
            manifests: (1..=5)
                .map(|i| manifest(&format!("m{i}"), day(i)))
                .collect(),
            tags: vec![
                tag("v1", "m1", day(1), 0),
                tag("v2", "m2", day(2), day(99)),
                tag("v3", "m3", day(3), 0),
                tag("v4", "m4", day(4), 0),
                tag("release-1", "m5", day(5), 0),
                tag("v4-alias", "m5", day(5), 0),
            ],
        };
        let latest_two = [rule("v*", Keep::LatestPushed(2))];
        assert_eq!(
            doomed(&latest_two, None, &[], &inventory),
            ["m1", "m2", "m3"]
        );
        let plus_pulled = [
            rule("v*", Keep::LatestPushed(2)),
            rule("**", Keep::PulledWithinDays(7)),
        ];
        assert_eq!(doomed(&plus_pulled, None, &[], &inventory), ["m1", "m3"]);
        let plus_releases = [
            rule("release-*", Keep::Always),
            rule("v*", Keep::PushedWithinDays(97)),
        ];
        assert_eq!(doomed(&plus_releases, None, &[], &inventory), ["m1", "m2"]);
        assert_eq!(
            doomed(&plus_releases, None, &["v1"], &inventory),
            ["m2"],
            "immutable tags are kept"
        );
        assert!(
            doomed(&[], None, &[], &inventory).is_empty(),
            "no rule, no deletion"
        );
    }

    #[test]
    fn children_and_referrers_follow_their_parent_and_subject() {
        let mut index = manifest("index", 0);
        index.children = vec!["amd64".into(), "arm64".into()];
        let mut signature = manifest("sig", 0);
        signature.subject = Some("index".into());
        let mut kept_sig = manifest("sig-of-kept", 0);
        kept_sig.subject = Some("kept".into());
        let inventory = Inventory {
            manifests: vec![
                index,
                manifest("amd64", 0),
                manifest("arm64", 0),
                signature,
                manifest("kept", 0),
                kept_sig,
                manifest("stray", 0),
            ],
            tags: vec![
                tag("old", "index", 1, 0),
                tag("new", "kept", 2, 0),
                tag("arm64-only", "arm64", 0, 0),
            ],
        };
        let rules = [rule("**", Keep::LatestPushed(1))];
        // `arm64` has a tag of its own that no rule keeps, so it goes too.
        assert_eq!(
            doomed(&rules, None, &[], &inventory),
            ["index", "amd64", "arm64", "sig"]
        );
        let untagged = doomed(&[], Some(7), &[], &inventory);
        assert_eq!(
            untagged,
            ["stray"],
            "children of a kept index and referrers of a kept subject stay"
        );
    }
}
