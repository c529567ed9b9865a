//! Background work as named workers under one runner: each runs a job on a fixed period,
//! logs its failures, and reports its runs, failures, last success and last error in
//! `/metrics`. [`Workers::shutdown`] stops them all between runs and waits for them.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// When a worker's first run happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstRun {
    /// At once (startup work: purges, pruning).
    Now,
    /// After one period.
    AfterPeriod,
}

/// What one worker has done so far.
#[derive(Default)]
struct Stats {
    runs: AtomicU64,
    failures: AtomicU64,
    /// Seconds since the Unix epoch of the last successful run; 0 = none yet.
    last_success: AtomicU64,
    last_duration_ms: AtomicU64,
    last_error: Mutex<String>,
}

/// A metric over the workers: name, type, help, and how to read it from a worker's stats.
type Series = (&'static str, &'static str, &'static str, fn(&Stats) -> u64);

struct Worker {
    name: &'static str,
    stats: Arc<Stats>,
}

pub struct Workers {
    workers: Mutex<Vec<Worker>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
}

impl Default for Workers {
    fn default() -> Self {
        Workers {
            workers: Mutex::default(),
            handles: Mutex::default(),
            stop: watch::channel(false).0,
        }
    }
}

impl Workers {
    /// Starts `job` every `period` under `name` (a metric label: `[a-z_]`). Its `Ok` text,
    /// when not empty, is logged at info level; its errors at error level.
    pub fn spawn<F, Fut>(&self, name: &'static str, period: Duration, first: FirstRun, job: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let stats = Arc::new(Stats::default());
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Worker {
                name,
                stats: stats.clone(),
            });
        let mut stop = self.stop.subscribe();
        let handle = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            if first == FirstRun::AfterPeriod {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            loop {
                let started = std::time::Instant::now();
                let outcome = job().await;
                stats.runs.fetch_add(1, Ordering::Relaxed);
                stats
                    .last_duration_ms
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                match outcome {
                    Ok(done) => {
                        stats
                            .last_success
                            .store(berth_meta::now().max(0) as u64, Ordering::Relaxed);
                        if !done.is_empty() {
                            tracing::info!(worker = name, "{done}");
                        }
                    }
                    Err(e) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(worker = name, "{e}");
                        *stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
                    }
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    /// Stops every worker once its current run is over, and waits for them.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.await;
        }
    }

    /// The workers' figures in Prometheus text format.
    pub fn render(&self) -> String {
        let workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let series: [Series; 4] = [
            (
                "berth_worker_runs_total",
                "counter",
                "Runs of a background worker.",
                |s| s.runs.load(Ordering::Relaxed),
            ),
            (
                "berth_worker_failures_total",
                "counter",
                "Runs of a background worker that failed.",
                |s| s.failures.load(Ordering::Relaxed),
            ),
            (
                "berth_worker_last_success_timestamp_seconds",
                "gauge",
                "When a background worker last succeeded (0: not yet).",
                |s| s.last_success.load(Ordering::Relaxed),
            ),
            (
                "berth_worker_last_duration_milliseconds",
                "gauge",
                "How long a background worker's last run took.",
                |s| s.last_duration_ms.load(Ordering::Relaxed),
            ),
        ];
        for (metric, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for w in workers.iter() {
                let _ = writeln!(out, "{metric}{{worker=\"{}\"}} {}", w.name, value(&w.stats));
            }
        }
        let _ = writeln!(
            out,
            "# HELP berth_worker_last_error_info The last error of a background worker.\n# TYPE berth_worker_last_error_info gauge"
        );
        for w in workers.iter() {
            let error = w.stats.last_error.lock().unwrap_or_else(|p| p.into_inner());
            if !error.is_empty() {
                let escaped = error
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', " ");
                let _ = writeln!(
                    out,
                    "berth_worker_last_error_info{{worker=\"{}\",error=\"{escaped}\"}} 1",
                    w.name
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_run_report_and_stop() {
        let workers = Workers::default();
        let counter = Arc::new(AtomicU64::new(0));
        let seen = counter.clone();
        workers.spawn(
            "counting",
            Duration::from_millis(10),
            FirstRun::Now,
            move || {
                let seen = seen.clone();
                async move {
                    let n = seen.fetch_add(1, Ordering::Relaxed);
                    if n == 1 {
                        Err("disk on fire".to_owned())
                    } else {
                        Ok(String::new())
                    }
                }
            },
        );
        workers.spawn(
            "later",
            Duration::from_secs(3600),
            FirstRun::AfterPeriod,
            || async { Ok(String::new()) },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = workers.render();
        assert!(
            text.contains("berth_worker_failures_total{worker=\"counting\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_worker_runs_total{worker=\"later\"} 0"),
            "{text}"
        );
        assert!(text.contains("error=\"disk on fire\""), "{text}");
        workers.shutdown().await;
        let after = counter.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(counter.load(Ordering::Relaxed), after, "stopped");
        assert!(after >= 3);
    }
}
