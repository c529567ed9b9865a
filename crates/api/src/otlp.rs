//! Optional OpenTelemetry trace export: one server span per request, sent in batches as
//! OTLP/HTTP JSON (`POST <endpoint>/v1/traces`) to a collector. A W3C `traceparent` header on
//! the request makes the span a child of the caller's trace. Export never slows requests down:
//! spans are queued and dropped (and counted) if the collector cannot keep up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::RngCore;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const QUEUE: usize = 8192;
const BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// A finished request, as a span.
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: bool,
}

#[derive(Clone)]
pub struct TraceExporter {
    tx: mpsc::Sender<SpanRecord>,
    dropped: Arc<AtomicU64>,
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The trace id and parent span id of a `traceparent: 00-<trace>-<span>-<flags>` header.
pub fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hexok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, span, flags]
            if hexok(version, 2) && hexok(trace, 32) && hexok(span, 16) && hexok(flags, 2) =>
        {
            Some((trace.to_ascii_lowercase(), span.to_ascii_lowercase()))
        }
        _ => None,
    }
}

impl TraceExporter {
    /// Starts the exporter task sending to `endpoint` (e.g. `http://collector:4318`).
    pub fn spawn(endpoint: &str, service_name: &str) -> Result<TraceExporter, String> {
        let url: http::Uri = format!("{}/v1/traces", endpoint.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?;
        if url.scheme_str() != Some("http") {
            return Err(format!(
                "OTLP endpoint {endpoint:?}: only http:// collectors are supported"
            ));
        }
        let (tx, mut rx) = mpsc::channel::<SpanRecord>(QUEUE);
        let service = service_name.to_owned();
        tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let got = tokio::time::timeout(FLUSH_EVERY, rx.recv_many(&mut batch, BATCH)).await;
                if matches!(got, Ok(0)) {
                    break; // every sender is gone
                }
                if batch.is_empty() {
                    continue;
                }
                let body = encode(&service, &batch);
                batch.clear();
                let request = http::Request::post(url.clone())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)));
                match request {
                    Ok(request) => match client.request(request).await {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            tracing::warn!(status = %r.status(), "OTLP collector refused spans")
                        }
                        Err(e) => tracing::warn!("sending spans to the OTLP collector failed: {e}"),
                    },
                    Err(e) => tracing::warn!("building the OTLP request failed: {e}"),
                }
            }
        });
        Ok(TraceExporter {
            tx,
            dropped: Arc::default(),
        })
    }

    /// A new span id, and the trace id (the caller's, from `traceparent`, or new).
    pub fn ids(traceparent: Option<&str>) -> (String, String, Option<String>) {
        match traceparent.and_then(parse_traceparent) {
            Some((trace, parent)) => (trace, random_hex(8), Some(parent)),
            None => (random_hex(16), random_hex(8), None),
        }
    }

    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err()
            && self
                .dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
        {
            tracing::warn!("OTLP span queue full; spans are being dropped");
        }
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

fn attribute(key: &str, value: &Value) -> Value {
    let v = match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n}),
        Value::Bool(b) => json!({"boolValue": b}),
        Value::String(s) => json!({"stringValue": s}),
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": key, "value": v})
}

/// The OTLP/HTTP JSON body for a batch of spans.
fn encode(service: &str, spans: &[SpanRecord]) -> String {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": s.trace_id,
                "spanId": s.span_id,
                "name": s.name,
                "kind": 2, // SERVER
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": s.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
                "status": {"code": if s.error { 2 } else { 1 }},
            });
            if let Some(parent) = &s.parent_span_id {
                span["parentSpanId"] = json!(parent);
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [attribute("service.name", &json!(service))]},
            "scopeSpans": [{"scope": {"name": "berth", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(tp),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into()
            ))
        );
        assert_eq!(parse_traceparent("00-xyz-00f067aa0ba902b7-01"), None);
        let (trace, span, parent) = TraceExporter::ids(Some(tp));
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.len(), 16);
        assert_eq!(parent.as_deref(), Some("00f067aa0ba902b7"));
    }

    #[test]
    fn encodes_otlp_json() {
        let now = SystemTime::now();
        let body = encode(
            "berth",
            &[SpanRecord {
                trace_id: "a".repeat(32),
                span_id: "b".repeat(16),
                parent_span_id: None,
                name: "GET manifest".into(),
                start: now,
                end: now,
                attributes: vec![("http.response.status_code", json!(200))],
                error: false,
            }],
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["name"], "GET manifest");
        assert_eq!(span["attributes"][0]["value"]["intValue"], "200");
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "berth"
        );
    }
}
