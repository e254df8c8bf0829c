//! `library_source` and `file_location`: where a library's files live.
//!
//! A source is a folder the server reads in place (`kind = folder`), or the store of
//! uploaded copies (`kind = upload`, one row, created on first use). A location is one
//! path at which a file's content was found; a file (`audio_file`, one per distinct
//! content) has one or more. Scans compare a folder with its locations by size and
//! modification time, so a rescan where nothing changed reads no file contents.

use sea_orm_migration::{prelude::*, schema::*};

use crate::AudioFile;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Table and column names of `library_source`.
#[derive(DeriveIden, Clone, Copy)]
pub enum LibrarySource {
    Table,
    Id,
    Kind,
    Path,
    /// idle | scanning | unavailable | detached
    State,
    LastError,
    /// Counters of the running or last scan.
    Found,
    New,
    Changed,
    Moved,
    Gone,
    Failed,
    ScanStartedAt,
    ScannedAt,
    CreatedAt,
}

/// Table and column names of `file_location`.
#[derive(DeriveIden, Clone, Copy)]
pub enum FileLocation {
    Table,
    SourceId,
    Path,
    FileId,
    SizeBytes,
    MtimeNs,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LibrarySource::Table)
                    .if_not_exists()
                    .col(pk_uuid(LibrarySource::Id))
                    .col(string_len(LibrarySource::Kind, 16))
                    .col(text(LibrarySource::Path))
                    .col(string_len(LibrarySource::State, 16))
                    .col(text_null(LibrarySource::LastError))
                    .col(big_integer(LibrarySource::Found).default(0))
                    .col(big_integer(LibrarySource::New).default(0))
                    .col(big_integer(LibrarySource::Changed).default(0))
                    .col(big_integer(LibrarySource::Moved).default(0))
                    .col(big_integer(LibrarySource::Gone).default(0))
                    .col(big_integer(LibrarySource::Failed).default(0))
                    .col(timestamp_with_time_zone_null(LibrarySource::ScanStartedAt))
                    .col(timestamp_with_time_zone_null(LibrarySource::ScannedAt))
                    .col(timestamp_with_time_zone(LibrarySource::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_library_source_path")
                    .table(LibrarySource::Table)
                    .col(LibrarySource::Path)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(FileLocation::Table)
                    .if_not_exists()
                    .col(uuid(FileLocation::SourceId))
                    // Absolute for folders; relative to the storage directory for uploads.
                    .col(text(FileLocation::Path))
                    .col(uuid(FileLocation::FileId))
                    .col(big_integer(FileLocation::SizeBytes))
                    .col(big_integer(FileLocation::MtimeNs))
                    .col(timestamp_with_time_zone(FileLocation::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(FileLocation::SourceId)
                            .col(FileLocation::Path),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_file_location_source")
                            .from(FileLocation::Table, FileLocation::SourceId)
                            .to(LibrarySource::Table, LibrarySource::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_file_location_file")
                            .from(FileLocation::Table, FileLocation::FileId)
                            .to(AudioFile::Table, AudioFile::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_file_location_file")
                    .table(FileLocation::Table)
                    .col(FileLocation::FileId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(FileLocation::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(LibrarySource::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
