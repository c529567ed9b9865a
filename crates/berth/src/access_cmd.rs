//! `berth user`, `berth project`, `berth robot` and `berth audit`: the access model and the
//! audit log from the command line, working directly on the metadata store (a running server
//! picks the changes up within seconds). Passwords are read from stdin, never from arguments.

use std::sync::Arc;

use berth_auth::admin;
use berth_meta::{AuditEvent, AuditQuery, Store};
use clap::Subcommand;

use crate::command::runtime;
use crate::htpasswd::read_password;
use crate::StoreArgs;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user (or replace its password); the password is read from stdin.
    Add {
        name: String,
        /// Registry-wide administrator.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Change a password (read from stdin).
    Passwd {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    Rm {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Create a project (or change its visibility).
    Add {
        name: String,
        /// Anyone, even anonymous, may pull.
        #[arg(long)]
        public: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    Rm {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// What a project stores (its repositories' committed blobs, each counted once), per
    /// repository, and its quota; every project's total without PROJECT. Works in every
    /// auth mode.
    Usage {
        project: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Project members and their roles.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Subcommand)]
pub enum MemberCommand {
    /// Add a member or change their role: guest, developer, maintainer, admin.
    Add {
        project: String,
        user: String,
        role: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    Rm {
        project: String,
        user: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    List {
        project: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum RobotCommand {
    /// Create a robot account; its secret is printed once.
    Add {
        project: String,
        name: String,
        /// Comma-separated: pull, push, delete.
        #[arg(long, default_value = "pull")]
        actions: String,
        /// Days until the robot expires (never by default).
        #[arg(long)]
        expires_days: Option<u32>,
        #[command(flatten)]
        store: StoreArgs,
    },
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    Rm {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
pub struct AuditArgs {
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    action: Option<String>,
    /// Only events of the last N minutes.
    #[arg(long)]
    since_minutes: Option<i64>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

async fn open(store: &StoreArgs) -> anyhow::Result<Arc<dyn Store>> {
    let (config, _) = store.load()?;
    crate::stores::open_metadata(&config, None).await
}

pub(crate) async fn audit_cli(
    store: &dyn Store,
    action: &str,
    resource: &str,
    detail: &str,
) -> anyhow::Result<()> {
    let event = AuditEvent {
        at_ms: berth_meta::now() * 1000,
        actor: format!(
            "cli:{}",
            std::env::var("USER").unwrap_or_else(|_| "unknown".into())
        ),
        action: action.to_owned(),
        resource: resource.to_owned(),
        outcome: "ok".into(),
        client: "local".into(),
        detail: detail.to_owned(),
    };
    store.record_audit(&[event]).await?;
    Ok(())
}

pub fn user(command: UserCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match command {
            UserCommand::Add {
                name,
                admin: is_admin,
                store,
            } => {
                let s = open(&store).await?;
                let password = read_password()?;
                admin::put_user(&*s, &name, &password, is_admin).await?;
                audit_cli(&*s, "user.add", &name, if is_admin { "admin" } else { "" }).await?;
                eprintln!("user {name} saved");
            }
            UserCommand::List { store } => {
                for u in open(&store).await?.access_snapshot().await?.users {
                    println!("{}{}", u.name, if u.admin { "\tadmin" } else { "" });
                }
            }
            UserCommand::Passwd { name, store } => {
                let s = open(&store).await?;
                admin::set_password(&*s, &name, &read_password()?).await?;
                audit_cli(&*s, "user.password", &name, "").await?;
                eprintln!("password of {name} changed");
            }
            UserCommand::Rm { name, store } => {
                let s = open(&store).await?;
                admin::delete_user(&*s, &name).await?;
                audit_cli(&*s, "user.remove", &name, "").await?;
                eprintln!("user {name} removed");
            }
        }
        Ok(())
    })
}

pub fn project(command: ProjectCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match command {
            ProjectCommand::Add {
                name,
                public,
                store,
            } => {
                let s = open(&store).await?;
                admin::put_project(&*s, &name, public).await?;
                audit_cli(
                    &*s,
                    "project.add",
                    &name,
                    if public { "public" } else { "private" },
                )
                .await?;
                eprintln!(
                    "project {name} saved ({})",
                    if public { "public" } else { "private" }
                );
            }
            ProjectCommand::Usage { project, store } => {
                let (config, _) = store.load()?;
                crate::policy_cmd::print_usage(&config, project.as_deref()).await?;
            }
            ProjectCommand::List { store } => {
                for p in open(&store).await?.access_snapshot().await?.projects {
                    println!(
                        "{}\t{}",
                        p.name,
                        if p.public { "public" } else { "private" }
                    );
                }
            }
            ProjectCommand::Rm { name, store } => {
                let s = open(&store).await?;
                admin::delete_project(&*s, &name).await?;
                audit_cli(&*s, "project.remove", &name, "").await?;
                eprintln!("project {name} removed");
            }
            ProjectCommand::Member { command } => match command {
                MemberCommand::Add {
                    project,
                    user,
                    role,
                    store,
                } => {
                    let s = open(&store).await?;
                    admin::set_member(&*s, &project, &user, &role).await?;
                    audit_cli(&*s, "project.member", &format!("{project}/{user}"), &role).await?;
                    eprintln!("{user} is {role} of {project}");
                }
                MemberCommand::Rm {
                    project,
                    user,
                    store,
                } => {
                    let s = open(&store).await?;
                    admin::remove_member(&*s, &project, &user).await?;
                    audit_cli(
                        &*s,
                        "project.member.remove",
                        &format!("{project}/{user}"),
                        "",
                    )
                    .await?;
                    eprintln!("{user} removed from {project}");
                }
                MemberCommand::List { project, store } => {
                    for m in open(&store).await?.access_snapshot().await?.members {
                        if m.project == project {
                            println!("{}\t{}", m.username, m.role);
                        }
                    }
                }
            },
        }
        Ok(())
    })
}

pub fn robot(command: RobotCommand) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        match command {
            RobotCommand::Add {
                project,
                name,
                actions,
                expires_days,
                store,
            } => {
                let s = open(&store).await?;
                let robot = admin::add_robot(&*s, &project, &name, &actions, expires_days).await?;
                audit_cli(&*s, "robot.add", &robot.name, &actions).await?;
                eprintln!("robot created; its secret is shown only now:");
                println!("{}\n{}", robot.name, robot.secret);
            }
            RobotCommand::List { store } => {
                for r in open(&store).await?.access_snapshot().await?.robots {
                    let expiry = r
                        .expires_at
                        .map(|t| format!("expires {t}"))
                        .unwrap_or_else(|| "never expires".into());
                    println!("{}\t{}\t{}\t{expiry}", r.name, r.project, r.actions);
                }
            }
            RobotCommand::Rm { name, store } => {
                let s = open(&store).await?;
                admin::delete_robot(&*s, &name).await?;
                audit_cli(&*s, "robot.remove", &name, "").await?;
                eprintln!("robot {name} removed");
            }
        }
        Ok(())
    })
}

pub fn audit(a: AuditArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let s = open(&a.store).await?;
        let since_ms = a.since_minutes.map(|m| (berth_meta::now() - m * 60) * 1000);
        let events = s
            .query_audit(&AuditQuery {
                since_ms,
                actor: a.actor,
                action: a.action,
                limit: a.limit,
            })
            .await?;
        for e in events {
            if a.json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                let fields = [
                    &e.actor,
                    &e.action,
                    &e.resource,
                    &e.outcome,
                    &e.client,
                    &e.detail,
                ];
                let escaped: Vec<String> = fields.iter().map(|f| printable(f)).collect();
                println!("{}\t{}", e.at_ms, escaped.join("\t"));
            }
        }
        Ok(())
    })
}

/// A field as it may be printed on one line of a terminal: control characters (newlines,
/// tabs, escape sequences) and backslashes are escaped as in Rust strings, so a recorded
/// user name such as `x\n\x1b[2K…` cannot forge lines or rewrite what is shown.
fn printable(field: &str) -> String {
    // Bidirectional overrides and zero-width characters can reorder or hide what is shown.
    let hidden = |c: char| matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let mut out = String::with_capacity(field.len());
    for c in field.chars() {
        if c.is_control() || c == '\\' || hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn audit_fields_cannot_carry_control_characters() {
        assert_eq!(printable("alice"), "alice");
        assert_eq!(printable("über"), "über", "non-ASCII letters stay readable");
        let forged = printable("x\n1700000000000\tadmin\x1b[2K\u{9b}");
        assert!(!forged.chars().any(char::is_control), "{forged:?}");
        assert_eq!(printable("a\\b"), "a\\\\b");
        assert_eq!(printable("ü\u{202e}x"), "ü\\u{202e}x");
    }
}
