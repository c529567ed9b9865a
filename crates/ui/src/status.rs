//! The registry's status (storage per project, pushes and pulls per day, garbage collection
//! runs, version and backends) and the audit log.

use askama::Template;
use axum::extract::Query;
use axum::response::Response;
use berth_auth::Permission;
use berth_meta::{AuditQuery, DailyActivity};
use http::StatusCode;
use serde::Deserialize;

use crate::format;
use crate::i18n::Catalog;
use crate::pages::{render, Chrome};
use crate::Caller;

/// Days the activity chart covers.
const ACTIVITY_DAYS: i64 = 14;
/// Projects the storage chart shows at most (the largest).
const CHART_PROJECTS: usize = 20;
/// Repositories read to find the projects when there is no project list (registry:2 modes).
const PROJECT_SCAN: u32 = 1000;

struct GcRow {
    started: String,
    instance: String,
    deleted: u64,
    freed: String,
    error: String,
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    c: Chrome,
    version: &'static str,
    backends: Vec<(String, String)>,
    read_only: String,
    storage_chart: String,
    storage_rows: Vec<(String, String)>,
    activity_chart: String,
    activity_rows: Vec<(String, u64, u64)>,
    gc_runs: Vec<GcRow>,
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart as inline SVG; its numbers are also in the table beside it.
fn bar_chart(title: &str, bars: &[(String, u64, String)]) -> String {
    let max = bars.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let row = 26;
    let height = bars.len() * row + 8;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 640 {height}\" role=\"img\" aria-label=\"{}\">",
        escape(title)
    );
    for (i, (label, value, shown)) in bars.iter().enumerate() {
        let y = i * row + 4;
        let width = (*value as f64 / max as f64 * 380.0).max(1.0);
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{}\" class=\"label\">{}</text>\
             <rect x=\"170\" y=\"{y}\" width=\"{width:.1}\" height=\"18\" rx=\"3\" class=\"bar\"/>\
             <text x=\"{:.1}\" y=\"{}\" class=\"value\">{}</text>",
            y + 14,
            escape(label),
            170.0 + width + 6.0,
            y + 14,
            escape(shown)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// Pushes and pulls per day as paired columns, one pair per day of the window.
fn activity_chart(title: &str, days: &[(String, u64, u64)]) -> String {
    let max = days.iter().map(|d| d.1.max(d.2)).max().unwrap_or(0).max(1);
    let column = 44;
    let width = days.len() * column + 8;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {width} 150\" role=\"img\" aria-label=\"{}\">",
        escape(title)
    );
    for (i, (label, pushes, pulls)) in days.iter().enumerate() {
        let x = i * column + 4;
        for (offset, value, class) in [(0, pushes, "bar push"), (18, pulls, "bar pull")] {
            let h = (*value as f64 / max as f64 * 110.0).max(if *value > 0 { 2.0 } else { 0.0 });
            svg.push_str(&format!(
                "<rect x=\"{}\" y=\"{:.1}\" width=\"16\" height=\"{h:.1}\" class=\"{class}\"><title>{value}</title></rect>",
                x + offset,
                120.0 - h
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"140\" class=\"label\">{}</text>",
            x,
            escape(label)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// One entry per day of the window, days without events included.
fn fill_days(activity: &[DailyActivity], today: i64) -> Vec<(String, u64, u64)> {
    (today - ACTIVITY_DAYS + 1..=today)
        .map(|day| {
            let found = activity.iter().find(|a| a.day == day);
            (
                format::day(day),
                found.map_or(0, |a| a.pushes),
                found.map_or(0, |a| a.pulls),
            )
        })
        .collect()
}

/// The projects whose storage the chart shows, as the caller may see them.
/// What each backend is for, in the reader's language (the configuration names them in
/// English words: `storage`, `metadata`, `auth`).
fn backend_label<'a>(t: &'a Catalog, role: &'a str) -> &'a str {
    match role {
        "storage" => t.get("status.backend_storage"),
        "metadata" => t.get("status.backend_metadata"),
        "auth" => t.get("status.backend_auth"),
        other => other,
    }
}

async fn projects_of(caller: &Caller) -> Vec<String> {
    if caller.api.token_auth().is_ok() {
        return caller
            .api
            .visible_projects(&caller.access)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
    }
    let listed = caller
        .api
        .registry
        .catalog(None, PROJECT_SCAN, caller.api.listable(&caller.access))
        .await;
    // A project's repositories need not be adjacent in name order (`a`, `a-b/x`, `a/y`).
    let projects: std::collections::BTreeSet<String> = listed
        .map(|l| l.entries)
        .unwrap_or_default()
        .iter()
        .filter_map(|name| name.split('/').next().map(str::to_owned))
        .collect();
    projects.into_iter().collect()
}

pub async fn show(caller: Caller) -> Response {
    if !caller.allows(Permission::ReadStatus) {
        return caller.refuse();
    }
    let t = caller.t;
    let mut usage = Vec::new();
    for project in projects_of(&caller).await {
        if let Ok((u, _)) = caller.api.registry.project_usage(&project).await {
            usage.push((project, u.bytes));
        }
    }
    usage.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    usage.truncate(CHART_PROJECTS);
    let bars: Vec<(String, u64, String)> = usage
        .iter()
        .map(|(p, b)| (p.clone(), *b, format::bytes(*b)))
        .collect();
    let now = berth_meta::now();
    let today = now.div_euclid(86_400);
    let since_ms = (today - ACTIVITY_DAYS + 1) * 86_400_000;
    let activity = match caller.api.activity(since_ms).await {
        Ok(a) => a,
        Err(e) => return caller.failed(e),
    };
    let days = fill_days(&activity, today);
    let gc_runs = caller
        .api
        .registry
        .gc_history(10)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| GcRow {
            started: format::time(r.started_at),
            instance: r.instance,
            deleted: r.blobs_deleted,
            freed: format::bytes(r.bytes_freed),
            error: r.error,
        })
        .collect();
    let page = StatusPage {
        c: Chrome::new(&caller, t.get("status.title"), "status"),
        version: env!("CARGO_PKG_VERSION"),
        backends: caller
            .api
            .config
            .backends
            .iter()
            .map(|(role, which)| (backend_label(t, role).to_owned(), which.clone()))
            .collect(),
        read_only: caller.api.registry.read_only().unwrap_or_default(),
        storage_chart: bar_chart(t.get("status.storage"), &bars),
        storage_rows: bars.into_iter().map(|(p, _, shown)| (p, shown)).collect(),
        activity_chart: activity_chart(t.get("status.activity"), &days),
        activity_rows: days,
        gc_runs,
    };
    render(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct AuditFilter {
    actor: Option<String>,
    action: Option<String>,
    days: Option<i64>,
}

struct EventRow {
    time: String,
    actor: String,
    action: String,
    resource: String,
    outcome: String,
    client: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    c: Chrome,
    actor: String,
    action: String,
    days: i64,
    rows: Vec<EventRow>,
}

pub async fn audit(caller: Caller, Query(filter): Query<AuditFilter>) -> Response {
    let nonempty = |s: Option<String>| s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let actor = nonempty(filter.actor);
    let action = nonempty(filter.action);
    let days = filter.days.unwrap_or(7).clamp(1, 3650);
    let query = AuditQuery {
        since_ms: Some((berth_meta::now() - days * 86_400) * 1000),
        actor: actor.clone(),
        action: action.clone(),
        limit: 200,
    };
    let events = match caller.api.audit_events(&caller.access, &query).await {
        Ok(e) => e,
        Err(e) => return caller.failed(e),
    };
    let rows = events
        .into_iter()
        .map(|e| EventRow {
            time: format::time(e.at_ms / 1000),
            actor: e.actor,
            action: e.action,
            resource: e.resource,
            outcome: e.outcome,
            client: e.client,
            detail: e.detail,
        })
        .collect();
    let page = AuditPage {
        c: Chrome::new(&caller, caller.t.get("audit.title"), "audit"),
        actor: actor.unwrap_or_default(),
        action: action.unwrap_or_default(),
        days,
        rows,
    };
    render(StatusCode::OK, &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_day_of_the_window_is_shown() {
        let activity = [
            DailyActivity {
                day: 100,
                pushes: 3,
                pulls: 9,
            },
            DailyActivity {
                day: 90,
                pushes: 1,
                pulls: 0,
            },
        ];
        let days = fill_days(&activity, 100);
        assert_eq!(days.len(), ACTIVITY_DAYS as usize);
        assert_eq!(days.last().map(|d| (d.1, d.2)), Some((3, 9)));
        assert_eq!(days[ACTIVITY_DAYS as usize - 11].1, 1);
        assert_eq!(days.iter().map(|d| d.1 + d.2).sum::<u64>(), 13);
    }

    #[test]
    fn chart_labels_are_escaped() {
        let svg = bar_chart("<t>", &[("a<b".into(), 5, "5 B".into())]);
        assert!(svg.contains("a&lt;b") && svg.contains("&lt;t&gt;"), "{svg}");
        assert!(!svg.contains("a<b"));
    }
}
