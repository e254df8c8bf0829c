//! Analytics: what the library is made of, and how search is used.

use dioxus::prelude::*;

use crate::api::{analytics, Api};
use crate::app::{use_library_changes, Route};
use crate::components::charts::{Bar, BarChart, ColumnChart};
use crate::components::{ErrorNote, Stat};
use crate::format;

fn plural(n: i64, one: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {one}s")
    }
}

fn kind_label(kind: &analytics::SearchKind) -> &'static str {
    match kind {
        analytics::SearchKind::TEXT => "text",
        analytics::SearchKind::AUDIO => "clip",
        analytics::SearchKind::SIMILAR => "similar",
        analytics::SearchKind::Other(_) => "other",
    }
}

#[component]
pub fn Analytics() -> Element {
    let changes = use_library_changes(2000);
    let data = use_resource(move || async move {
        let _ = changes();
        Api::current().analytics(30).await
    });

    let body = match &*data.read() {
        None => rsx! { p { class: "muted", "Loading…" } },
        Some(Err(e)) => rsx! { ErrorNote { message: "Could not load analytics: {e.message}" } },
        Some(Ok(d)) => {
            let lib = &d.library_stats;
            let stats = &d.search_stats;
            let q = &d.health.queue;
            let formats: Vec<Bar> = lib
                .formats
                .iter()
                .map(|f| Bar {
                    label: f.format.clone(),
                    value: f.files as f64,
                    text: format!("{} · {}", plural(f.files, "file"), format::bytes(f.bytes)),
                })
                .collect();
            let status_bars: Vec<Bar> = [
                ("ready", q.indexed),
                ("processing", q.processing),
                ("queued", q.queued),
                ("failed", q.failed),
            ]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(label, n)| Bar {
                label: label.into(),
                value: n as f64,
                text: n.to_string(),
            })
            .collect();
            let kinds: Vec<Bar> = [
                ("text", stats.text),
                ("clip", stats.audio),
                ("similar", stats.similar),
            ]
            .into_iter()
            .map(|(label, n)| Bar {
                label: label.into(),
                value: n as f64,
                text: n.to_string(),
            })
            .collect();
            // Oldest first, left to right.
            let latencies: Vec<f64> = d
                .recent_searches
                .iter()
                .rev()
                .map(|s| s.latency_ms)
                .collect();
            rsx! {
                div { class: "stats",
                    Stat { label: "files", value: lib.files.to_string() }
                    Stat { label: "of audio", value: format::span(lib.duration_s) }
                    Stat { label: "stored", value: format::bytes(lib.bytes) }
                    Stat { label: "vectors", value: format!("{}", d.health.vector_store.points as i64),
                        hint: format!("{} files, {} windows", d.health.vector_store.files as i64, d.health.vector_store.windows as i64) }
                    Stat { label: "searches", value: stats.total.to_string() }
                    Stat { label: "mean latency", value: stats.mean_latency_ms.map(format::millis).unwrap_or("–".into()) }
                    Stat { label: "p95 latency", value: stats.p95_latency_ms.map(format::millis).unwrap_or("–".into()) }
                }
                div { class: "charts",
                    BarChart { title: "Files by format", bars: formats }
                    BarChart { title: "Files by state", bars: status_bars }
                    BarChart { title: "Searches by kind", bars: kinds }
                    ColumnChart { title: "Latency of the last {latencies.len()} searches", values: latencies, unit: "ms" }
                }
                h2 { "Recent searches" }
                if d.recent_searches.is_empty() {
                    p { class: "muted", "No searches yet." }
                } else {
                    table { class: "table",
                        thead { tr { th { "When" } th { "Kind" } th { "Query" } th { class: "num", "Results" } th { class: "num", "Latency" } } }
                        tbody {
                            for s in d.recent_searches.iter() {
                                tr { key: "{s.id}",
                                    td { "{format::timestamp(&s.created_at)}" }
                                    td { "{kind_label(&s.kind)}" }
                                    td { class: "query",
                                        match (&s.kind, &s.query_text) {
                                            // A similar search logs the file id: link to the file.
                                            (analytics::SearchKind::SIMILAR, Some(id)) => rsx! {
                                                Link { to: Route::FileDetail { id: id.clone(), t: 0.0 },
                                                    "file {id.get(..8).unwrap_or(id)}…"
                                                }
                                            },
                                            (_, text) => rsx! { "{text.clone().unwrap_or_default()}" },
                                        }
                                    }
                                    td { class: "num", "{s.result_count}" }
                                    td { class: "num", "{format::millis(s.latency_ms)}" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    rsx! {
        section { class: "page analytics",
            div { class: "page-head", h1 { "Analytics" } }
            {body}
        }
    }
}
