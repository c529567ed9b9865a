//! Observability as one tower layer: a request id, one access log line per request, and
//! Prometheus metrics (requests and latency by route and status, bytes in and out, uploads in
//! flight, store operation latencies and errors, process figures), rendered by `/metrics`.
//! `/healthz` and `/readyz` live here too.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

use crate::Api;

/// Latency histogram bounds, in seconds.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

#[derive(Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

impl Series {
    fn observe(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// Latency and failure count of one store operation, keyed by (store, operation).
type StoreOps = HashMap<(&'static str, &'static str), (Series, u64)>;

/// Records the operations one store reports about itself.
pub struct StoreObserver {
    store: &'static str,
    metrics: Arc<Metrics>,
}

impl berth_storage::Observer for StoreObserver {
    fn operation(&self, name: &'static str, elapsed: Duration, failed: bool) {
        self.metrics.store_op(self.store, name, elapsed, failed);
    }
}

impl berth_meta::Observer for StoreObserver {
    fn operation(&self, name: &'static str, elapsed: Duration, failed: bool) {
        self.metrics.store_op(self.store, name, elapsed, failed);
    }
}

/// The registry's metrics. Cheap to update: one short lock per request.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<(&'static str, &'static str, u16), Series>>,
    store_ops: Mutex<StoreOps>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    uploads_in_flight: AtomicI64,
}

impl Metrics {
    fn request(&self, route: &'static str, method: &'static str, status: u16, elapsed: Duration) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((route, method, status))
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// An observer that records a store's operations under the label `store` (`blob` or
    /// `metadata`).
    pub fn store_observer(self: &Arc<Self>, store: &'static str) -> Arc<StoreObserver> {
        Arc::new(StoreObserver {
            store,
            metrics: self.clone(),
        })
    }

    fn store_op(&self, store: &'static str, op: &'static str, elapsed: Duration, failed: bool) {
        let mut m = self.store_ops.lock().unwrap_or_else(|p| p.into_inner());
        let (series, errors) = m.entry((store, op)).or_default();
        series.observe(elapsed.as_secs_f64());
        *errors += u64::from(failed);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, gc: &berth_registry::GcStats) -> String {
        let mut out = String::with_capacity(16 * 1024);
        out.push_str("# HELP berth_http_request_duration_seconds HTTP requests by route, method and status.\n");
        out.push_str("# TYPE berth_http_request_duration_seconds histogram\n");
        {
            let m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            for k in keys {
                let labels = format!("route=\"{}\",method=\"{}\",status=\"{}\"", k.0, k.1, k.2);
                m[k].render(&mut out, "berth_http_request_duration_seconds", &labels);
            }
        }
        out.push_str(
            "# HELP berth_store_operation_duration_seconds Blob and metadata store operations.\n",
        );
        out.push_str("# TYPE berth_store_operation_duration_seconds histogram\n");
        let mut errors = String::new();
        {
            let m = self.store_ops.lock().unwrap_or_else(|p| p.into_inner());
            let mut keys: Vec<_> = m.keys().collect();
            keys.sort();
            for k in keys {
                let labels = format!("store=\"{}\",op=\"{}\"", k.0, k.1);
                m[k].0
                    .render(&mut out, "berth_store_operation_duration_seconds", &labels);
                let _ = writeln!(
                    errors,
                    "berth_store_operation_errors_total{{{labels}}} {}",
                    m[k].1
                );
            }
        }
        out.push_str("# HELP berth_store_operation_errors_total Failed store operations.\n");
        out.push_str("# TYPE berth_store_operation_errors_total counter\n");
        out.push_str(&errors);
        let counters = [
            (
                "berth_http_request_bytes_total",
                "Request body bytes received (declared lengths).",
                self.bytes_in.load(Ordering::Relaxed) as i64,
            ),
            (
                "berth_http_response_bytes_total",
                "Response body bytes sent (declared lengths).",
                self.bytes_out.load(Ordering::Relaxed) as i64,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP berth_uploads_in_flight Upload requests being received now.\n# TYPE berth_uploads_in_flight gauge\nberth_uploads_in_flight {}",
            self.uploads_in_flight.load(Ordering::Relaxed)
        );
        let gc = [
            (
                "berth_gc_runs_total",
                "counter",
                "Garbage collections run.",
                gc.runs.load(Ordering::Relaxed),
            ),
            (
                "berth_gc_blobs_deleted_total",
                "counter",
                "Unreferenced blobs deleted.",
                gc.blobs_deleted.load(Ordering::Relaxed),
            ),
            (
                "berth_gc_bytes_freed_total",
                "counter",
                "Bytes freed by garbage collection.",
                gc.bytes_freed.load(Ordering::Relaxed),
            ),
            (
                "berth_gc_last_duration_milliseconds",
                "gauge",
                "Duration of the last collection.",
                gc.last_duration_ms.load(Ordering::Relaxed),
            ),
            (
                "berth_gc_running",
                "gauge",
                "1 while a garbage collection runs in this process.",
                gc.running.load(Ordering::Relaxed),
            ),
            (
                "berth_gc_run_blobs_deleted",
                "gauge",
                "Blobs deleted so far by the running (else the last) collection.",
                gc.run_blobs_deleted.load(Ordering::Relaxed),
            ),
            (
                "berth_gc_run_bytes_freed",
                "gauge",
                "Bytes freed so far by the running (else the last) collection.",
                gc.run_bytes_freed.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, v) in gc {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        process_metrics(&mut out);
        out
    }
}

/// `process_*` figures from /proc, as Prometheus client libraries name them.
fn process_metrics(out: &mut String) {
    let ticks = 100.0; // USER_HZ on Linux
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            let cpu = (num(11) + num(12)) / ticks;
            let _ = writeln!(
                out,
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}"
            );
            let _ = writeln!(
                out,
                "# TYPE process_threads gauge\nprocess_threads {}",
                num(17)
            );
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status.lines() {
            if let Some(kb) = line.strip_prefix("VmRSS:") {
                let bytes = kb
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0)
                    * 1024;
                let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {bytes}");
            }
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(
            out,
            "# TYPE process_open_fds gauge\nprocess_open_fds {}",
            fds.count()
        );
    }
    static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    });
    let _ = writeln!(
        out,
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}"
    );
}

/// A coarse route name for metrics and logs, from the path alone (no validation needed).
fn route_of(path: &str) -> &'static str {
    match path {
        "/v2" | "/v2/" => "base",
        "/v2/_catalog" => "catalog",
        "/metrics" => "metrics",
        "/healthz" | "/readyz" => "health",
        p if p.starts_with("/auth/token") => "token",
        p if p.starts_with("/api/") => "admin",
        p if !p.starts_with("/v2/") => "other",
        p if p.ends_with("/tags/list") => "tags",
        p if p.contains("/blobs/uploads") => "upload",
        p if p.contains("/manifests/") => "manifest",
        p if p.contains("/referrers/") => "referrers",
        p if p.contains("/blobs/") => "blob",
        _ => "other",
    }
}

/// Methods as static labels (no allocation per request); anything unusual is `other`.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Upload session ids are capabilities: never write them to a log.
fn loggable_path(path: &str) -> String {
    match path.find("/blobs/uploads/") {
        Some(i) if path.len() > i + "/blobs/uploads/".len() => {
            format!("{}/blobs/uploads/<id>", &path[..i])
        }
        _ => path.to_owned(),
    }
}

fn request_id(request: &Request) -> String {
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    match given {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            id.to_owned()
        }
        _ => {
            // An identifier, not a secret: the thread-local generator, no syscall per request.
            hex::encode(rand::random::<[u8; 8]>())
        }
    }
}

/// Who and what a request was about, filled in by inner layers for the access log.
#[derive(Clone, Debug, Default)]
pub struct RequestFacts {
    pub user: String,
    pub repository: String,
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The request with a body that counts the bytes the handlers really read (chunked uploads
/// carry no `Content-Length`); a request without a body is left as it is.
fn counting_body(request: Request) -> (Request, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    if axum::body::HttpBody::is_end_stream(request.body()) {
        return (request, count);
    }
    let seen = count.clone();
    let (parts, body) = request.into_parts();
    let stream = futures_util::TryStreamExt::inspect_ok(body.into_data_stream(), move |chunk| {
        seen.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    });
    (
        Request::from_parts(parts, axum::body::Body::from_stream(stream)),
        count,
    )
}

/// Bytes the response body will carry: none for HEAD (its `Content-Length` describes the GET),
/// else the length it declares or knows exactly.
fn response_length(method: &http::Method, response: &Response) -> u64 {
    if method == http::Method::HEAD {
        return 0;
    }
    content_length(response.headers())
        .or_else(|| axum::body::HttpBody::size_hint(response.body()).exact())
        .unwrap_or(0)
}

pub async fn observe(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let wall_start = std::time::SystemTime::now();
    let id = request_id(&request);
    let trace_ids = api.traces.as_ref().map(|_| {
        let parent = request
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        crate::otlp::TraceExporter::ids(parent)
    });
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = route_of(&path);
    let (request, bytes_read) = counting_body(request);
    let metrics = &api.metrics;
    let upload = route == "upload";
    if upload {
        metrics.uploads_in_flight.fetch_add(1, Ordering::Relaxed);
    }
    let mut response = next.run(request).await;
    if upload {
        metrics.uploads_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let bytes_in = bytes_read.load(Ordering::Relaxed);
    let bytes_out = response_length(&method, &response);
    metrics.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
    metrics.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
    metrics.request(route, method_label(&method), status, elapsed);
    let facts = response
        .extensions()
        .get::<RequestFacts>()
        .cloned()
        .unwrap_or_default();
    tracing::info!(
        target: "berth::access",
        request_id = %id,
        method = %method,
        path = %loggable_path(&path),
        route,
        status,
        user = if facts.user.is_empty() { "-" } else { facts.user.as_str() },
        repository = if facts.repository.is_empty() { "-" } else { facts.repository.as_str() },
        bytes_in,
        bytes_out,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
    );
    if let (Some(traces), Some((trace_id, span_id, parent_span_id))) = (&api.traces, trace_ids) {
        use serde_json::json;
        traces.record(crate::otlp::SpanRecord {
            trace_id,
            span_id,
            parent_span_id,
            name: format!("{} {route}", method_label(&method)),
            start: wall_start,
            end: wall_start + elapsed,
            attributes: vec![
                ("http.request.method", json!(method_label(&method))),
                ("http.route", json!(route)),
                ("url.path", json!(loggable_path(&path))),
                ("http.response.status_code", json!(status)),
                ("berth.repository", json!(facts.repository)),
                ("enduser.id", json!(facts.user)),
                ("berth.request_id", json!(id)),
            ],
            error: status >= 500,
        });
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

pub async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let mut text = api.metrics.render(&api.registry.gc_stats);
    text.push_str(&storage_gauges(&api).await);
    text.push_str(&api.workers.render());
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Room in the blob store, read at scrape time, and whether writes are failing for lack of it.
async fn storage_gauges(api: &Api) -> String {
    let mut out = String::new();
    if let Ok(Some(c)) = api.registry.blobs.capacity().await {
        out.push_str(&format!(
            "# HELP berth_storage_free_bytes Bytes available where blobs are stored.\n\
             # TYPE berth_storage_free_bytes gauge\nberth_storage_free_bytes {}\n\
             # HELP berth_storage_total_bytes Size of the filesystem where blobs are stored.\n\
             # TYPE berth_storage_total_bytes gauge\nberth_storage_total_bytes {}\n",
            c.free, c.total
        ));
    }
    // The history is shared by replicas: the last collection anywhere, for alerts on a
    // collector that stopped running or failing.
    if let Ok(Some(last)) = api
        .registry
        .gc_history(1)
        .await
        .map(|r| r.into_iter().next())
    {
        out.push_str(&format!(
            "# HELP berth_gc_last_run_timestamp_seconds When the last garbage collection of any replica finished.\n\
             # TYPE berth_gc_last_run_timestamp_seconds gauge\nberth_gc_last_run_timestamp_seconds {}\n\
             # HELP berth_gc_last_run_failed 1 when the last garbage collection of any replica failed.\n\
             # TYPE berth_gc_last_run_failed gauge\nberth_gc_last_run_failed {}\n",
            last.finished_at,
            u8::from(!last.error.is_empty())
        ));
    }
    out.push_str(&format!(
        "# HELP berth_storage_full 1 while writes are refused because the storage is full.\n\
         # TYPE berth_storage_full gauge\nberth_storage_full {}\n",
        u8::from(api.registry.storage_is_full())
    ));
    out
}

/// Alive: the process answers. No store is touched, so it is cheap for frequent probes.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: both stores answer.
/// What the server is busy with before it may take traffic, shown by `/readyz` until done.
#[derive(Default)]
pub struct Readiness {
    busy: std::sync::Mutex<Option<String>>,
}

impl Readiness {
    /// `/readyz` answers 503 with `why` until [`ready`](Self::ready).
    pub fn hold(&self, why: impl Into<String>) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.into());
    }

    pub fn ready(&self) {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn busy(&self) -> Option<String> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub async fn readyz(State(api): State<Arc<Api>>) -> Response {
    if let Some(why) = api.readiness.busy() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    }
    let meta = api.registry.meta.check().await;
    let blobs = api.registry.blobs.check().await;
    match (meta, blobs) {
        (Ok(()), Ok(())) => "ready\n".into_response(),
        (m, b) => {
            let detail = format!(
                "metadata: {}\nblobs: {}\n",
                m.map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string()),
                b.map(|_| "ok".to_owned()).unwrap_or_else(|e| e.to_string())
            );
            (StatusCode::SERVICE_UNAVAILABLE, detail).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_redaction() {
        assert_eq!(route_of("/v2/a/b/manifests/v1"), "manifest");
        assert_eq!(route_of("/v2/a/blobs/uploads/abc"), "upload");
        assert_eq!(route_of("/v2/a/blobs/sha256:x"), "blob");
        assert_eq!(route_of("/v2/a/tags/list"), "tags");
        assert_eq!(route_of("/healthz"), "health");
        assert_eq!(
            loggable_path("/v2/a/blobs/uploads/secretid"),
            "/v2/a/blobs/uploads/<id>"
        );
        assert_eq!(
            loggable_path("/v2/a/blobs/uploads/"),
            "/v2/a/blobs/uploads/"
        );
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let m = Metrics::default();
        m.request("blob", "GET", 200, Duration::from_millis(3));
        m.request("blob", "GET", 200, Duration::from_secs(2));
        let text = m.render(&berth_registry::GcStats::default());
        assert!(text.contains("berth_http_request_duration_seconds_bucket{route=\"blob\",method=\"GET\",status=\"200\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("berth_http_request_duration_seconds_count{route=\"blob\",method=\"GET\",status=\"200\"} 2"));
        assert!(text.contains("process_resident_memory_bytes"));
    }
}
