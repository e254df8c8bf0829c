//! `model_index`: which model's vectors a library holds, and where.
//!
//! Every vector belongs to one model, named by its id and a digest of its weights, and the
//! vectors of each model live in a collection of their own. One row is `active` (search and
//! new files use it); at most one is `building` at a time (a background reindex with another
//! model); `ready` is a complete index waiting for a manual switch; `retired` is a former
//! active index kept until it is dropped.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Table and column names of `model_index`.
#[derive(DeriveIden, Clone, Copy)]
pub enum ModelIndex {
    Table,
    /// `<model name>@<first 12 hex digits of the weights digest>`.
    Key,
    /// What the model was loaded from: a hub id or a directory.
    ModelId,
    /// SHA-256 of the weights file, hex.
    WeightsDigest,
    Dim,
    /// The in-process store's directory (relative to the data directory) or the Qdrant
    /// collections' base name.
    Location,
    /// active | building | ready | retired
    State,
    /// Reindex progress: files embedded with this model, files that failed with it, and the
    /// library's indexed files when it was last counted.
    FilesDone,
    FilesFailed,
    FilesTotal,
    LastError,
    CreatedAt,
    CompletedAt,
    ActivatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ModelIndex::Table)
                    .if_not_exists()
                    .col(string_len(ModelIndex::Key, 255).primary_key())
                    .col(text(ModelIndex::ModelId))
                    .col(string_len(ModelIndex::WeightsDigest, 64))
                    .col(integer(ModelIndex::Dim))
                    .col(text(ModelIndex::Location))
                    .col(string_len(ModelIndex::State, 16))
                    .col(big_integer(ModelIndex::FilesDone).default(0))
                    .col(big_integer(ModelIndex::FilesFailed).default(0))
                    .col(big_integer(ModelIndex::FilesTotal).default(0))
                    .col(text_null(ModelIndex::LastError))
                    .col(timestamp_with_time_zone(ModelIndex::CreatedAt))
                    .col(timestamp_with_time_zone_null(ModelIndex::CompletedAt))
                    .col(timestamp_with_time_zone_null(ModelIndex::ActivatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(ModelIndex::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
