//! System: is the server up, what it runs, how busy it is; live.

use dioxus::prelude::*;

use crate::api::Api;
use crate::app::{use_library_changes, CONNECTION};
use crate::components::{ConnectionDot, ErrorNote, Stat};
use crate::format;

#[component]
pub fn System() -> Element {
    let changes = use_library_changes(1000);
    let health = use_resource(move || async move {
        let _ = changes();
        // Reconnected: the server may be a new process.
        let _ = CONNECTION();
        Api::current().health().await
    });
    let api = Api::current();
    let body = match &*health.read() {
        None => rsx! { p { class: "muted", "Loading…" } },
        Some(Err(e)) => rsx! { ErrorNote { message: "The server does not answer: {e.message}" } },
        Some(Ok(h)) => rsx! {
            div { class: "stats",
                Stat { label: "server", value: h.status.clone(), hint: format!("version {}", h.version) }
                Stat { label: "up for", value: format::span(h.uptime_s) }
                Stat { label: "queued", value: h.queue.queued.to_string() }
                Stat { label: "processing", value: h.queue.processing.to_string() }
                Stat { label: "waiting for the model", value: h.queue.embed_pending.to_string(), hint: "windows and texts".to_string() }
                Stat { label: "ready", value: h.queue.indexed.to_string() }
                Stat { label: "failed", value: h.queue.failed.to_string() }
            }
            h2 { "Model" }
            dl { class: "facts",
                dt { "Checkpoint" } dd { code { "{h.model.id}" } }
                dt { "Index" } dd { code { "{h.model.key}" } }
                dt { "Device" } dd { "{h.model.device}" }
                dt { "Precision" } dd { "{h.model.dtype}" }
                dt { "Loaded" } dd { if h.model.loaded { "yes" } else { "no" } }
                dt { "Embedding size" } dd { "{h.model.embedding_dim}" }
                dt { "Audio" } dd { "{h.model.sample_rate} Hz, {h.model.window_s} s windows" }
                dt { "Batch" } dd { "up to {h.model.max_batch} per forward pass" }
            }
            if let Some(r) = &h.reindex {
                h2 { "Reindex" }
                dl { class: "facts", "data-testid": "reindex",
                    dt { "New model" } dd { code { "{r.key}" } }
                    dt { "State" } dd { "{reindex_state(&r.state)}" }
                    dt { "Files" } dd { "{r.files_done} of {r.files_total} embedded, {r.files_failed} failed" }
                    if let Some(e) = &r.error {
                        dt { "Last error" } dd { "{e}" }
                    }
                }
            }
            h2 { "Vector store" }
            dl { class: "facts",
                dt { "Kind" } dd { "{h.vector_store.kind}" }
                dt { "File vectors" } dd { "{h.vector_store.files as i64}" }
                dt { "Window vectors" } dd { "{h.vector_store.windows as i64}" }
                dt { "Points" } dd { "{h.vector_store.points as i64}" }
            }
        },
    };
    rsx! {
        section { class: "page system",
            div { class: "page-head",
                h1 { "System" }
                ConnectionDot { state: CONNECTION() }
            }
            p { class: "muted", "Server: " code { "{api.base()}" } }
            {body}
        }
    }
}

/// What a reindex's state means, for people.
fn reindex_state(state: &crate::api::health::ModelIndexState) -> &'static str {
    use crate::api::health::ModelIndexState as S;
    match state {
        S::BUILDING => "embedding the library with the new model; search uses the current one",
        S::READY => "complete: switchModel makes it active",
        S::ACTIVE => "switched: the new model serves search",
        S::RETIRED => "retired",
        S::Other(_) => "unknown",
    }
}
