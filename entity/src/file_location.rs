//! `file_location`: a path at which a file's content was found.
//!
//! One `audio_file` (one content) has one location or more: the same sample in two packs,
//! or in a folder and among the uploads, is one library entry. Size and modification time
//! are what a rescan compares before it reads any content.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "file_location")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub source_id: Uuid,
    /// Absolute for folders; relative to the storage directory for uploads.
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub path: String,
    pub file_id: Uuid,
    pub size_bytes: i64,
    /// Modification time, nanoseconds since the Unix epoch (0 for uploads).
    pub mtime_ns: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
