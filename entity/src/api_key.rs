//! `api_key`: a key a client sends as `Authorization: Bearer …`. Only its SHA-256 is stored.

use sea_orm::entity::prelude::*;

/// What a key may do. Each scope includes the ones before it: `write` can read, `admin`
/// can do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum Scope {
    /// Queries, subscriptions, `GET /files`.
    #[sea_orm(string_value = "read")]
    Read,
    /// Uploads, searches by clip, delete, reprocess.
    #[sea_orm(string_value = "write")]
    Write,
    /// Managing keys.
    #[sea_orm(string_value = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Whether a holder of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|v| v.as_str() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("unknown scope {s:?} (read, write or admin)"))
    }
}

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "api_key")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    /// The key's first characters, for lists and logs.
    pub prefix: String,
    /// SHA-256 of the key, lowercase hex.
    #[sea_orm(unique)]
    pub secret_hash: String,
    pub scope: Scope,
    pub created_at: DateTimeUtc,
    pub last_used_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
