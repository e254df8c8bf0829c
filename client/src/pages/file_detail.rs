//! One file: its facts, a player that starts where the search matched, and
//! more like it.

use dioxus::prelude::*;

use super::ResultList;
use crate::api::Api;
use crate::app::{use_library_changes, Route};
use crate::components::{ErrorNote, ProgressBar, StatusBadge};
use crate::format;
use crate::model::{SearchOptions, Status};

#[component]
pub fn FileDetail(id: String, t: f64) -> Element {
    let changes = use_library_changes(1000);
    let playing = use_signal(|| None::<String>);

    let file = use_resource(use_reactive!(|id| async move {
        let _ = changes();
        Api::current().file(&id).await
    }));
    let similar = use_resource(use_reactive!(|id| async move {
        Api::current()
            .similar(
                &id,
                &SearchOptions {
                    limit: 5,
                    ..Default::default()
                },
            )
            .await
    }));

    let body = match &*file.read() {
        None => rsx! { p { class: "muted", "Loading…" } },
        Some(Err(e)) => rsx! { ErrorNote { message: "Could not load the file: {e.message}" } },
        Some(Ok(None)) => rsx! {
            h1 { "No such file" }
            p { "It may have been deleted. " Link { to: Route::Library {}, "Back to the library" } }
        },
        Some(Ok(Some(f))) => {
            let audio_url = Api::current().absolute(&f.url);
            let start = if t.is_finite() && t > 0.0 { t } else { 0.0 };
            rsx! {
                div { class: "page-head",
                    h1 { class: "file-title", "{f.name}" }
                    StatusBadge { status: f.status }
                }
                if f.status.in_progress() {
                    ProgressBar { status: f.status, done: f.windows_done, total: f.windows_total }
                }
                div { class: "player-card",
                    audio {
                        id: "player",
                        class: "player",
                        controls: true,
                        preload: "metadata",
                        src: "{audio_url}#t={start}",
                    }
                    if start > 0.0 {
                        p { class: "muted", "Starts at {format::duration(start)}, where the search matched." }
                    }
                }
                dl { class: "facts",
                    dt { "Duration" } dd { "{format::maybe_duration(f.duration_s)}" }
                    dt { "Format" } dd { "{f.container}" if let Some(c) = &f.codec { " · {c}" } }
                    dt { "Sample rate" } dd { if let Some(r) = f.sample_rate { "{r} Hz" } else { "–" } }
                    dt { "Channels" } dd { if let Some(c) = f.channels { "{c}" } else { "–" } }
                    dt { "Size" } dd { "{format::bytes(f.size_bytes)}" }
                    dt { "Uploaded" } dd { "{format::timestamp(&f.created_at)}" }
                    dt { "Windows" } dd { "{f.windows_done} of {f.windows_total} embedded" }
                }
                if let Some(message) = &f.error_message {
                    ErrorNote { message: message.clone() }
                }
                a { class: "btn btn-ghost", href: "{audio_url}", download: "{f.name}", "Download original" }
                if f.status == Status::Indexed {
                    h2 { "More like this" }
                    match &*similar.read() {
                        None => rsx! { p { class: "muted", "Searching…" } },
                        Some(Err(e)) => rsx! { ErrorNote { message: e.message.clone() } },
                        Some(Ok(found)) if found.hits.is_empty() => rsx! { p { class: "muted", "Nothing else in the library yet." } },
                        Some(Ok(found)) => rsx! {
                            ResultList { hits: found.hits.clone(), playing }
                        },
                    }
                }
            }
        }
    };
    rsx! {
        section { class: "page file-detail", {body} }
    }
}
