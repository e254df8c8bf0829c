//! One module per page.

mod analytics;
mod file_detail;
mod library;
mod search;
mod sources;
mod system;

pub use analytics::Analytics;
pub use file_detail::FileDetail;
pub use library::Library;
pub use search::Search;
pub use sources::Sources;
pub use system::System;

use dioxus::prelude::*;

use crate::api::Api;
use crate::app::Route;
use crate::components::ResultCard;
use crate::model::Hit;

/// Files per page of the library list.
pub const PAGE_SIZE: i64 = 25;

#[component]
pub fn NotFound(segments: Vec<String>) -> Element {
    let path = segments.join("/");
    rsx! {
        section { class: "page",
            h1 { "Nothing at /{path}" }
            p { Link { to: Route::Library {}, "Back to the library" } }
        }
    }
}

/// Ranked results; one plays at a time (`playing` holds its file id, owned
/// by the page so a new search can stop it).
#[component]
pub fn ResultList(
    hits: Vec<Hit>,
    playing: Signal<Option<String>>,
    #[props(into)] test_id: Option<String>,
) -> Element {
    let nav = use_navigator();
    rsx! {
        ol { class: "results", "data-testid": test_id,
            for (i , hit) in hits.iter().enumerate() {
                ResultCard {
                    key: "{hit.file.id}",
                    rank: i + 1,
                    hit: hit.clone(),
                    audio_url: Api::current().absolute(&hit.file.url),
                    playing: playing() == Some(hit.file.id.clone()),
                    on_play: {
                        let id = hit.file.id.clone();
                        move |_| {
                            let now = playing();
                            playing.set(if now.as_deref() == Some(id.as_str()) { None } else { Some(id.clone()) });
                        }
                    },
                    on_similar: move |id: String| {
                        nav.push(Route::Search { q: String::new(), similar: id });
                    },
                    on_open: move |(id, t): (String, f64)| {
                        nav.push(Route::FileDetail { id, t });
                    },
                }
            }
        }
    }
}
