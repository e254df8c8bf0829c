//! `library_source`: where a library's files come from.
//!
//! A `folder` is read in place (scanned, then watched while the server runs); the one
//! `upload` source is the store of uploaded copies. The scan counters are those of the
//! running scan, or of the last one.

use sea_orm::entity::prelude::*;

/// What a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum SourceKind {
    /// A folder read in place.
    #[sea_orm(string_value = "folder")]
    Folder,
    /// Uploaded files, stored as copies under the storage directory.
    #[sea_orm(string_value = "upload")]
    Upload,
}

/// Where a source's scanning stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum SourceState {
    /// Not scanning: the library matched the folder at `scanned_at`.
    #[sea_orm(string_value = "idle")]
    Idle,
    /// A scan runs (or was interrupted, and runs again at the next start).
    #[sea_orm(string_value = "scanning")]
    Scanning,
    /// The folder is missing, unreadable or empty (a disk unplugged): its files stay in the
    /// library untouched until it is back; `last_error` says what was found.
    #[sea_orm(string_value = "unavailable")]
    Unavailable,
    /// Removed with its files kept: no longer scanned or watched.
    #[sea_orm(string_value = "detached")]
    Detached,
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "library_source")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub kind: SourceKind,
    /// The folder, absolute and canonical; the storage directory for uploads.
    #[sea_orm(column_type = "Text", unique)]
    pub path: String,
    pub state: SourceState,
    /// Why the source is unavailable, or what the last scan could not read.
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    /// Audio files found by the scan so far.
    pub found: i64,
    /// Files that were not in the library before (a known content at a new path counts too).
    pub new: i64,
    /// Paths whose content changed.
    pub changed: i64,
    /// Files that moved or were renamed (recognised by their content, not embedded again).
    pub moved: i64,
    /// Paths that no longer exist.
    pub gone: i64,
    /// Files or folders that could not be read.
    pub failed: i64,
    pub scan_started_at: Option<DateTimeUtc>,
    pub scanned_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
