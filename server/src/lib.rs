//! Traum Engine's `traum` binary as a library: the service (GraphQL over
//! axum, the processing pipeline, the library that keeps database, files and
//! vectors consistent), bulk ingest, and the embedding command.
//!
//! Modules follow the data: `storage` (upload in) → `pipeline` (decode,
//! embed through the batcher, index) → `library` (search, delete) →
//! `graphql`/`http` (out).

pub mod auth;
pub mod cli;
pub mod cluster;
pub mod embed;
pub mod error;
pub mod events;
pub mod graphql;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod library;
pub mod logging;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod serve;
pub mod sources;
pub mod storage;
pub mod websocket;
