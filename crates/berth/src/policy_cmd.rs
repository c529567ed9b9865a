//! `berth policy` and `berth retention`: a project's lifecycle policy (immutable tags,
//! retention rules; `berth_registry::policy`) and running its retention by hand, with
//! `--dry-run` printing exactly what a run would delete.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use berth_registry::policy::Policy;
use berth_registry::Actor;
use clap::Subcommand;

use crate::access_cmd::audit_cli;
use crate::command::runtime;
use crate::config::Config;
use crate::{stores, StoreArgs};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print a project's policy as JSON (`{}` when it has none).
    Show {
        project: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Set a project's policy from a JSON file (or stdin): immutable tag patterns and
    /// retention rules (docs/lifecycle.md). Replaces the whole policy.
    Set {
        project: String,
        /// The policy document; stdin when absent.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a project's policy: no tag is immutable, retention keeps everything.
    Rm {
        project: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

impl PolicyCommand {
    pub fn store(&self) -> &StoreArgs {
        match self {
            PolicyCommand::Show { store, .. }
            | PolicyCommand::Set { store, .. }
            | PolicyCommand::Rm { store, .. } => store,
        }
    }
}

pub fn policy(config: Config, command: PolicyCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (registry, meta) = stores::open_registry(&config).await?;
        match command {
            PolicyCommand::Show { project, .. } => {
                let policy = registry.project_policy(&project).await?;
                println!("{}", serde_json::to_string_pretty(&*policy)?);
            }
            PolicyCommand::Set { project, file, .. } => {
                let mut text = String::new();
                match &file {
                    Some(path) => {
                        text = std::fs::read_to_string(path)
                            .with_context(|| format!("reading {}", path.display()))?
                    }
                    None => {
                        std::io::stdin().read_to_string(&mut text)?;
                    }
                }
                let policy =
                    Policy::parse(&text).map_err(|e| anyhow::anyhow!("not a valid policy: {e}"))?;
                registry.set_project_policy(&project, Some(&policy)).await?;
                audit_cli(
                    &*meta,
                    "policy.set",
                    &project,
                    &serde_json::to_string(&policy)?,
                )
                .await?;
                eprintln!("set the policy of project {project}");
            }
            PolicyCommand::Rm { project, .. } => {
                registry.set_project_policy(&project, None).await?;
                audit_cli(&*meta, "policy.rm", &project, "").await?;
                eprintln!("removed the policy of project {project}");
            }
        }
        Ok(())
    })
}

/// `berth retention run [--dry-run] PROJECT`: one line per manifest that goes (or would),
/// then the totals.
pub fn retention(config: Config, project: &str, dry_run: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (registry, meta) = stores::open_registry(&config).await?;
        let report = registry
            .run_retention(&Actor::new("cli", "local"), project, dry_run)
            .await
            .with_context(|| format!("retention of project {project}"))?;
        let listed = if dry_run {
            &report.plan.deletions
        } else {
            &report.deleted
        };
        for d in listed {
            println!(
                "{}\t{}@{}\t{}\t{}",
                if dry_run { "would delete" } else { "delete" },
                d.repository,
                d.digest,
                if d.tags.is_empty() {
                    "-".to_owned()
                } else {
                    d.tags.join(",")
                },
                d.reason
            );
        }
        // As a server's audit log records its scheduled runs' deletions.
        for d in &report.deleted {
            let resource = format!("{}:{}", d.repository, d.digest);
            audit_cli(
                &*meta,
                "delete",
                &resource,
                &format!("retention: {}", d.reason),
            )
            .await?;
        }
        let verb = if dry_run { "would delete" } else { "deleted" };
        let count = if dry_run {
            report.plan.deletions.len()
        } else {
            report.deleted.len()
        };
        println!(
            "{verb} {count} manifests; the next garbage collection frees {} bytes",
            report.plan.bytes_freed
        );
        if report.kept_by_push > 0 {
            eprintln!(
                "{} planned deletions were skipped: a tag was pushed onto them meanwhile",
                report.kept_by_push
            );
        }
        Ok(())
    })
}

/// `berth project usage [PROJECT]`: a project's total (blobs counted once), its quota, and
/// each repository's share (a layer two repositories share shows in both); without a
/// project, every project's total and quota.
pub async fn print_usage(config: &Config, project: Option<&str>) -> anyhow::Result<()> {
    let (registry, meta) = stores::open_registry(config).await?;
    let projects = match project {
        Some(p) => vec![p.to_owned()],
        None => {
            // Projects are repository names' first segments.
            let mut projects = std::collections::BTreeSet::new();
            let mut last: Option<String> = None;
            loop {
                let page = meta
                    .list_repositories(berth_meta::Page {
                        last: last.as_deref(),
                        limit: Some(1000),
                    })
                    .await?;
                let Some(end) = page.last().cloned() else {
                    break;
                };
                for name in &page {
                    projects.insert(berth_oci::name::project_of(name).to_owned());
                }
                last = Some(end);
            }
            projects.into_iter().collect()
        }
    };
    for project in &projects {
        let (usage, quota) = registry.project_usage(project).await?;
        match quota {
            Some(limit) => println!("{project}\t{} bytes\tquota {limit} bytes", usage.bytes),
            None => println!("{project}\t{} bytes\tno quota", usage.bytes),
        }
        if projects.len() == 1 {
            for (repository, bytes) in &usage.repositories {
                println!("  {repository}\t{bytes} bytes");
            }
        }
    }
    Ok(())
}
