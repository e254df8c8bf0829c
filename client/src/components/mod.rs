//! Pieces the pages share. Each takes plain props, so it renders (and is
//! tested) without a server.

use dioxus::prelude::*;

use crate::format;
use crate::live::ConnState;
use crate::model::{Hit, Status};

pub mod charts;

/// Processing progress as a share and a label.
pub fn progress(status: Status, done: i64, total: i64) -> (f64, String) {
    let share = |d: i64, t: i64| {
        if t > 0 {
            (d as f64 / t as f64).clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    match status {
        Status::Queued => (0.0, "Queued".into()),
        Status::Decoding => (share(done, total), "Decoding…".into()),
        Status::Embedding if total > 0 => (
            share(done, total),
            format!("Embedding {done}/{total} windows"),
        ),
        Status::Embedding => (0.0, "Embedding…".into()),
        Status::Indexed if total == 1 => (1.0, "1 window embedded".into()),
        Status::Indexed => (1.0, format!("{total} windows embedded")),
        Status::Failed => (share(done, total), "Failed".into()),
    }
}

/// A file's state as a coloured word.
#[component]
pub fn StatusBadge(status: Status) -> Element {
    rsx! {
        span { class: "badge badge-{status.css()}", "{status.label()}" }
    }
}

/// A file's processing progress: a bar, its stage, windows done.
#[component]
pub fn ProgressBar(status: Status, done: i64, total: i64) -> Element {
    let (share, label) = progress(status, done, total);
    let percent = (share * 100.0).round() as i64;
    rsx! {
        div {
            class: "progress progress-{status.css()}",
            role: "progressbar",
            "aria-label": "{label}",
            "aria-valuemin": "0",
            "aria-valuemax": "100",
            "aria-valuenow": "{percent}",
            "data-status": status.as_api(),
            div { class: "progress-track",
                div { class: "progress-fill", style: "width: {percent}%" }
            }
            span { class: "progress-label", "{label}" }
        }
    }
}

/// A similarity score as a bar and a number.
#[component]
pub fn ScoreBar(score: f64) -> Element {
    let percent = format::score_fraction(score) * 100.0;
    rsx! {
        div { class: "score", title: "cosine similarity {score:.3}",
            div { class: "score-track",
                div { class: "score-fill", style: "width: {percent:.1}%" }
            }
            span { class: "score-value", "{score:.3}" }
        }
    }
}

/// Says when the live connection is down, and when it tries again.
#[component]
pub fn ConnectionBanner(state: ConnState) -> Element {
    match state {
        ConnState::Online => rsx! {},
        ConnState::Connecting => rsx! {
            div { class: "banner banner-connecting", role: "status", "Connecting to the server…" }
        },
        ConnState::Offline {
            retry_in_s,
            attempt,
            reason,
        } => rsx! {
            div { class: "banner banner-offline", role: "alert", "data-offline": "true",
                strong { "Offline. " }
                "Live updates are paused; reconnecting in {retry_in_s} s (attempt {attempt})."
                span { class: "banner-reason", " {reason}" }
            }
        },
    }
}

/// A small dot for the header: green online, amber connecting, red offline.
#[component]
pub fn ConnectionDot(state: ConnState) -> Element {
    let (class, label) = match state {
        ConnState::Online => ("dot dot-online", "Live"),
        ConnState::Connecting => ("dot dot-connecting", "Connecting"),
        ConnState::Offline { .. } => ("dot dot-offline", "Offline"),
    };
    rsx! {
        span { class: "conn", "data-conn": label, title: "live updates: {label}",
            span { class: class, "aria-hidden": "true" }
            "{label}"
        }
    }
}

/// One ranked search result: score, where it matched, play from there.
#[component]
pub fn ResultCard(
    rank: usize,
    hit: Hit,
    /// Absolute audio URL (desktop needs the host).
    audio_url: String,
    playing: bool,
    on_play: EventHandler<()>,
    on_similar: EventHandler<String>,
    on_open: EventHandler<(String, f64)>,
) -> Element {
    let start = hit.window.map(|w| w.0).unwrap_or(0.0);
    let window = match hit.window {
        Some((s, e)) => format!("{}–{}", format::duration(s), format::duration(e)),
        None => "whole file".into(),
    };
    let id = hit.file.id.clone();
    let id_open = hit.file.id.clone();
    rsx! {
        li { class: "result", "data-file-id": "{hit.file.id}",
            div { class: "result-rank", "{rank}" }
            div { class: "result-body",
                div { class: "result-head",
                    button {
                        class: "link result-name",
                        onclick: move |_| on_open.call((id_open.clone(), start)),
                        "{hit.file.name}"
                    }
                    span { class: "muted",
                        "{hit.file.container} · {format::maybe_duration(hit.file.duration_s)}"
                    }
                }
                ScoreBar { score: hit.score }
                div { class: "result-actions",
                    span { class: "window", title: "best-matching 10 s window", "match at {window}" }
                    button {
                        class: "btn btn-small",
                        "aria-pressed": "{playing}",
                        onclick: move |_| on_play.call(()),
                        if playing { "Stop" } else { "▶ Play from {format::duration(start)}" }
                    }
                    button {
                        class: "btn btn-small btn-ghost",
                        onclick: move |_| on_similar.call(id.clone()),
                        "More like this"
                    }
                }
                if playing {
                    audio {
                        class: "player",
                        controls: true,
                        autoplay: true,
                        preload: "auto",
                        src: "{audio_url}#t={start}",
                    }
                }
            }
        }
    }
}

/// A labelled number.
#[component]
pub fn Stat(label: String, value: String, #[props(default)] hint: String) -> Element {
    rsx! {
        div { class: "stat",
            div { class: "stat-value", "{value}" }
            div { class: "stat-label", "{label}" }
            if !hint.is_empty() {
                div { class: "stat-hint muted", "{hint}" }
            }
        }
    }
}

/// An error a person can act on.
#[component]
pub fn ErrorNote(message: String) -> Element {
    rsx! {
        div { class: "error-note", role: "alert", "{message}" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FileInfo;

    fn render(element: Element) -> String {
        dioxus_ssr::render_element(element)
    }

    #[test]
    fn progress_follows_the_stage() {
        assert_eq!(progress(Status::Queued, 0, 0), (0.0, "Queued".to_string()));
        assert_eq!(progress(Status::Embedding, 2, 5).0, 0.4);
        assert_eq!(progress(Status::Embedding, 2, 5).1, "Embedding 2/5 windows");
        assert_eq!(progress(Status::Embedding, 0, 0).1, "Embedding…");
        // More done than the estimate said: full, never past it.
        assert_eq!(progress(Status::Embedding, 7, 5).0, 1.0);
        assert_eq!(
            progress(Status::Indexed, 1, 1),
            (1.0, "1 window embedded".to_string())
        );
    }

    #[test]
    fn progress_bar_renders_its_share() {
        let html = render(rsx! { ProgressBar { status: Status::Embedding, done: 2, total: 5 } });
        assert!(html.contains(r#"aria-valuenow="40""#), "{html}");
        assert!(html.contains("width: 40%"), "{html}");
        assert!(html.contains("Embedding 2/5 windows"), "{html}");
        assert!(html.contains(r#"data-status="EMBEDDING""#), "{html}");
        let done = render(rsx! { ProgressBar { status: Status::Indexed, done: 5, total: 5 } });
        assert!(done.contains(r#"aria-valuenow="100""#), "{done}");
        assert!(done.contains("5 windows embedded"), "{done}");
    }

    #[test]
    fn score_bar_clamps_negative_cosines() {
        let html = render(rsx! { ScoreBar { score: -0.25 } });
        assert!(html.contains("width: 0.0%"), "{html}");
        assert!(html.contains("-0.250"), "{html}");
        let html = render(rsx! { ScoreBar { score: 0.8125 } });
        assert!(
            html.contains("width: 81.2%") || html.contains("width: 81.3%"),
            "{html}"
        );
    }

    #[test]
    fn banner_says_offline_and_when_it_retries() {
        assert_eq!(
            render(rsx! { ConnectionBanner { state: ConnState::Online } }),
            ""
        );
        let html = render(rsx! {
            ConnectionBanner {
                state: ConnState::Offline { retry_in_s: 4, attempt: 3, reason: "connection refused".into() }
            }
        });
        assert!(html.contains("Offline"), "{html}");
        assert!(html.contains("reconnecting in 4 s (attempt 3)"), "{html}");
        assert!(html.contains("connection refused"), "{html}");
        assert!(html.contains(r#"role="alert""#), "{html}");
    }

    fn hit(window: Option<(f64, f64)>) -> Hit {
        Hit {
            file: FileInfo {
                id: "f1".into(),
                name: "pad.flac".into(),
                size_bytes: 1.0,
                container: "flac".into(),
                codec: None,
                duration_s: Some(95.0),
                sample_rate: None,
                channels: None,
                status: Status::Indexed,
                windows_done: 10,
                windows_total: 10,
                error_code: None,
                error_message: None,
                created_at: String::new(),
                url: "/files/f1".into(),
            },
            score: 0.5,
            window,
        }
    }

    /// Components with callbacks need a runtime: render them in a VirtualDom.
    fn render_app(app: fn() -> Element) -> String {
        let mut dom = VirtualDom::new(app);
        dom.rebuild_in_place();
        dioxus_ssr::render(&dom)
    }

    #[test]
    fn result_card_plays_from_the_matching_window() {
        fn playing() -> Element {
            rsx! {
                ResultCard {
                    rank: 2,
                    hit: hit(Some((70.0, 80.0))),
                    audio_url: "/files/f1",
                    playing: true,
                    on_play: |_| {},
                    on_similar: |_| {},
                    on_open: |_| {},
                }
            }
        }
        fn idle() -> Element {
            rsx! {
                ResultCard {
                    rank: 1,
                    hit: hit(None),
                    audio_url: "/files/f1",
                    playing: false,
                    on_play: |_| {},
                    on_similar: |_| {},
                    on_open: |_| {},
                }
            }
        }
        let html = render_app(playing);
        assert!(html.contains("match at 1:10–1:20"), "{html}");
        assert!(html.contains(r#"src="/files/f1#t=70""#), "{html}");
        assert!(
            html.contains("pad.flac") && html.contains("flac · 1:35"),
            "{html}"
        );
        let html = render_app(idle);
        assert!(!html.contains("<audio"), "{html}");
        assert!(
            html.contains("whole file") && html.contains("Play from 0:00"),
            "{html}"
        );
    }
}
