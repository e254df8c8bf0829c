//! `api_key`: who may call the server, with what scope; `server_setting`: small values every
//! replica shares (the secret that signs playback URLs).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Table and column names of `api_key`.
#[derive(DeriveIden, Clone, Copy)]
pub enum ApiKey {
    Table,
    Id,
    Name,
    /// The first characters of the key, shown in lists (never enough to use it).
    Prefix,
    /// SHA-256 of the whole key, hex: the key itself is never stored.
    SecretHash,
    /// `read`, `write` or `admin` (each includes the ones before it).
    Scope,
    CreatedAt,
    LastUsedAt,
    RevokedAt,
}

/// Table and column names of `server_setting`.
#[derive(DeriveIden, Clone, Copy)]
pub enum ServerSetting {
    Table,
    Key,
    Value,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiKey::Table)
                    .if_not_exists()
                    .col(uuid(ApiKey::Id).primary_key())
                    .col(string_len(ApiKey::Name, 200))
                    .col(string_len(ApiKey::Prefix, 32))
                    .col(string_len(ApiKey::SecretHash, 64).unique_key())
                    .col(string_len(ApiKey::Scope, 16))
                    .col(timestamp_with_time_zone(ApiKey::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKey::LastUsedAt))
                    .col(timestamp_with_time_zone_null(ApiKey::RevokedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ServerSetting::Table)
                    .if_not_exists()
                    .col(string_len(ServerSetting::Key, 64).primary_key())
                    .col(text(ServerSetting::Value))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ServerSetting::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ApiKey::Table).to_owned())
            .await
    }
}
