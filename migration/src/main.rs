//! `cargo run -p migration -- up` (also `down`, `status`, `fresh`, `refresh`,
//! `reset`; `--help` lists them). Reads `DATABASE_URL`, e.g.
//! `sqlite://data/traum.db?mode=rwc` or `postgres://postgres@127.0.0.1/traum`.
//! The server does not need this: it migrates at start-up.

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli(migration::Migrator).await;
}
