//! Library: upload (drop or pick), live progress, the list with its actions.

use dioxus::html::{FileData, HasFileData};
use dioxus::prelude::*;

use super::PAGE_SIZE;
use crate::api::Api;
use crate::app::{Route, LIBRARY, PLACE, RESYNC};
use crate::components::{ErrorNote, ProgressBar, StatusBadge};
use crate::format;
use crate::model::{FileInfo, Place, Status};
use crate::platform::PickedFile;

/// Files per upload request (the server takes up to 32 by default).
const UPLOAD_BATCH: usize = 16;

/// An upload the list does not show yet: in flight, refused, or a duplicate.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadNotice {
    pub key: u64,
    pub name: String,
    pub size: u64,
    pub state: NoticeState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NoticeState {
    /// Bytes of its request sent so far, of all (0 of 0 until the first report).
    Sending {
        sent: u64,
        total: u64,
    },
    Refused {
        code: String,
        message: String,
    },
    AlreadyThere,
}

static NOTICES: GlobalSignal<Vec<UploadNotice>> = Signal::global(Vec::new);
static NEXT_KEY: GlobalSignal<u64> = Signal::global(|| 0);

/// Sends files in batches; each file succeeds or fails on its own.
fn start_upload(files: Vec<FileData>) {
    if files.is_empty() {
        return;
    }
    spawn(async move {
        let api = Api::current();
        for chunk in files.chunks(UPLOAD_BATCH) {
            let keys: Vec<u64> = chunk
                .iter()
                .map(|f| {
                    let key = {
                        let mut k = NEXT_KEY.write();
                        *k += 1;
                        *k
                    };
                    NOTICES.write().push(UploadNotice {
                        key,
                        name: f.name(),
                        size: f.size(),
                        state: NoticeState::Sending { sent: 0, total: 0 },
                    });
                    key
                })
                .collect();
            let picked = chunk.iter().cloned().map(PickedFile).collect();
            let progress_keys = keys.clone();
            let on_progress: crate::platform::Progress = Box::new(move |sent, total| {
                let mut notices = NOTICES.write();
                for n in notices
                    .iter_mut()
                    .filter(|n| progress_keys.contains(&n.key))
                {
                    n.state = NoticeState::Sending { sent, total };
                }
            });
            match api.upload(picked, Some(on_progress)).await {
                Ok(outcomes) => {
                    for (key, outcome) in keys.iter().zip(outcomes) {
                        let state = match (&outcome.error, outcome.created) {
                            (Some(e), _) => Some(NoticeState::Refused {
                                code: e.code.clone(),
                                message: e.message.clone(),
                            }),
                            (None, false) => Some(NoticeState::AlreadyThere),
                            (None, true) => None,
                        };
                        set_notice(*key, state);
                        if let Some(file) = outcome.file {
                            LIBRARY.write().upsert(file);
                        }
                    }
                }
                Err(e) => {
                    for key in keys {
                        set_notice(
                            key,
                            Some(NoticeState::Refused {
                                code: e.code.clone(),
                                message: e.message.clone(),
                            }),
                        );
                    }
                }
            }
        }
    });
}

fn set_notice(key: u64, state: Option<NoticeState>) {
    let mut notices = NOTICES.write();
    match state {
        Some(s) => {
            if let Some(n) = notices.iter_mut().find(|n| n.key == key) {
                n.state = s;
            }
        }
        None => notices.retain(|n| n.key != key),
    }
}

#[component]
pub fn Library() -> Element {
    let mut filter = use_signal(|| None::<Status>);
    let mut load_error = use_signal(|| None::<String>);
    let mut loading_more = use_signal(|| false);
    let mut dragging = use_signal(|| false);

    // The sources, for the source filter (fetched once per visit).
    let sources = use_resource(move || async move { Api::current().sources().await });
    let mut folder_text = use_signal(|| PLACE.peek().folder.clone().unwrap_or_default());

    // The first page: on arrival, when a filter changes, after a reconnect.
    use_effect(move || {
        let status = filter();
        let place = PLACE();
        let _resync = RESYNC();
        spawn(async move {
            match Api::current().files(PAGE_SIZE, None, status, &place).await {
                Ok(page) => {
                    LIBRARY.write().reset_at(status, place, page);
                    load_error.set(None);
                }
                Err(e) => load_error.set(Some(e.message)),
            }
        });
    });

    let load_more = move |_| {
        let (cursor, status, place) = {
            let view = LIBRARY.peek();
            (view.end_cursor.clone(), view.filter, view.place.clone())
        };
        loading_more.set(true);
        spawn(async move {
            match Api::current()
                .files(PAGE_SIZE, cursor, status, &place)
                .await
            {
                Ok(page) => LIBRARY.write().append(page),
                Err(e) => load_error.set(Some(e.message)),
            }
            loading_more.set(false);
        });
    };

    let view = LIBRARY.read();
    let notices = NOTICES.read();
    let in_progress = view.in_progress();
    rsx! {
        section { class: "page library",
            div { class: "page-head",
                h1 { "Library" }
                p { class: "muted", "data-testid": "library-count",
                    "{view.total} files"
                    if in_progress > 0 { " · {in_progress} processing" }
                }
            }
            label {
                class: if dragging() { "dropzone dragging" } else { "dropzone" },
                ondragover: move |e| {
                    e.prevent_default();
                    dragging.set(true);
                },
                ondragleave: move |_| dragging.set(false),
                ondrop: move |e| {
                    e.prevent_default();
                    dragging.set(false);
                    start_upload(e.files());
                },
                input {
                    r#type: "file",
                    id: "upload-input",
                    class: "visually-hidden",
                    multiple: true,
                    accept: "audio/*,.wav,.flac,.mp3,.ogg,.oga,.m4a,.mp4,.aac",
                    onchange: move |e| start_upload(e.files()),
                }
                strong { "Drop audio files here" }
                span { class: "muted", " or click to choose · WAV, FLAC, MP3, Ogg Vorbis, M4A/AAC" }
            }
            if !notices.is_empty() {
                ul { class: "notices", "aria-live": "polite",
                    for n in notices.iter() {
                        Notice { key: "{n.key}", notice: n.clone() }
                    }
                }
            }
            div { class: "toolbar",
                label { r#for: "status-filter", "Show" }
                select {
                    id: "status-filter",
                    onchange: move |e| filter.set(Status::from_api(&e.value())),
                    option { value: "", selected: filter().is_none(), "All files" }
                    for s in Status::ALL {
                        option { key: "{s.as_api()}", value: s.as_api(), selected: filter() == Some(s), "{s.label()}" }
                    }
                }
                label { r#for: "source-filter", "from" }
                select {
                    id: "source-filter",
                    onchange: move |e| {
                        let value = e.value();
                        let mut place = PLACE.write();
                        place.source_id = (!value.is_empty()).then_some(value);
                    },
                    option { value: "", selected: PLACE().source_id.is_none(), "every source" }
                    if let Some(Ok(list)) = &*sources.read() {
                        for s in list.iter() {
                            option {
                                key: "{s.id}",
                                value: "{s.id}",
                                selected: PLACE().source_id.as_deref() == Some(s.id.as_str()),
                                if s.is_folder { "{s.path}" } else { "uploads" }
                            }
                        }
                    }
                }
                form {
                    class: "folder-filter",
                    onsubmit: move |e| {
                        e.prevent_default();
                        let text = folder_text().trim().to_string();
                        PLACE.write().folder = (!text.is_empty()).then_some(text);
                    },
                    label { r#for: "folder-filter", "in folder" }
                    input {
                        id: "folder-filter",
                        r#type: "text",
                        placeholder: "/path/to/folder",
                        value: "{folder_text}",
                        oninput: move |e| folder_text.set(e.value()),
                    }
                    button { class: "btn btn-small", r#type: "submit", "Apply" }
                }
                if !PLACE().is_all() {
                    button {
                        class: "btn btn-small btn-ghost",
                        onclick: move |_| {
                            folder_text.set(String::new());
                            *PLACE.write() = Place::default();
                        },
                        "Whole library"
                    }
                }
            }
            if let Some(e) = load_error() {
                ErrorNote { message: "Could not load the library: {e}" }
            }
            if view.loaded && view.files.is_empty() {
                p { class: "empty muted",
                    if view.filter.is_some() || !view.place.is_all() { "No files match." } else { "No files yet: drop some audio above." }
                }
            }
            ul { class: "files", "data-testid": "file-list",
                for file in view.files.iter() {
                    FileRow { key: "{file.id}", file: file.clone() }
                }
            }
            if view.has_next {
                button {
                    class: "btn load-more",
                    disabled: loading_more(),
                    onclick: load_more,
                    if loading_more() { "Loading…" } else { "Load more" }
                }
            }
        }
    }
}

#[component]
fn Notice(notice: UploadNotice) -> Element {
    let key = notice.key;
    let dismiss = move |_| set_notice(key, None);
    match notice.state {
        NoticeState::Sending { sent, total } => {
            let percent = if total > 0 {
                (sent as f64 / total as f64 * 100.0).round() as i64
            } else {
                0
            };
            let label = if total > 0 && sent >= total {
                "processing the upload…".to_string()
            } else {
                format!("{percent}%")
            };
            rsx! {
                li { class: "notice notice-sending",
                    span { class: "spinner", "aria-hidden": "true" }
                    "Uploading {notice.name} ({format::bytes(notice.size as f64)})"
                    div {
                        class: "upload-progress",
                        role: "progressbar",
                        "aria-label": "upload of {notice.name}",
                        "aria-valuemin": "0",
                        "aria-valuemax": "100",
                        "aria-valuenow": "{percent}",
                        div { class: "progress-track",
                            div { class: "progress-fill", style: "width: {percent}%" }
                        }
                    }
                    span { class: "muted", "{label}" }
                }
            }
        }
        NoticeState::Refused { code, message } => rsx! {
            li { class: "notice notice-refused", role: "alert", "data-code": "{code}",
                strong { "{notice.name}" }
                " was not added: {message}"
                button { class: "btn btn-small btn-ghost", onclick: dismiss, "Dismiss" }
            }
        },
        NoticeState::AlreadyThere => rsx! {
            li { class: "notice",
                strong { "{notice.name}" }
                " is already in the library."
                button { class: "btn btn-small btn-ghost", onclick: dismiss, "Dismiss" }
            }
        },
    }
}

/// One file: what it is, where it is in processing, what can be done.
#[component]
fn FileRow(file: FileInfo) -> Element {
    let mut confirming = use_signal(|| false);
    let mut error = use_signal(|| None::<String>);
    let nav = use_navigator();
    let id = file.id.clone();
    let delete = {
        let id = id.clone();
        move |_| {
            if !confirming() {
                confirming.set(true);
                return;
            }
            let id = id.clone();
            spawn(async move {
                match Api::current().delete(&id).await {
                    Ok(()) => {
                        LIBRARY.write().remove(&id);
                    }
                    Err(e) => error.set(Some(e.message)),
                }
                confirming.set(false);
            });
        }
    };
    let reprocess = {
        let id = id.clone();
        move |_| {
            let id = id.clone();
            spawn(async move {
                match Api::current().reprocess(&id).await {
                    Ok(file) => LIBRARY.write().upsert(file),
                    Err(e) => error.set(Some(e.message)),
                }
            });
        }
    };
    let similar = {
        let id = id.clone();
        move |_| {
            nav.push(Route::Search {
                q: String::new(),
                similar: id.clone(),
            });
        }
    };
    let format_text = match &file.codec {
        Some(codec) => format!("{} · {codec}", file.container),
        None => file.container.clone(),
    };
    rsx! {
        li { class: "file file-{file.status.css()}", "data-file-id": "{file.id}", "data-status": file.status.as_api(),
            div { class: "file-main",
                Link { class: "file-name", to: Route::FileDetail { id: id.clone(), t: 0.0 }, "{file.name}" }
                div { class: "file-meta muted",
                    span { "{format::maybe_duration(file.duration_s)}" }
                    span { "{format_text}" }
                    span { "{format::bytes(file.size_bytes)}" }
                    span { title: "uploaded", "{format::timestamp(&file.created_at)}" }
                }
            }
            div { class: "file-state",
                StatusBadge { status: file.status }
                ProgressBar { status: file.status, done: file.windows_done, total: file.windows_total }
            }
            div { class: "file-actions",
                if file.status == Status::Indexed {
                    button { class: "btn btn-small btn-ghost", onclick: similar, "More like this" }
                }
                if file.status == Status::Failed || file.status == Status::Indexed {
                    button { class: "btn btn-small btn-ghost", onclick: reprocess, "Reprocess" }
                }
                button {
                    class: if confirming() { "btn btn-small btn-danger" } else { "btn btn-small btn-ghost" },
                    "aria-label": "Delete {file.name}",
                    onclick: delete,
                    onblur: move |_| confirming.set(false),
                    if confirming() { "Confirm delete" } else { "Delete" }
                }
            }
            if let Some(message) = &file.error_message {
                p { class: "file-error", role: "note",
                    if let Some(code) = &file.error_code { code { "{code}" } " " }
                    "{message}"
                }
            }
            if let Some(e) = error() {
                ErrorNote { message: e }
            }
        }
    }
}
