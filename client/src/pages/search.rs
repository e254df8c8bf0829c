//! Search: by words (as you type), by a clip, or "more like this"; the
//! ranked results with a player that starts at the matching window.

use dioxus::html::HasFileData;
use dioxus::prelude::*;

use super::ResultList;
use crate::api::{Api, ApiError};
use crate::components::ErrorNote;
use crate::format;
use crate::model::{SearchOptions, SearchResults, FORMATS};
use crate::platform::{self, PickedFile};

/// Typing pauses this long before a search goes out.
pub const DEBOUNCE_MS: u32 = 300;

/// What is being searched for.
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Nothing,
    Text(String),
    Clip(PickedFile),
    Similar(String),
}

impl Query {
    /// The query a route asks for: "more like this" wins over text.
    pub fn from_route(q: &str, similar: &str) -> Query {
        if !similar.trim().is_empty() {
            Query::Similar(similar.trim().to_string())
        } else if !q.trim().is_empty() {
            Query::Text(q.trim().to_string())
        } else {
            Query::Nothing
        }
    }
}

/// Options from the form's text fields; a field that is not a number is
/// left out rather than guessed.
pub fn options_from_form(
    limit: &str,
    threshold: &str,
    min_duration: &str,
    max_duration: &str,
    formats: &[String],
) -> SearchOptions {
    SearchOptions {
        limit: format::parse_number(limit)
            .map(|v| (v.round() as i64).clamp(1, 100))
            .unwrap_or(10),
        threshold: format::parse_number(threshold).map(|v| v.clamp(-1.0, 1.0)),
        min_duration_s: format::parse_number(min_duration).filter(|v| *v >= 0.0),
        max_duration_s: format::parse_number(max_duration).filter(|v| *v >= 0.0),
        formats: formats.to_vec(),
    }
}

#[component]
pub fn Search(q: String, similar: String) -> Element {
    let mut text = use_signal(String::new);
    let mut query = use_signal(|| Query::Nothing);
    let mut results = use_signal(|| None::<Result<SearchResults, ApiError>>);
    let mut busy = use_signal(|| false);
    let mut generation = use_signal(|| 0u64);
    let mut typing = use_signal(|| 0u64);
    let mut playing = use_signal(|| None::<String>);
    let mut dragging = use_signal(|| false);
    // The form's raw fields.
    let mut limit = use_signal(|| "10".to_string());
    let mut threshold = use_signal(String::new);
    let mut min_duration = use_signal(String::new);
    let mut max_duration = use_signal(String::new);
    let mut formats = use_signal(Vec::<String>::new);

    // The route's query (also when "more like this" lands here from here).
    use_effect(use_reactive!(|q, similar| {
        let from_route = Query::from_route(&q, &similar);
        if let Query::Text(t) = &from_route {
            text.set(t.clone());
        }
        if from_route != Query::Nothing {
            query.set(from_route);
        }
    }));

    let options = use_memo(move || {
        options_from_form(
            &limit(),
            &threshold(),
            &min_duration(),
            &max_duration(),
            &formats(),
        )
    });

    // Runs when the query or the options change; only the newest answer shows.
    use_effect(move || {
        let current = query();
        let opts = options();
        let ticket = {
            let mut g = generation.write();
            *g += 1;
            *g
        };
        if current == Query::Nothing {
            results.set(None);
            busy.set(false);
            return;
        }
        busy.set(true);
        spawn(async move {
            let api = Api::current();
            let answer = match current {
                Query::Text(t) => api.search_text(&t, &opts).await,
                Query::Clip(clip) => api.search_audio(clip, &opts).await,
                Query::Similar(id) => api.similar(&id, &opts).await,
                Query::Nothing => return,
            };
            if *generation.peek() == ticket {
                playing.set(None);
                results.set(Some(answer));
                busy.set(false);
            }
        });
    });

    // The file "more like this" started from, for the heading.
    let similar_to = use_resource(move || async move {
        match query() {
            Query::Similar(id) => Api::current()
                .file(&id)
                .await
                .ok()
                .flatten()
                .map(|f| f.name),
            _ => None,
        }
    });

    let on_input = move |e: FormEvent| {
        let value = e.value();
        text.set(value.clone());
        let ticket = {
            let mut t = typing.write();
            *t += 1;
            *t
        };
        spawn(async move {
            platform::sleep_ms(DEBOUNCE_MS).await;
            if *typing.peek() == ticket {
                query.set(Query::from_route(&value, ""));
            }
        });
    };

    let heading = match query() {
        Query::Nothing => None,
        Query::Text(t) => Some(format!("Sounds like “{t}”")),
        Query::Clip(c) => Some(format!("Sounds like the clip {}", c.name())),
        Query::Similar(id) => Some(match similar_to.read().as_ref().cloned().flatten() {
            Some(name) => format!("More like {name}"),
            None => format!("More like file {id}"),
        }),
    };

    rsx! {
        section { class: "page search",
            div { class: "page-head", h1 { "Search" } }
            form {
                class: "searchbar",
                role: "search",
                onsubmit: move |e| {
                    e.prevent_default();
                    *typing.write() += 1;
                    query.set(Query::from_route(&text(), ""));
                },
                input {
                    r#type: "search",
                    id: "search-text",
                    "aria-label": "Describe a sound",
                    placeholder: "warm analog bass with slow attack",
                    autocomplete: "off",
                    autofocus: true,
                    value: "{text}",
                    oninput: on_input,
                }
                button { class: "btn", r#type: "submit", "Search" }
            }
            div { class: "search-grid",
                aside { class: "options",
                    label {
                        class: if dragging() { "dropzone small dragging" } else { "dropzone small" },
                        ondragover: move |e| {
                            e.prevent_default();
                            dragging.set(true);
                        },
                        ondragleave: move |_| dragging.set(false),
                        ondrop: move |e| {
                            e.prevent_default();
                            dragging.set(false);
                            if let Some(f) = e.files().into_iter().next() {
                                query.set(Query::Clip(PickedFile(f)));
                            }
                        },
                        input {
                            r#type: "file",
                            id: "clip-input",
                            class: "visually-hidden",
                            accept: "audio/*,.wav,.flac,.mp3,.ogg,.oga,.m4a,.mp4,.aac",
                            onchange: move |e| {
                                if let Some(f) = e.files().into_iter().next() {
                                    query.set(Query::Clip(PickedFile(f)));
                                }
                            },
                        }
                        strong { "Search with a clip" }
                        span { class: "muted", " drop or choose one" }
                    }
                    fieldset {
                        legend { "Results" }
                        label { "Limit"
                            input { r#type: "number", min: "1", max: "100", value: "{limit}",
                                oninput: move |e| limit.set(e.value()) }
                        }
                        label { "Minimum score"
                            input { r#type: "number", min: "-1", max: "1", step: "0.05", placeholder: "any",
                                value: "{threshold}", oninput: move |e| threshold.set(e.value()) }
                        }
                    }
                    fieldset {
                        legend { "Duration (s)" }
                        div { class: "row",
                            input { r#type: "number", min: "0", placeholder: "min", "aria-label": "Shortest duration in seconds",
                                value: "{min_duration}", oninput: move |e| min_duration.set(e.value()) }
                            input { r#type: "number", min: "0", placeholder: "max", "aria-label": "Longest duration in seconds",
                                value: "{max_duration}", oninput: move |e| max_duration.set(e.value()) }
                        }
                    }
                    fieldset {
                        legend { "Formats" }
                        for f in FORMATS {
                            label { key: "{f}", class: "check",
                                input {
                                    r#type: "checkbox",
                                    checked: formats().iter().any(|g| g == f),
                                    onchange: move |e| {
                                        let on = e.checked();
                                        let mut list = formats.write();
                                        list.retain(|g| g != f);
                                        if on {
                                            list.push(f.to_string());
                                        }
                                    },
                                }
                                "{f}"
                            }
                        }
                    }
                }
                div { class: "results-panel", "aria-live": "polite", "aria-busy": "{busy}",
                    if let Some(h) = heading {
                        h2 { class: "results-heading", "{h}" }
                    }
                    match results() {
                        None if busy() => rsx! { p { class: "muted", "Searching…" } },
                        None => rsx! {
                            p { class: "muted empty",
                                "Describe a sound, drop a clip, or pick “More like this” on a file."
                            }
                        },
                        Some(Err(e)) => rsx! { ErrorNote { message: "Search failed: {e.message}" } },
                        Some(Ok(found)) => rsx! {
                            p { class: "muted", "data-testid": "result-summary",
                                "{found.hits.len()} results in {format::millis(found.latency_ms)}"
                                if busy() { " · updating…" }
                            }
                            if found.hits.is_empty() {
                                p { class: "empty", "Nothing matched. Lower the minimum score or widen the filters." }
                            }
                            ResultList { hits: found.hits.clone(), playing, test_id: "results" }
                        },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_queries() {
        assert_eq!(Query::from_route("", ""), Query::Nothing);
        assert_eq!(Query::from_route("  kick ", ""), Query::Text("kick".into()));
        assert_eq!(
            Query::from_route("kick", "abc"),
            Query::Similar("abc".into())
        );
    }

    #[test]
    fn form_fields_become_options() {
        let o = options_from_form("250", "0.3", "", "12,5", &["wav".into()]);
        assert_eq!(o.limit, 100);
        assert_eq!(o.threshold, Some(0.3));
        assert_eq!(o.min_duration_s, None);
        assert_eq!(o.max_duration_s, Some(12.5));
        assert!(o.has_filter());
        let o = options_from_form("abc", "", "-3", "", &[]);
        assert_eq!(o.limit, 10);
        assert_eq!(o.min_duration_s, None);
        assert!(!o.has_filter());
    }
}
