//! The Traum web client: a dioxus app served by `traum serve` at `/`.
//!
//! The data's path, as in the server: `api` (typed GraphQL over HTTP, checked
//! against `schema.graphql` at compile time) and `live` (the one WebSocket
//! that carries library events) feed `library` (the list the Library page
//! shows, kept current by events), which `pages` and `components` draw.
//! `platform` hides what differs between the browser and dioxus desktop.

pub mod api;
pub mod app;
pub mod components;
pub mod format;
pub mod library;
pub mod live;
pub mod model;
pub mod pages;
pub mod platform;

pub use app::App;
