//! `search_log`: one row per search served, for stats and "recent searches".

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Table and column names of `search_log`.
#[derive(DeriveIden, Clone, Copy)]
pub enum SearchLog {
    Table,
    Id,
    Kind,
    QueryText,
    ResultCount,
    LatencyMs,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SearchLog::Table)
                    .if_not_exists()
                    .col(big_pk_auto(SearchLog::Id))
                    // text | audio | similar
                    .col(string_len(SearchLog::Kind, 16))
                    .col(text_null(SearchLog::QueryText))
                    .col(integer(SearchLog::ResultCount))
                    .col(double(SearchLog::LatencyMs))
                    .col(timestamp_with_time_zone(SearchLog::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_search_log_created_at")
                    .table(SearchLog::Table)
                    .col(SearchLog::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_search_log_kind")
                    .table(SearchLog::Table)
                    .col(SearchLog::Kind)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SearchLog::Table).if_exists().to_owned())
            .await
    }
}
