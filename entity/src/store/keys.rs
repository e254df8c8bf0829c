//! API keys: created with a random secret shown once, found by the secret's hash, listed,
//! revoked. And shared settings (get-or-create, race-safe across replicas).

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{now, Result, StoreError};
use crate::api_key::{self, Column, Entity as ApiKey, Model, Scope};
use crate::server_setting;

/// What every key starts with, so a leaked one is recognisable (secret scanners, logs).
pub const KEY_PREFIX: &str = "traum_";

/// SHA-256 of a key, lowercase hex: what is stored and looked up. Keys are 244 random bits,
/// so a fast hash is enough (no password stretching needed).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random key: `traum_` and 64 hex digits (two v4 UUIDs from the OS's CSPRNG).
fn new_secret() -> String {
    format!(
        "{KEY_PREFIX}{}{}",
        Uuid::new_v4().simple(),
        Uuid::new_v4().simple()
    )
}

/// Creates a key; returns its row and the secret, which is not stored and cannot be shown
/// again.
pub async fn create_key(
    db: &DatabaseConnection,
    name: &str,
    scope: Scope,
) -> Result<(Model, String)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(StoreError::InvalidArgument(
            "a key's name must be 1 to 200 characters".into(),
        ));
    }
    let secret = new_secret();
    let row = api_key::ActiveModel {
        id: Set(Uuid::new_v4()),
        name: Set(name.to_string()),
        prefix: Set(secret[..KEY_PREFIX.len() + 8].to_string()),
        secret_hash: Set(hash_secret(&secret)),
        scope: Set(scope),
        created_at: Set(now()),
        last_used_at: Set(None),
        revoked_at: Set(None),
    };
    Ok((row.insert(db).await?, secret))
}

/// The live (not revoked) key with this secret.
pub async fn find_key(db: &DatabaseConnection, secret: &str) -> Result<Option<Model>> {
    Ok(ApiKey::find()
        .filter(Column::SecretHash.eq(hash_secret(secret)))
        .filter(Column::RevokedAt.is_null())
        .one(db)
        .await?)
}

/// Every key, newest first (revoked ones included, marked).
pub async fn list_keys(db: &DatabaseConnection) -> Result<Vec<Model>> {
    Ok(ApiKey::find()
        .order_by_desc(Column::CreatedAt)
        .all(db)
        .await?)
}

/// Live keys.
pub async fn count_live_keys(db: &DatabaseConnection) -> Result<u64> {
    Ok(ApiKey::find()
        .filter(Column::RevokedAt.is_null())
        .count(db)
        .await?)
}

/// Revokes the key with this id, or the one whose prefix this is (it must name one key).
/// Returns the row; revoking twice keeps the first time.
pub async fn revoke_key(db: &DatabaseConnection, id_or_prefix: &str) -> Result<Model> {
    let given = id_or_prefix.trim();
    let matches: Vec<Model> = match Uuid::parse_str(given) {
        Ok(id) => ApiKey::find_by_id(id).all(db).await?,
        // The whole key.
        Err(_) if given.len() == KEY_PREFIX.len() + 64 => {
            ApiKey::find()
                .filter(Column::SecretHash.eq(hash_secret(given)))
                .all(db)
                .await?
        }
        Err(_) => {
            if given.len() < KEY_PREFIX.len() + 4 || !given.is_ascii() {
                return Err(StoreError::InvalidArgument(format!(
                    "{given:?} is too short to name a key: give its id or its prefix"
                )));
            }
            // The stored prefix, or the start of it (more characters than the prefix are
            // the secret's, which is not stored).
            let prefix = &given[..given.len().min(KEY_PREFIX.len() + 8)];
            ApiKey::find()
                .filter(Column::Prefix.starts_with(prefix))
                .all(db)
                .await?
        }
    };
    let key = match matches.as_slice() {
        [] => return Err(StoreError::Missing(format!("no API key {id_or_prefix:?}"))),
        [one] => one.clone(),
        _ => {
            return Err(StoreError::InvalidArgument(format!(
                "{id_or_prefix:?} names {} keys; give the id",
                matches.len()
            )))
        }
    };
    if key.revoked_at.is_some() {
        return Ok(key);
    }
    let mut active: api_key::ActiveModel = key.into();
    active.revoked_at = Set(Some(now()));
    Ok(active.update(db).await?)
}

/// Notes that a key was used (callers throttle this).
pub async fn touch_key(db: &DatabaseConnection, id: Uuid) -> Result<()> {
    ApiKey::update_many()
        .col_expr(Column::LastUsedAt, Expr::value(now()))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// The setting's value, created with `make()` if there is none. Concurrent callers (other
/// replicas) all get the one value that was stored first.
pub async fn setting_or_insert(
    db: &DatabaseConnection,
    key: &str,
    make: impl FnOnce() -> String,
) -> Result<String> {
    if let Some(row) = server_setting::Entity::find_by_id(key).one(db).await? {
        return Ok(row.value);
    }
    let row = server_setting::ActiveModel {
        key: Set(key.to_string()),
        value: Set(make()),
    };
    // Another replica may have stored one in between: keep the first.
    server_setting::Entity::insert(row)
        .on_conflict_do_nothing_on([server_setting::Column::Key])
        .exec(db)
        .await?;
    server_setting::Entity::find_by_id(key)
        .one(db)
        .await?
        .map(|row| row.value)
        .ok_or_else(|| StoreError::Missing(format!("setting {key}")))
}
