//! The app: routes, the shell around every page, and the state the live
//! connection keeps.

use dioxus::prelude::*;

use crate::api::Api;
use crate::components::{ConnectionBanner, ConnectionDot};
use crate::library::{Follow, LibraryView};
use crate::live::{self, ConnState, Handlers};
use crate::model::{EventKind, Place, SourceScan};
use crate::pages::{Analytics, FileDetail, Library, NotFound, Search, Sources, System};
use crate::platform;

/// The live connection's state.
pub static CONNECTION: GlobalSignal<ConnState> = Signal::global(|| ConnState::Connecting);
/// The Library page's list, kept current by events.
pub static LIBRARY: GlobalSignal<LibraryView> = Signal::global(LibraryView::default);
/// Bumped for every event: views that summarise the library refresh.
pub static ACTIVITY: GlobalSignal<u64> = Signal::global(|| 0);
/// Bumped when the subscription is back after a loss: events may have been
/// missed, so views refetch.
pub static RESYNC: GlobalSignal<u64> = Signal::global(|| 0);
/// Which source or folder the Library list shows (set there, or by the Sources page).
pub static PLACE: GlobalSignal<Place> = Signal::global(Place::default);
/// The latest SCAN event of each source, live.
pub static SCANS: GlobalSignal<std::collections::HashMap<String, SourceScan>> =
    Signal::global(Default::default);

#[derive(Clone, Routable, Debug, PartialEq)]
#[rustfmt::skip]
pub enum Route {
    #[layout(Shell)]
        #[route("/")]
        Library {},
        #[route("/search?:q&:similar")]
        Search { q: String, similar: String },
        #[route("/library/:id?:t")]
        FileDetail { id: String, t: f64 },
        #[route("/sources")]
        Sources {},
        #[route("/analytics")]
        Analytics {},
        #[route("/system")]
        System {},
        #[route("/:..segments")]
        NotFound { segments: Vec<String> },
}

/// The root component.
#[component]
pub fn App() -> Element {
    use_hook(start_live_connection);
    rsx! {
        Router::<Route> {}
    }
}

/// One connection for the whole app; it lives as long as the app.
fn start_live_connection() {
    spawn(async move {
        let handlers = Handlers {
            state: Box::new(|state| *CONNECTION.write() = state),
            event: Box::new(|event| {
                match event.kind {
                    EventKind::Subscribed => return,
                    // A folder scan advanced: the Sources page shows it as it goes.
                    EventKind::Scan => {
                        if let Some(scan) = event.scan {
                            SCANS.write().insert(scan.source_id.clone(), scan);
                        }
                        return;
                    }
                    // A reindex advanced: summaries (the System page) refresh.
                    EventKind::Reindex => {
                        *ACTIVITY.write() += 1;
                        return;
                    }
                    // Events were dropped: refetch what is shown, as after a reconnect.
                    EventKind::Lagged => {
                        *RESYNC.write() += 1;
                        return;
                    }
                    _ => {}
                }
                let follow = LIBRARY.write().apply(&event);
                *ACTIVITY.write() += 1;
                if let Follow::Fetch(id) = follow {
                    spawn(async move {
                        if let Ok(Some(file)) = Api::current().file(&id).await {
                            LIBRARY.write().upsert(file);
                        }
                    });
                }
            }),
            subscribed: Box::new(|again| {
                if again {
                    *RESYNC.write() += 1;
                }
            }),
        };
        live::run(platform::server_base(), handlers).await;
    });
}

/// Refreshes at most every `min_interval_ms` while the library changes (or
/// after a reconnect): summaries follow events without a request per event.
pub fn use_library_changes(min_interval_ms: u32) -> Signal<u64> {
    let mut tick = use_signal(|| 0u64);
    use_future(move || async move {
        let mut seen = (*ACTIVITY.peek(), *RESYNC.peek());
        loop {
            platform::sleep_ms(min_interval_ms).await;
            let now = (*ACTIVITY.peek(), *RESYNC.peek());
            if now != seen {
                seen = now;
                tick += 1;
            }
        }
    });
    tick
}

/// Header, navigation, connection state; the page below.
#[component]
fn Shell() -> Element {
    let state = CONNECTION();
    let nav = [
        (Route::Library {}, "Library"),
        (
            Route::Search {
                q: String::new(),
                similar: String::new(),
            },
            "Search",
        ),
        (Route::Sources {}, "Sources"),
        (Route::Analytics {}, "Analytics"),
        (Route::System {}, "System"),
    ];
    let current = use_route::<Route>();
    rsx! {
        a { class: "skip", href: "#content", "Skip to content" }
        header { class: "topbar",
            div { class: "brand",
                span { class: "logo", "aria-hidden": "true", "◖◗" }
                span { "Traum" }
            }
            nav { "aria-label": "Main",
                for (route , label) in nav {
                    Link {
                        key: "{label}",
                        to: route.clone(),
                        class: if same_page(&route, &current) { "nav-link active" } else { "nav-link" },
                        "aria-current": if same_page(&route, &current) { "page" } else { "false" },
                        "{label}"
                    }
                }
            }
            div { class: "topbar-end",
                KeyButton {}
                ConnectionDot { state: state.clone() }
                button {
                    class: "btn btn-ghost btn-icon",
                    title: "Switch dark / light",
                    "aria-label": "Switch between dark and light theme",
                    onclick: move |_| platform::toggle_theme(),
                    "◐"
                }
            }
        }
        // Without a usable key the live connection is refused: the key prompt says why,
        // an "offline" banner would only mislead.
        if ACCESS().is_none_or(|a| a.scope.is_some()) {
            ConnectionBanner { state }
        }
        KeyPrompt {}
        main { id: "content", tabindex: "-1",
            Outlet::<Route> {}
        }
    }
}

/// Same page, whatever its parameters (for the active tab).
fn same_page(a: &Route, b: &Route) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
        || matches!((a, b), (Route::Library {}, Route::FileDetail { .. }))
}

/// What the server said this client may do (`access`), once asked.
pub static ACCESS: GlobalSignal<Option<AccessState>> = Signal::global(|| None);

/// The client's standing with the server.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessState {
    /// `read`, `write`, `admin`; `None`: nothing without a (valid) key.
    pub scope: Option<String>,
    pub key_name: Option<String>,
    /// A key is stored but the server refused it.
    pub key_refused: bool,
}

fn load_access() {
    spawn(async move {
        let stored = platform::api_key().is_some();
        let state = match Api::current().access().await {
            Ok(a) => AccessState {
                scope: a.scope.map(|s| format!("{s:?}").to_lowercase()),
                key_name: a.key_name,
                key_refused: false,
            },
            // A stored key the server does not know (revoked, or another server's).
            Err(e) if e.code == "UNAUTHENTICATED" && stored => AccessState {
                scope: None,
                key_name: None,
                key_refused: true,
            },
            Err(_) => return,
        };
        *ACCESS.write() = Some(state);
    });
}

/// Asks for an API key when the server wants one (or refused the one stored).
#[component]
fn KeyPrompt() -> Element {
    use_hook(load_access);
    let mut key = use_signal(String::new);
    let Some(access) = ACCESS() else {
        return rsx! {};
    };
    if access.scope.is_some() {
        return rsx! {};
    }
    rsx! {
        form { class: "banner banner-key", role: "alert", "data-key-prompt": "true",
            onsubmit: move |e| {
                e.prevent_default();
                let k = key();
                if !k.trim().is_empty() {
                    platform::set_api_key(Some(k.trim()));
                    load_access();
                }
            },
            if access.key_refused {
                strong { "This server refused the stored API key. " }
                "It may have been revoked; paste another."
            } else {
                strong { "This server wants an API key. " }
                "Paste one (an admin creates keys with "
                code { "traum keys create" }
                ")."
            }
            label { class: "visually-hidden", r#for: "api-key", "API key" }
            input {
                id: "api-key",
                r#type: "password",
                autocomplete: "off",
                placeholder: "traum_…",
                value: "{key}",
                oninput: move |e| key.set(e.value()),
            }
            button { class: "btn", r#type: "submit", "Use key" }
        }
    }
}

/// The key in use (name and scope), with a way to forget it.
#[component]
fn KeyButton() -> Element {
    let Some(access) = ACCESS() else {
        return rsx! {};
    };
    let Some(name) = access.key_name.clone() else {
        return rsx! {};
    };
    let scope = access.scope.clone().unwrap_or_default();
    rsx! {
        button {
            class: "btn btn-ghost key-chip",
            title: "API key {name} ({scope}); click to forget it on this device",
            "data-key": "{name}",
            onclick: move |_| {
                platform::set_api_key(None);
                *ACCESS.write() = None;
                load_access();
            },
            "🔑 {name} · {scope}"
        }
    }
}
