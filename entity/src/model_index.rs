//! `model_index`: the model a collection of vectors was made with, and where it stands.
//!
//! One row is `active`: search and newly added files use its model. Starting the server
//! with another model makes (or resumes) a `building` row, which a background reindex
//! fills while the active one serves; complete, it is switched to (automatically, or
//! `ready` until a manual switch), and the former active row becomes `retired`: kept until
//! dropped.

use sea_orm::entity::prelude::*;

/// Where a model's index stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum ModelState {
    /// Serving search; new files are embedded with this model.
    #[sea_orm(string_value = "active")]
    Active,
    /// Being filled by a background reindex (or paused, when the server runs another model).
    #[sea_orm(string_value = "building")]
    Building,
    /// Complete, waiting for `switchModel`.
    #[sea_orm(string_value = "ready")]
    Ready,
    /// Formerly active; kept until `dropModel`.
    #[sea_orm(string_value = "retired")]
    Retired,
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "model_index")]
pub struct Model {
    /// `<model name>@<first 12 hex digits of the weights digest>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// What the model was loaded from: a hub id, or a directory.
    #[sea_orm(column_type = "Text")]
    pub model_id: String,
    /// SHA-256 of the weights file (hex).
    pub weights_digest: String,
    pub dim: i32,
    /// The in-process store's directory (relative to the data directory), or the Qdrant
    /// collections' base name.
    #[sea_orm(column_type = "Text")]
    pub location: String,
    pub state: ModelState,
    /// Files of the library embedded with this model (for a building index: so far).
    pub files_done: i64,
    /// Files this model could not embed in its last reindex.
    pub files_failed: i64,
    /// The library's indexed files when the reindex last counted them.
    pub files_total: i64,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
    /// When its reindex completed.
    pub completed_at: Option<DateTimeUtc>,
    /// When it last became active.
    pub activated_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
