//! `berth migrate --to postgres://…`: moves the metadata of a registry from its SQLite file
//! into PostgreSQL (`berth_meta::transfer`), with progress on a terminal and a summary.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use berth_meta::{PostgresStore, SqliteStore};

use crate::config::{Config, MetadataBackend};

pub fn run(mut config: Config, to: &str) -> anyhow::Result<()> {
    if config.metadata_backend() != MetadataBackend::Sqlite {
        anyhow::bail!(
            "berth migrate copies from SQLite; this configuration already uses PostgreSQL"
        );
    }
    config.metadata.url = to.to_owned();
    config
        .validate()
        .context("the target (--to) must be a postgres:// URL")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let source = config.sqlite_path();
        anyhow::ensure!(source.exists(), "no SQLite metadata at {}", source.display());
        // Brings the source to this version's schema, which the copy expects.
        drop(
            SqliteStore::open(&source)
                .await
                .with_context(|| format!("opening {}", source.display()))?,
        );
        let target = PostgresStore::open(to, config.postgres_options())
            .await
            .context("opening the PostgreSQL database (--to)")?;
        let terminal = std::io::stderr().is_terminal();
        let report = berth_meta::transfer::sqlite_to_postgres(&source, &target, |p| {
            if terminal {
                eprint!("\r{:<18} {:>10} / {:<10}", p.table, p.done, p.total);
                let _ = std::io::stderr().flush();
            }
        })
        .await
        .context("copying the metadata")?;
        if terminal {
            eprintln!();
        }
        for p in &report {
            println!("{}\t{} rows\t{} new", p.table, p.total, p.inserted);
        }
        eprintln!(
            "copied the metadata of {} into PostgreSQL; serve with metadata.url (BERTH_METADATA_URL) set to it",
            source.display()
        );
        Ok(())
    })
}
