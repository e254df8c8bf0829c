//! `search_log`: one row per search served, for stats and "recent searches".

use sea_orm::entity::prelude::*;

/// What a search was given, stored as a short string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum SearchKind {
    /// A text query ("warm analog bass").
    #[sea_orm(string_value = "text")]
    Text,
    /// An uploaded audio clip.
    #[sea_orm(string_value = "audio")]
    Audio,
    /// "More like this": a file already in the library.
    #[sea_orm(string_value = "similar")]
    Similar,
}

impl SearchKind {
    pub const ALL: [SearchKind; 3] = [SearchKind::Text, SearchKind::Audio, SearchKind::Similar];

    /// The stored string (`"text"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SearchKind::Text => "text",
            SearchKind::Audio => "audio",
            SearchKind::Similar => "similar",
        }
    }
}

impl std::fmt::Display for SearchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SearchKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SearchKind::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown search kind {s:?}"))
    }
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "search_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub kind: SearchKind,
    /// The text of a text search; a file name or id for the others, if any.
    #[sea_orm(column_type = "Text", nullable)]
    pub query_text: Option<String>,
    pub result_count: i32,
    pub latency_ms: f64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
