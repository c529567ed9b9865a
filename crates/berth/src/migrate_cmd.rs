//! `berth migrate`: moves a registry to other backends, with progress on a terminal and a
//! summary. `--to postgres://…` copies the metadata from its SQLite file into PostgreSQL
//! (`berth_meta::transfer`); `--blobs-to FILE` copies every blob into the storage that FILE's
//! `[storage]` configures (S3, or a directory: `berth_storage::transfer`), verifying each.

use std::path::Path;

use anyhow::Context;
use berth_meta::{PostgresStore, SqliteStore};

use crate::command::{runtime, Progress};
use crate::config::{Config, MetadataBackend};
use crate::stores;

pub fn run(config: Config, to: Option<&str>, blobs_to: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(
        to.is_some() || blobs_to.is_some(),
        "say what to move: --to postgres://… (the metadata), --blobs-to FILE (the blobs), or both"
    );
    if let Some(file) = blobs_to {
        migrate_blobs(&config, file)?;
    }
    if let Some(to) = to {
        migrate_metadata(config, to)?;
    }
    Ok(())
}

/// Copies every blob into the storage `file` configures (its `[storage]`, with `BERTH_*` and
/// `REGISTRY_*` variables left out: they describe the source).
fn migrate_blobs(config: &Config, file: &Path) -> anyhow::Result<()> {
    let (target, _) = Config::load(Some(file), &[])
        .with_context(|| format!("reading the target storage from {}", file.display()))?;
    anyhow::ensure!(
        target.storage.driver != config.storage.driver
            || target.storage.root != config.storage.root
            || target.storage.s3 != config.storage.s3,
        "{} configures the storage the registry already uses",
        file.display()
    );
    runtime()?.block_on(async {
        let source = stores::open_blobs(config, None).await?;
        let destination = stores::open_blobs(&target, None).await?;
        let progress = Progress::on_terminal();
        let report = berth_storage::transfer::copy_all(&*source, &*destination, |p| {
            progress.show(format_args!(
                "blobs {:>8}   {:>12} bytes copied",
                p.blobs, p.bytes
            ))
        })
        .await
        .context("copying the blobs")?;
        progress.done();
        println!(
            "blobs\t{} copied ({} bytes)\t{} already there\t{} corrupt",
            report.copied.blobs,
            report.copied.bytes,
            report.skipped,
            report.corrupt.len()
        );
        for digest in &report.corrupt {
            eprintln!("corrupt, not copied: {digest} (its bytes hash to something else)");
        }
        anyhow::ensure!(
            report.corrupt.is_empty(),
            "{} blobs are corrupt in the source and were not copied",
            report.corrupt.len()
        );
        eprintln!(
            "copied every blob into the storage of {}; serve with that [storage]",
            file.display()
        );
        Ok(())
    })
}

fn migrate_metadata(mut config: Config, to: &str) -> anyhow::Result<()> {
    if to == "sqlite" {
        return metadata_back_to_sqlite(&config);
    }
    if config.metadata_backend() != MetadataBackend::Sqlite {
        anyhow::bail!(
            "this configuration uses PostgreSQL already; `--to sqlite` copies it back into \
             the SQLite file"
        );
    }
    config.metadata.url = to.to_owned();
    config
        .validate()
        .context("the target (--to) must be a postgres:// URL")?;
    runtime()?.block_on(async {
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
        let progress = Progress::on_terminal();
        let report = berth_meta::transfer::sqlite_to_postgres(&source, &target, |p| {
            progress.show(format_args!("{:<18} {:>10} / {:<10}", p.table, p.done, p.total))
        })
        .await
        .context("copying the metadata")?;
        progress.done();
        print_tables(&report);
        eprintln!(
            "copied the metadata of {} into PostgreSQL; serve with metadata.url (BERTH_METADATA_URL) set to it",
            source.display()
        );
        Ok(())
    })
}

/// `--to sqlite`: the configured PostgreSQL database copied into the SQLite file this
/// configuration would use without `metadata.url`.
fn metadata_back_to_sqlite(config: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(
        config.metadata_backend() == MetadataBackend::Postgres,
        "--to sqlite copies from PostgreSQL: set metadata.url (BERTH_METADATA_URL) to the source"
    );
    let target = config.sqlite_path();
    runtime()?.block_on(async {
        let source = PostgresStore::open(&config.metadata.url, config.postgres_options())
            .await
            .context("opening the PostgreSQL database (metadata.url)")?;
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let progress = Progress::on_terminal();
        let report = berth_meta::transfer::postgres_to_sqlite(&source, &target, |p| {
            progress.show(format_args!(
                "{:<18} {:>10} / {:<10}",
                p.table, p.done, p.total
            ))
        })
        .await
        .context("copying the metadata")?;
        progress.done();
        print_tables(&report);
        eprintln!(
            "copied the metadata into {}; serve without metadata.url to use it",
            target.display()
        );
        Ok(())
    })
}

/// The summary of a metadata copy: one line per table.
fn print_tables(report: &[berth_meta::transfer::Progress]) {
    for p in report {
        println!("{}\t{} rows\t{} new", p.table, p.total, p.inserted);
    }
}
