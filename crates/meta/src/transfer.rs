//! Copies a whole metadata database from SQLite into PostgreSQL and back, for `berth migrate`:
//! table by table in the order their references need, in batches, each row inserted unless the
//! target has it already — so an interrupted copy run again continues where it stopped, and a
//! finished one changes nothing. Every manifest is verified against its digest on the way.
//!
//! Both databases share one schema (`migrations/`), so rows copy column for column. The
//! target should not be serving yet: rows written there meanwhile are kept, not merged.

use std::path::Path;

use berth_oci::Digest;
use futures_util::TryStreamExt;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use tokio_postgres::types::{ToSql, Type};

use crate::{MetaError, PostgresStore, Result};

/// Tables in the order their foreign keys need. `leases` is not copied (it is the running
/// replicas' business), `access_state` is bumped instead, so servers reload the model, and
/// `sessions` are not (signing in again after a migration is the safe default).
pub const TABLES: &[&str] = &[
    "repositories",
    "blobs",
    "repository_blobs",
    "manifests",
    "manifest_blobs",
    "manifest_children",
    "tags",
    "uploads",
    "users",
    "projects",
    "project_members",
    "robots",
    "audit_events",
    "settings",
    "gc_runs",
    "project_policies",
];

/// Tables a copy leaves out on purpose (see [`TABLES`]).
#[cfg(test)]
const NOT_COPIED: &[&str] = &["leases", "access_state", "sessions"];

/// Rows read and written at a time.
const BATCH: i64 = 1000;

/// How far a copy is, reported after each batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub table: &'static str,
    /// Rows of `table` read so far, and in all.
    pub done: u64,
    pub total: u64,
    /// Of those, rows the target did not have yet.
    pub inserted: u64,
}

/// One value of a row, as SQLite stores it.
enum Cell {
    Null,
    Integer(i64),
    Text(String),
    Blob(Vec<u8>),
}

fn corrupt(e: impl std::fmt::Display) -> MetaError {
    MetaError::Corrupt(e.to_string())
}

/// Copies every table of the SQLite database at `source` (already migrated to this version's
/// schema) into `target`, calling `progress` after each batch; returns the last progress of
/// each table.
pub async fn sqlite_to_postgres(
    source: &Path,
    target: &PostgresStore,
    mut progress: impl FnMut(&Progress),
) -> Result<Vec<Progress>> {
    let source = source.to_owned();
    let mut report = Vec::new();
    for &table in TABLES {
        let total = {
            let source = source.clone();
            blocking(move || {
                let conn = open_source(&source)?;
                let n: i64 =
                    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
                Ok(n.max(0) as u64)
            })
            .await?
        };
        let mut state = Progress {
            table,
            done: 0,
            total,
            inserted: 0,
        };
        let mut after = 0i64;
        loop {
            let (columns, rows) = {
                let source = source.clone();
                blocking(move || read_batch(&source, table, after)).await?
            };
            let Some(last) = rows.last() else { break };
            after = last.0;
            if table == "manifests" {
                verify_manifests(&columns, &rows)?;
            }
            state.done += rows.len() as u64;
            state.inserted += write_batch(target, table, &columns, &rows).await?;
            progress(&state);
        }
        report.push(state);
    }
    let client = target.client().await?;
    client
        .execute(
            "UPDATE access_state SET generation = generation + 1 WHERE id = 1",
            &[],
        )
        .await?;
    Ok(report)
}

/// Copies every table of `source` into the SQLite database at `target` (created and migrated
/// by [`crate::SqliteStore::open`] first), calling `progress` after each batch; returns the
/// last progress of each table.
pub async fn postgres_to_sqlite(
    source: &PostgresStore,
    target: &Path,
    mut progress: impl FnMut(&Progress),
) -> Result<Vec<Progress>> {
    drop(crate::SqliteStore::open(target).await?);
    let client = source.client().await?;
    let mut report = Vec::new();
    for &table in TABLES {
        let total: i64 = client
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await?
            .get(0);
        let mut state = Progress {
            table,
            done: 0,
            total: total.max(0) as u64,
            inserted: 0,
        };
        // One query streams the table; rows are written in batches as they arrive.
        let rows = client
            .query_raw(&format!("SELECT * FROM {table}"), std::iter::empty::<i64>())
            .await?;
        let mut rows = std::pin::pin!(rows);
        let mut columns: Vec<String> = Vec::new();
        let mut batch: Rows = Vec::new();
        loop {
            let row = rows.try_next().await?;
            if let Some(row) = &row {
                if columns.is_empty() {
                    columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
                }
                batch.push((0, cells_of(row)?));
            }
            let flush = batch.len() as i64 >= BATCH || (row.is_none() && !batch.is_empty());
            if flush {
                if table == "manifests" {
                    verify_manifests(&columns, &batch)?;
                }
                let (target, table_columns, rows) = (
                    target.to_owned(),
                    columns.clone(),
                    std::mem::take(&mut batch),
                );
                state.done += rows.len() as u64;
                state.inserted +=
                    blocking(move || write_sqlite_batch(&target, table, &table_columns, &rows))
                        .await?;
                progress(&state);
            }
            if row.is_none() {
                break;
            }
        }
        report.push(state);
    }
    let target = target.to_owned();
    blocking(move || {
        let conn = Connection::open(&target)?;
        conn.execute(
            "UPDATE access_state SET generation = generation + 1 WHERE id = 1",
            [],
        )?;
        Ok(())
    })
    .await?;
    Ok(report)
}

/// A PostgreSQL row as cells (the schema's columns are BIGINT, TEXT and BYTEA).
fn cells_of(row: &tokio_postgres::Row) -> Result<Vec<Cell>> {
    let mut cells = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let cell = match *column.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Cell::Integer),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|n| Cell::Integer(n.into())),
            Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Cell::Blob),
            _ => row.try_get::<_, Option<String>>(i)?.map(Cell::Text),
        };
        cells.push(cell.unwrap_or(Cell::Null));
    }
    Ok(cells)
}

/// Inserts `rows` into `table` of the SQLite file unless present, in one transaction; returns
/// how many were new.
fn write_sqlite_batch(path: &Path, table: &str, columns: &[String], rows: &Rows) -> Result<u64> {
    let mut conn = Connection::open(path)?;
    let tx = conn.transaction()?;
    let mut inserted = 0u64;
    {
        let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        let mut statement = tx.prepare(&format!(
            "INSERT OR IGNORE INTO {table} ({}) VALUES ({})",
            columns.join(", "),
            placeholders.join(", ")
        ))?;
        for (_, cells) in rows {
            let values: Vec<rusqlite::types::Value> = cells
                .iter()
                .map(|cell| match cell {
                    Cell::Null => rusqlite::types::Value::Null,
                    Cell::Integer(n) => rusqlite::types::Value::Integer(*n),
                    Cell::Text(t) => rusqlite::types::Value::Text(t.clone()),
                    Cell::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
                })
                .collect();
            inserted += statement.execute(rusqlite::params_from_iter(values))? as u64;
        }
    }
    tx.commit()?;
    Ok(inserted)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| MetaError::Backend(e.to_string()))?
}

fn open_source(path: &Path) -> Result<Connection> {
    Ok(Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?)
}

type Rows = Vec<(i64, Vec<Cell>)>;

/// The next rows of `table` after SQLite row id `after`, with the table's column names.
fn read_batch(path: &Path, table: &str, after: i64) -> Result<(Vec<String>, Rows)> {
    let conn = open_source(path)?;
    let mut statement = conn.prepare(&format!(
        "SELECT rowid, * FROM {table} WHERE rowid > $1 ORDER BY rowid LIMIT $2"
    ))?;
    let columns: Vec<String> = statement
        .column_names()
        .iter()
        .skip(1)
        .map(|c| c.to_string())
        .collect();
    let width = columns.len();
    let rows = statement
        .query_map((after, BATCH), |r| {
            let mut cells = Vec::with_capacity(width);
            for i in 1..=width {
                cells.push(match r.get_ref(i)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(n) => Cell::Integer(n),
                    ValueRef::Real(f) => Cell::Integer(f as i64),
                    ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
                });
            }
            Ok((r.get::<_, i64>(0)?, cells))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((columns, rows))
}

/// Every manifest's bytes hash to its digest; a copy never carries a corrupt one over.
fn verify_manifests(columns: &[String], rows: &Rows) -> Result<()> {
    let at = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| corrupt(format!("manifests has no column {name}")))
    };
    let (digest_at, content_at, repo_at) = (at("digest")?, at("content")?, at("repository")?);
    for (_, cells) in rows {
        let (Cell::Text(digest), Cell::Blob(content), Cell::Text(repo)) =
            (&cells[digest_at], &cells[content_at], &cells[repo_at])
        else {
            return Err(corrupt(
                "a manifest row without digest, content or repository",
            ));
        };
        let claimed: Digest = digest.parse().map_err(corrupt)?;
        let actual = Digest::of(claimed.algorithm(), content);
        if actual != claimed {
            return Err(corrupt(format!(
                "manifest {repo}@{claimed} hashes to {actual}; repair the source first"
            )));
        }
    }
    Ok(())
}

/// Inserts `rows` into `table` unless present, in one transaction; returns how many were new.
async fn write_batch(
    target: &PostgresStore,
    table: &str,
    columns: &[String],
    rows: &Rows,
) -> Result<u64> {
    let mut client = target.client().await?;
    let tx = client.transaction().await?;
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let statement = tx
        .prepare(&format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
            columns.join(", "),
            placeholders.join(", ")
        ))
        .await?;
    let types = statement.params().to_vec();
    let mut inserted = 0;
    for (_, cells) in rows {
        let values: Vec<Box<dyn ToSql + Sync + Send>> = cells
            .iter()
            .zip(&types)
            .map(|(cell, ty)| value_for(cell, ty))
            .collect();
        let params: Vec<&(dyn ToSql + Sync)> = values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect();
        inserted += tx.execute(&statement, &params).await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

/// A SQLite value as the PostgreSQL column of type `ty` takes it (NULLs typed by the column).
fn value_for(cell: &Cell, ty: &Type) -> Box<dyn ToSql + Sync + Send> {
    match (cell, ty) {
        (Cell::Null, &Type::INT8) => Box::new(None::<i64>),
        (Cell::Null, &Type::BYTEA) => Box::new(None::<Vec<u8>>),
        (Cell::Null, _) => Box::new(None::<String>),
        (Cell::Integer(n), &Type::TEXT) => Box::new(n.to_string()),
        (Cell::Integer(n), _) => Box::new(*n),
        (Cell::Text(t), &Type::BYTEA) => Box::new(t.clone().into_bytes()),
        (Cell::Text(t), _) => Box::new(t.clone()),
        (Cell::Blob(b), &Type::TEXT) => Box::new(String::from_utf8_lossy(b).into_owned()),
        (Cell::Blob(b), _) => Box::new(b.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table added by a migration must be copied, or named as left out on purpose:
    /// otherwise `berth migrate` silently drops its rows.
    #[test]
    fn every_table_is_copied_or_left_out_on_purpose() {
        for (version, sql) in crate::migrations::MIGRATIONS {
            for statement in sql.split("CREATE TABLE ").skip(1) {
                let table = statement
                    .split(|c: char| c.is_whitespace() || c == '(')
                    .next()
                    .unwrap_or_default();
                assert!(
                    TABLES.contains(&table) || NOT_COPIED.contains(&table),
                    "migration {version} creates {table}, which berth migrate does not copy"
                );
            }
        }
    }
}
