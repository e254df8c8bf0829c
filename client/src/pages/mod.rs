//! One module per page.

mod analytics;
mod file_detail;
mod library;
mod search;
mod system;

pub use analytics::Analytics;
pub use file_detail::FileDetail;
pub use library::Library;
pub use search::Search;
pub use system::System;

use dioxus::prelude::*;

use crate::app::Route;

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
