//! `berth`: the command-line shell over the registry libraries. It parses arguments, loads the
//! configuration, wires the stores into the HTTP API and runs it.

mod access_cmd;
mod check_cmd;
mod command;
mod compat;
mod config;
mod gc_cmd;
mod htpasswd;
mod import_cmd;
mod migrate_cmd;
mod policy_cmd;
mod registry_cmd;
mod serve;
mod server;
mod stores;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "berth",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("BERTH_GIT_REV"), ")"),
    about = "A private OCI container image registry in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Tunes glibc's allocator for this server.
///
/// glibc gives each thread that allocates its own arena (up to 8 per core), which turns many
/// short-lived connections into resident memory that is never returned; two arenas are plenty
/// for a server whose hot paths barely allocate. And by default glibc hands the freed tail of
/// a heap back to the kernel past 128 KiB and serves large buffers from fresh mappings, so an
/// upload's socket reads kept landing in new pages the kernel had to zero (163k page faults
/// per 3 GiB uploaded, 10% of the server's CPU); keeping up to 16 MiB free per arena and
/// serving buffers below 1 MiB from the heap brings that to 13k, with the same peak memory.
/// Blob downloads read in chunks below that threshold for the same reason (`READ_CHUNK` in
/// `berth-storage`'s `fs.rs`): raise the chunk past it and every chunk is mapped again.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 * 1024 * 1024);
    }
}

/// Hands memory the allocator holds free back to the kernel. The generous trim threshold
/// above keeps an upload's buffers warm while uploads stream, and would otherwise keep them
/// resident for good: after three 1 GiB uploads 23 MiB of freed heap stayed, more than the
/// whole server uses when idle. `serve` calls this from a worker every few seconds, so a
/// streaming upload faults in again at most what one trim released (≤ 16 MiB per arena).
pub(crate) fn trim_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel; safe from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Options shared by every command that touches the store.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// TOML configuration file (every key also has a BERTH_<SECTION>_<KEY> variable).
    #[arg(long, short = 'c', env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides storage.root).
    #[arg(long)]
    data: Option<PathBuf>,
}

impl StoreArgs {
    fn load(&self) -> anyhow::Result<(Config, Vec<compat::Notice>)> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let (mut config, notices) = Config::load(self.config.as_deref(), &env)?;
        if let Some(data) = &self.data {
            config.storage.root = data.clone();
        }
        Ok((config, notices))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        /// Listen address (overrides server.addr).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Create or update htpasswd files (bcrypt), like Apache's `htpasswd -B`.
    Htpasswd(htpasswd::HtpasswdArgs),
    /// Users (token auth): add, list, passwd, rm.
    User {
        #[command(subcommand)]
        command: access_cmd::UserCommand,
    },
    /// Projects and their members (token auth).
    Project {
        #[command(subcommand)]
        command: access_cmd::ProjectCommand,
    },
    /// Robot accounts with scoped, expiring access (token auth).
    Robot {
        #[command(subcommand)]
        command: access_cmd::RobotCommand,
    },
    /// Query the audit log.
    Audit(access_cmd::AuditArgs),
    /// Run one garbage collection: delete blobs nothing references (see `[gc]`), printing
    /// each removed digest and its size.
    Gc {
        #[command(flatten)]
        store: StoreArgs,
        /// Print what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Override gc.grace_seconds for this run.
        #[arg(long)]
        grace_seconds: Option<u64>,
        /// Print the latest collections of every replica (start, seconds, where, blobs and
        /// bytes freed, outcome) instead of collecting.
        #[arg(long)]
        history: bool,
        /// How many collections --history prints.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Verify every blob's digest and size and every reference in the metadata; report
    /// corrupt, missing and orphaned blobs and references to nothing. Safe beside a running
    /// server. Exits non-zero when it finds problems.
    Check {
        #[command(flatten)]
        store: StoreArgs,
        /// Quarantine corrupt blobs, forget rows whose bytes are gone, delete manifests that
        /// reference nothing, and file orphaned bytes for garbage collection.
        #[arg(long)]
        repair: bool,
    },
    /// Move the registry to other backends: the metadata (repositories, tags, manifests,
    /// users, projects, robots, the audit log) from its SQLite file into PostgreSQL with
    /// `--to`, every blob into other storage (S3, or a directory; either way) with
    /// `--blobs-to`. Verifies every manifest and blob; run again to resume; stop the server
    /// first.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
        /// Where to copy the metadata: a PostgreSQL database (postgres://user:password@host:port/db),
        /// or `sqlite` to copy the configured PostgreSQL database back into the SQLite file.
        #[arg(long)]
        to: Option<String>,
        /// A configuration file whose `[storage]` (e.g. `driver = "s3"` and `[storage.s3]`)
        /// receives a verified copy of every blob.
        #[arg(long)]
        blobs_to: Option<std::path::PathBuf>,
    },
    /// Import a registry:2 (Distribution) registry: its repositories, manifests, tags and
    /// layer links become Berth's metadata. Without --from, or when --from is the data
    /// directory, it imports in place and copies nothing (the blob layout is the same);
    /// otherwise it copies each blob, verified. Prints what was skipped and why. Idempotent:
    /// run again to resume. `berth serve` does it by itself on first start when it finds
    /// Distribution's repositories and no metadata.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// Distribution's data directory (e.g. /var/lib/registry), or a configuration file
        /// whose [storage] names it (an S3 bucket).
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Switch read-only mode for every server sharing the stores: writes get 405
    /// UNSUPPORTED with the reason, pulls keep working, garbage collection waits.
    ReadOnly {
        #[command(subcommand)]
        command: registry_cmd::ReadOnlyCommand,
    },
    /// A project's lifecycle policy: immutable tags and retention rules (show, set, rm).
    Policy {
        #[command(subcommand)]
        command: policy_cmd::PolicyCommand,
    },
    /// Apply a project's retention rules now.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Repositories: `rm NAME` deletes one whole (tags, manifests, blob links).
    Repository {
        #[command(subcommand)]
        command: RepositoryCommand,
    },
    /// Make a CA and a server certificate, and print how to trust them.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Inspect configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum RetentionCommand {
    /// Delete what the project's retention rules do not keep, printing each manifest and
    /// the bytes the next garbage collection frees; with --dry-run, only print it.
    Run {
        project: String,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum RepositoryCommand {
    /// Delete a repository: its tags, manifests and blob links. Its bytes go with the next
    /// garbage collection, where nothing else references them.
    Rm {
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Create `ca.crt`/`ca.key` (kept if present) and `server.crt`/`server.key` for the given
    /// names and addresses.
    Init {
        /// DNS names the registry is reached by (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// IP addresses the registry is reached by (repeatable).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Output directory (default: <data>/tls).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The port clients use, for the printed instructions.
        #[arg(long, default_value_t = 5000)]
        port: u16,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective result.
    Check {
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { store, addr } => store.load().and_then(|(mut config, notices)| {
            if let Some(addr) = addr {
                config.server.addr = addr;
                config.validate()?;
            }
            serve::run(config, notices)
        }),
        Command::Htpasswd(args) => htpasswd::run(args),
        Command::User { command } => access_cmd::user(command),
        Command::Project { command } => access_cmd::project(command),
        Command::Robot { command } => access_cmd::robot(command),
        Command::Audit(args) => access_cmd::audit(args),
        Command::Gc {
            store,
            history: true,
            limit,
            ..
        } => store
            .load()
            .and_then(|(config, _)| gc_cmd::history(config, limit)),
        Command::Gc {
            store,
            dry_run,
            grace_seconds,
            ..
        } => store
            .load()
            .and_then(|(config, _)| gc_cmd::run(config, dry_run, grace_seconds)),
        Command::Check { store, repair } => store
            .load()
            .and_then(|(config, _)| check_cmd::run(config, repair)),
        Command::Migrate {
            store,
            to,
            blobs_to,
        } => store
            .load()
            .and_then(|(config, _)| migrate_cmd::run(config, to.as_deref(), blobs_to.as_deref())),
        Command::ReadOnly { command } => command
            .store()
            .load()
            .and_then(|(config, _)| registry_cmd::read_only(config, command)),
        Command::Policy { command } => command
            .store()
            .load()
            .and_then(|(config, _)| policy_cmd::policy(config, command)),
        Command::Retention {
            command:
                RetentionCommand::Run {
                    project,
                    dry_run,
                    store,
                },
        } => store
            .load()
            .and_then(|(config, _)| policy_cmd::retention(config, &project, dry_run)),
        Command::Repository {
            command: RepositoryCommand::Rm { name, store },
        } => store
            .load()
            .and_then(|(config, _)| registry_cmd::remove_repository(config, &name)),
        Command::Import { store, from } => store
            .load()
            .and_then(|(config, _)| import_cmd::run(config, from.as_deref())),
        Command::Tls {
            command:
                TlsCommand::Init {
                    hosts,
                    ips,
                    out,
                    port,
                    store,
                },
        } => store.load().and_then(|(config, _)| {
            if hosts.is_empty() && ips.is_empty() {
                anyhow::bail!("give at least one --host or --ip");
            }
            let dir = out.unwrap_or_else(|| config.storage.root.join("tls"));
            let issued = tls::init(&dir, &hosts, &ips)?;
            let name = hosts
                .first()
                .cloned()
                .or_else(|| ips.first().map(|i| i.to_string()));
            let registry = format!("{}:{port}", name.unwrap_or_default());
            println!(
                "Wrote {}, {} and {}\n",
                issued.ca_cert.display(),
                issued.server_cert.display(),
                issued.server_key.display()
            );
            print!("{}", tls::trust_instructions(&issued, &registry));
            Ok(())
        }),
        Command::Config {
            command: ConfigCommand::Check { store },
        } => store.load().map(|(config, notices)| {
            print!("{}", config.to_toml());
            for n in notices {
                let kind = if n.unsupported { "warning" } else { "note" };
                eprintln!("{kind}: {}", n.message);
            }
            eprintln!("configuration is valid");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}
