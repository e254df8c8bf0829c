//! `audio_file`: one row per distinct uploaded file (deduplicated by content
//! hash), with its decode metadata, processing state and work lease.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Table and column names of `audio_file`.
#[derive(DeriveIden, Clone, Copy)]
pub enum AudioFile {
    Table,
    Id,
    OriginalName,
    StoredPath,
    ContentHash,
    SizeBytes,
    Container,
    Codec,
    DurationS,
    SampleRate,
    Channels,
    Status,
    WindowsDone,
    WindowsTotal,
    ErrorCode,
    ErrorMessage,
    ModelId,
    Attempts,
    LeaseOwner,
    LeaseExpiresAt,
    CreatedAt,
    UpdatedAt,
    IndexedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AudioFile::Table)
                    .if_not_exists()
                    .col(pk_uuid(AudioFile::Id))
                    .col(text(AudioFile::OriginalName))
                    .col(text(AudioFile::StoredPath))
                    // SHA-256, lowercase hex.
                    .col(string_len(AudioFile::ContentHash, 64))
                    .col(big_integer(AudioFile::SizeBytes))
                    .col(string_len(AudioFile::Container, 32))
                    .col(string_len_null(AudioFile::Codec, 32))
                    .col(double_null(AudioFile::DurationS))
                    .col(integer_null(AudioFile::SampleRate))
                    .col(integer_null(AudioFile::Channels))
                    // queued | decoding | embedding | indexed | failed
                    .col(string_len(AudioFile::Status, 16))
                    .col(integer(AudioFile::WindowsDone).default(0))
                    .col(integer(AudioFile::WindowsTotal).default(0))
                    .col(string_len_null(AudioFile::ErrorCode, 64))
                    .col(text_null(AudioFile::ErrorMessage))
                    .col(string_len_null(AudioFile::ModelId, 255))
                    .col(integer(AudioFile::Attempts).default(0))
                    .col(string_len_null(AudioFile::LeaseOwner, 255))
                    .col(timestamp_with_time_zone_null(AudioFile::LeaseExpiresAt))
                    .col(timestamp_with_time_zone(AudioFile::CreatedAt))
                    .col(timestamp_with_time_zone(AudioFile::UpdatedAt))
                    .col(timestamp_with_time_zone_null(AudioFile::IndexedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_audio_file_content_hash")
                    .table(AudioFile::Table)
                    .col(AudioFile::ContentHash)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_audio_file_status")
                    .table(AudioFile::Table)
                    .col(AudioFile::Status)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // (created_at, id): the keyset order of the listing.
        manager
            .create_index(
                Index::create()
                    .name("idx_audio_file_created_at")
                    .table(AudioFile::Table)
                    .col(AudioFile::CreatedAt)
                    .col(AudioFile::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Dropping the table drops its indexes on both backends.
        manager
            .drop_table(Table::drop().table(AudioFile::Table).if_exists().to_owned())
            .await
    }
}
