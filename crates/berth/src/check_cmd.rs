//! `berth check [--repair]`: reads every blob and checks every reference
//! (`berth_registry::check`), beside a running server or alone, with a progress line on a
//! terminal. Exits non-zero when it found problems, repaired or not.

use anyhow::Context;
use berth_registry::Actor;

use crate::access_cmd::audit_cli;
use crate::command::{runtime, Progress};
use crate::config::Config;
use crate::stores;

pub fn run(config: Config, repair: bool) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let (registry, meta) = stores::open_registry(&config).await?;
        let progress = Progress::on_terminal();
        let started = std::time::Instant::now();
        let report = registry
            .check(&Actor::new("cli", "local"), repair, |p| {
                let seconds = started.elapsed().as_secs_f64().max(0.001);
                progress.show(format_args!(
                    "blobs {:>9}   {:>14} bytes read   {:>7.1} MB/s",
                    p.blobs,
                    p.bytes,
                    p.bytes as f64 / seconds / 1e6
                ))
            })
            .await
            .context("checking")?;
        progress.done();
        for (kind, items) in [
            ("corrupt", &report.corrupt),
            ("missing", &report.missing),
            ("orphaned", &report.orphaned),
            ("dangling", &report.dangling),
        ] {
            for item in items {
                println!("{kind}\t{item}");
            }
        }
        for done in &report.repairs {
            println!("repaired\t{done}");
            audit_cli(&*meta, "check.repair", "registry", done).await?;
        }
        println!(
            "checked {} blobs, {} bytes: {} corrupt, {} missing, {} orphaned, {} dangling references",
            report.blobs_checked,
            report.bytes_read,
            report.corrupt.len(),
            report.missing.len(),
            report.orphaned.len(),
            report.dangling.len()
        );
        if report.problems() > 0 {
            if repair {
                anyhow::bail!(
                    "found {} problems and repaired them; run `berth check` again to confirm",
                    report.problems()
                );
            }
            anyhow::bail!(
                "found {} problems; `berth check --repair` fixes them (see docs/lifecycle.md)",
                report.problems()
            );
        }
        Ok(())
    })
}
