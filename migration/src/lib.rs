//! sea-orm migrations of the Traum library: the `audio_file` (with its work lease),
//! `search_log`, `api_key`, `server_setting`, `library_source`, `file_location` and `model_index` tables. The server runs them at start-up (`entity::store::connect_and_migrate`);
//! `cargo run -p migration -- <up|down|status|fresh|refresh|reset>` runs them by
//! hand against `DATABASE_URL`.
//!
//! The schema is written once for SQLite and PostgreSQL, so it sticks to
//! portable types: enums are short strings (no PostgreSQL `CREATE TYPE`),
//! timestamps are `timestamp with time zone` (text in SQLite, always written by
//! the application in UTC, never by a database default), and ids are UUIDs
//! (`uuid` in PostgreSQL, a 16-byte blob in SQLite).

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_audio_file;
mod m20261124_000002_create_search_log;
mod m20261201_000003_create_api_key;
mod m20261202_000004_add_lease_token;
mod m20261203_000005_create_sources;
mod m20261203_000006_create_model_index;

pub use m20261124_000001_create_audio_file::AudioFile;
pub use m20261124_000002_create_search_log::SearchLog;
pub use m20261201_000003_create_api_key::{ApiKey, ServerSetting};
pub use m20261203_000005_create_sources::{FileLocation, LibrarySource};
pub use m20261203_000006_create_model_index::ModelIndex;

/// Every migration of the library, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_audio_file::Migration),
            Box::new(m20261124_000002_create_search_log::Migration),
            Box::new(m20261201_000003_create_api_key::Migration),
            Box::new(m20261202_000004_add_lease_token::Migration),
            Box::new(m20261203_000005_create_sources::Migration),
            Box::new(m20261203_000006_create_model_index::Migration),
        ]
    }
}
