//! Sources: the folders the server reads in place (and the uploads): add one by path,
//! watch its scan live, rescan it, remove it, or list its files.

use dioxus::prelude::*;

use crate::api::Api;
use crate::app::{use_library_changes, Route, PLACE, SCANS};
use crate::components::ErrorNote;
use crate::format;
use crate::model::{Place, SourceInfo, SourceState};

#[component]
pub fn Sources() -> Element {
    let mut path = use_signal(String::new);
    let mut adding = use_signal(|| false);
    let mut error = use_signal(|| None::<String>);
    let mut reload = use_signal(|| 0u64);
    let changes = use_library_changes(1000);
    // Refetched when asked, when files change (counts), and when a scan ends (its final
    // counters and state are the row's).
    let scans_ended = use_memo(move || {
        SCANS
            .read()
            .values()
            .filter(|s| s.state != SourceState::Scanning)
            .count()
    });
    let sources = use_resource(move || async move {
        let _ = (reload(), changes(), scans_ended());
        Api::current().sources().await
    });
    let add = move |e: FormEvent| {
        e.prevent_default();
        let folder = path().trim().to_string();
        if folder.is_empty() {
            error.set(Some(
                "Type the folder's path on the server, e.g. /srv/samples".into(),
            ));
            return;
        }
        adding.set(true);
        spawn(async move {
            match Api::current().add_folder(&folder).await {
                Ok(_) => {
                    path.set(String::new());
                    error.set(None);
                    reload += 1;
                }
                Err(e) => error.set(Some(e.message)),
            }
            adding.set(false);
        });
    };
    let scans = SCANS.read();
    let list = match &*sources.read() {
        None => rsx! { p { class: "muted", "Loading…" } },
        Some(Err(e)) => rsx! { ErrorNote { message: "Could not load the sources: {e.message}" } },
        Some(Ok(list)) if list.is_empty() => rsx! {
            p { class: "empty muted", "No sources yet: add a folder above, or upload files in the Library." }
        },
        Some(Ok(list)) => rsx! {
            ul { class: "sources", "data-testid": "source-list",
                for s in list.iter() {
                    SourceRow {
                        key: "{s.id}",
                        source: s.clone().with_scan(scans.get(&s.id)),
                        on_change: move |_| reload += 1,
                    }
                }
            }
        },
    };
    rsx! {
        section { class: "page sources",
            div { class: "page-head",
                h1 { "Sources" }
                p { class: "muted", "Folders are read where they are (nothing is copied), scanned, and watched for changes." }
            }
            form { class: "add-folder", onsubmit: add,
                label { r#for: "folder-path", "Folder on the server" }
                input {
                    id: "folder-path",
                    r#type: "text",
                    placeholder: "/srv/samples",
                    value: "{path}",
                    oninput: move |e| path.set(e.value()),
                }
                button { class: "btn", r#type: "submit", disabled: adding(),
                    if adding() { "Adding…" } else { "Add folder" }
                }
            }
            if let Some(e) = error() {
                ErrorNote { message: e }
            }
            {list}
        }
    }
}

/// One source: where it is, how its scan stands, what can be done.
#[component]
fn SourceRow(source: SourceInfo, on_change: EventHandler<()>) -> Element {
    let mut confirming = use_signal(|| false);
    let mut error = use_signal(|| None::<String>);
    let nav = use_navigator();
    let id = source.id.clone();
    let rescan = {
        let id = id.clone();
        move |_| {
            let id = id.clone();
            spawn(async move {
                match Api::current().rescan_folder(&id).await {
                    Ok(()) => on_change.call(()),
                    Err(e) => error.set(Some(e.message)),
                }
            });
        }
    };
    let remove = {
        let id = id.clone();
        move |keep_files: bool| {
            let id = id.clone();
            spawn(async move {
                match Api::current().remove_folder(&id, keep_files).await {
                    Ok(()) => on_change.call(()),
                    Err(e) => error.set(Some(e.message)),
                }
                confirming.set(false);
            });
        }
    };
    let show_files = {
        let id = id.clone();
        move |_| {
            *PLACE.write() = Place {
                source_id: Some(id.clone()),
                folder: None,
            };
            nav.push(Route::Library {});
        }
    };
    let name = if source.is_folder {
        source.path.clone()
    } else {
        "Uploads".to_string()
    };
    rsx! {
        li { class: "source", "data-source-id": "{source.id}", "data-state": "{source.state.label()}",
            div { class: "source-main",
                strong { class: "source-path", "{name}" }
                div { class: "muted",
                    span { "{source.file_count} files" }
                    if let Some(at) = &source.scanned_at {
                        span { " · scanned {format::timestamp(at)}" }
                    }
                }
            }
            div { class: "source-state",
                if source.is_folder {
                    span { class: "badge badge-{source.state.css()}", "{source.state.label()}" }
                    span { class: "muted scan-counts", "aria-live": "polite", "{source.counts.summary()}" }
                }
            }
            div { class: "source-actions",
                button { class: "btn btn-small btn-ghost", onclick: show_files, "Show files" }
                if source.is_folder && source.state != SourceState::Detached {
                    button {
                        class: "btn btn-small btn-ghost",
                        disabled: source.state == SourceState::Scanning,
                        onclick: rescan,
                        "Rescan"
                    }
                    if confirming() {
                        button {
                            class: "btn btn-small",
                            onclick: {
                                let remove = remove.clone();
                                move |_| remove(true)
                            },
                            "Remove, keep its files"
                        }
                        button { class: "btn btn-small btn-danger", onclick: move |_| remove(false),
                            "Remove with its files"
                        }
                        button { class: "btn btn-small btn-ghost", onclick: move |_| confirming.set(false), "Cancel" }
                    } else {
                        button { class: "btn btn-small btn-ghost", onclick: move |_| confirming.set(true), "Remove" }
                    }
                }
            }
            if let Some(message) = &source.error {
                p { class: "file-error", role: "note", "{message}" }
            }
            if let Some(e) = error() {
                ErrorNote { message: e }
            }
        }
    }
}
