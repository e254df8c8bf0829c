//! `traum keys create|list|revoke`: API keys, straight in the library's database (works while
//! the server runs; a revoked key stops working at its next request).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::auth::Scope;
use crate::cli::{KeysCommand, KeysDbArgs};
use crate::storage::DataPaths;

async fn connect(args: &KeysDbArgs) -> Result<sea_orm::DatabaseConnection> {
    let url = match args
        .database_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    {
        Some(url) => url.to_string(),
        None => {
            let paths = DataPaths::new(&args.data_dir);
            std::fs::create_dir_all(&paths.root)
                .with_context(|| format!("creating {}", paths.root.display()))?;
            entity::store::sqlite_url(&paths.sqlite())
        }
    };
    entity::store::connect_and_migrate(&url)
        .await
        .with_context(|| format!("opening {}", crate::library::redact_url(&url)))
}

pub async fn run(command: KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::Create(args) => {
            let scope: Scope = args.scope.parse().map_err(anyhow::Error::msg)?;
            let db = connect(&args.db).await?;
            let (row, secret) = entity::store::create_key(&db, &args.name, scope).await?;
            eprintln!(
                "created key {:?} ({}, scope {}); it is shown once, here:",
                row.name, row.prefix, row.scope
            );
            println!("{secret}");
        }
        KeysCommand::List(args) => {
            let db = connect(&args).await?;
            let keys = entity::store::list_keys(&db).await?;
            if keys.is_empty() {
                eprintln!("no keys (the server is open on loopback addresses only)");
            }
            println!(
                "{:<36}  {:<14}  {:<6}  {:<20}  {:<20}  name",
                "id", "prefix", "scope", "created", "state"
            );
            for k in keys {
                let state = match (k.revoked_at, k.last_used_at) {
                    (Some(at), _) => format!("revoked {}", at.format("%Y-%m-%d %H:%M")),
                    (None, Some(at)) => format!("used {}", at.format("%Y-%m-%d %H:%M")),
                    (None, None) => "never used".to_string(),
                };
                println!(
                    "{:<36}  {:<14}  {:<6}  {:<20}  {:<20}  {}",
                    k.id,
                    k.prefix,
                    k.scope.as_str(),
                    k.created_at.format("%Y-%m-%d %H:%M"),
                    state,
                    k.name
                );
            }
        }
        KeysCommand::Revoke(args) => {
            let db = connect(&args.db).await?;
            let row = entity::store::revoke_key(&db, &args.key).await?;
            eprintln!("revoked key {:?} ({})", row.name, row.prefix);
        }
    }
    Ok(ExitCode::SUCCESS)
}
