//! Listings: a repository's tags, the catalog, and the referrers of a manifest.

use berth_meta::Page;
use berth_oci::{Digest, RepositoryName};

use crate::{Registry, RegistryError, Result};

/// Repository names read from the store at a time while a page is filled from every
/// project, many of which the caller may not see.
const UNBOUNDED_BATCH: u32 = 500;

/// One page of a lexically ordered listing, and where the next starts (its last entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub entries: Vec<String>,
    pub next: Option<String>,
}

/// A manifest that names another as its subject.
pub use berth_meta::Referrer;

/// Keeps the first `n` entries; `next` is the last kept when more were found.
fn page_of(mut entries: Vec<String>, n: Option<u32>) -> Listed {
    match n {
        Some(n) if entries.len() > n as usize => {
            entries.truncate(n as usize);
            let next = entries.last().cloned();
            Listed { entries, next }
        }
        _ => Listed {
            entries,
            next: None,
        },
    }
}

/// Which repositories a caller's listing may contain: those of `projects` only when the
/// authorizer bounds it so (`None`: any), and of those, the names `visible` allows. The bound
/// is what keeps a listing for a caller who sees two projects from reading everyone's names;
/// `visible` stays the decision.
pub struct Listable<F: Fn(&RepositoryName) -> bool> {
    pub projects: Option<Vec<String>>,
    pub visible: F,
}

impl<F: Fn(&RepositoryName) -> bool> Listable<F> {
    /// Names to read from the store at a time for a page of `wanted`: the page itself when
    /// bounded by project (each project then costs at most that many rows, and the bound
    /// already leaves out what the caller cannot see), else a larger batch.
    pub(crate) fn batch(&self, wanted: u32) -> u32 {
        match self.projects {
            Some(_) => wanted,
            None => wanted.max(UNBOUNDED_BATCH),
        }
    }
}

impl Registry {
    /// Up to `wanted` names after `after`, containing `search` (all when empty), that the
    /// caller may see, in name order. Hidden names are skipped while the page fills, so a page
    /// and the cursor after it reveal only visible ones.
    pub(crate) async fn visible_repositories(
        &self,
        listable: &Listable<impl Fn(&RepositoryName) -> bool>,
        search: &str,
        after: Option<&str>,
        wanted: u32,
    ) -> Result<Vec<RepositoryName>> {
        let batch = listable.batch(wanted);
        let mut found: Vec<RepositoryName> = Vec::with_capacity((wanted as usize).min(1024));
        let mut cursor = after.map(str::to_owned);
        while found.len() < wanted as usize {
            let page = Page {
                last: cursor.as_deref(),
                limit: Some(batch),
            };
            let names = match listable.projects.as_deref() {
                Some([]) => Vec::new(),
                Some(projects) => {
                    self.meta
                        .list_project_repositories(projects, search, page)
                        .await?
                }
                None if search.is_empty() => self.meta.list_repositories(page).await?,
                None => self.meta.search_repositories(search, page).await?,
            };
            let exhausted = names.len() < batch as usize;
            cursor = names.last().cloned();
            found.extend(
                names
                    .iter()
                    .filter_map(|r| r.parse::<RepositoryName>().ok())
                    .filter(|name| (listable.visible)(name)),
            );
            if exhausted {
                break;
            }
        }
        found.truncate(wanted as usize);
        Ok(found)
    }

    /// Tags of `repository` after `last`, at most `n` of them.
    pub async fn tags(
        &self,
        repository: &RepositoryName,
        last: Option<&str>,
        n: Option<u32>,
    ) -> Result<Listed> {
        let page = Page {
            last,
            // One entry past the page tells whether a next page exists.
            limit: n.map(|n| if n == 0 { 0 } else { n.saturating_add(1) }),
        };
        let Some(tags) = self.meta.list_tags(repository, page).await? else {
            return Err(RegistryError::NameUnknown(repository.to_string()));
        };
        Ok(page_of(tags, n))
    }

    /// Repositories after `last` that the caller may see, at most `n` of them. Pagination
    /// runs over what the caller may see: hidden repositories are skipped while the page is
    /// filled, so neither the page nor `next` reveals a name the caller may not see.
    pub async fn catalog(
        &self,
        last: Option<&str>,
        n: u32,
        listable: Listable<impl Fn(&RepositoryName) -> bool>,
    ) -> Result<Listed> {
        if n == 0 {
            return Ok(page_of(Vec::new(), Some(0)));
        }
        let found = self
            .visible_repositories(&listable, "", last, n + 1)
            .await?
            .iter()
            .map(ToString::to_string)
            .collect();
        Ok(page_of(found, Some(n)))
    }

    /// Manifests of `repository` whose subject is `subject`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        repository: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        Ok(self
            .meta
            .referrers(repository, subject, artifact_type)
            .await?)
    }
}
