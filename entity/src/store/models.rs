//! Model indexes: which model's vectors the library holds, the active one, and the
//! progress of a reindex with another.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};
use uuid::Uuid;

use super::{now, Result, StoreError};
use crate::audio_file::{self, FileStatus};
use crate::model_index::{self, Entity as ModelIndex, ModelState};

/// A model index to record.
#[derive(Debug, Clone)]
pub struct NewModelIndex {
    pub key: String,
    pub model_id: String,
    pub weights_digest: String,
    pub dim: i32,
    pub location: String,
    pub state: ModelState,
}

/// Every model index, oldest first.
pub async fn list_models(db: &impl ConnectionTrait) -> Result<Vec<model_index::Model>> {
    Ok(ModelIndex::find()
        .order_by_asc(model_index::Column::CreatedAt)
        .order_by_asc(model_index::Column::Key)
        .all(db)
        .await?)
}

pub async fn get_model(db: &impl ConnectionTrait, key: &str) -> Result<Option<model_index::Model>> {
    Ok(ModelIndex::find_by_id(key.to_owned()).one(db).await?)
}

/// The index search uses, if the library has one yet.
pub async fn active_model(db: &impl ConnectionTrait) -> Result<Option<model_index::Model>> {
    Ok(ModelIndex::find()
        .filter(model_index::Column::State.eq(ModelState::Active))
        .one(db)
        .await?)
}

/// Records a model index, or returns the row its key already has (two replicas starting
/// at once both get the same row).
pub async fn insert_model(
    db: &impl ConnectionTrait,
    new: NewModelIndex,
) -> Result<model_index::Model> {
    if let Some(row) = get_model(db, &new.key).await? {
        return Ok(row);
    }
    let row = model_index::ActiveModel {
        key: Set(new.key.clone()),
        model_id: Set(new.model_id),
        weights_digest: Set(new.weights_digest),
        dim: Set(new.dim),
        location: Set(new.location),
        state: Set(new.state),
        files_done: Set(0),
        files_failed: Set(0),
        files_total: Set(0),
        last_error: Set(None),
        created_at: Set(now()),
        completed_at: Set(None),
        activated_at: Set(if new.state == ModelState::Active {
            Some(now())
        } else {
            None
        }),
    };
    match ModelIndex::insert(row).exec(db).await {
        Ok(_) => {}
        // Lost a race with another process inserting the same key: its row stands.
        Err(e) if get_model(db, &new.key).await?.is_some() => {
            tracing::debug!(key = %new.key, error = %e, "model index recorded meanwhile");
        }
        Err(e) => return Err(e.into()),
    }
    get_model(db, &new.key)
        .await?
        .ok_or_else(|| StoreError::Missing(format!("model index {} vanished", new.key)))
}

async fn update(
    db: &impl ConnectionTrait,
    key: &str,
    change: impl FnOnce(&mut model_index::ActiveModel),
) -> Result<model_index::Model> {
    let mut row: model_index::ActiveModel = get_model(db, key)
        .await?
        .ok_or_else(|| StoreError::Missing(format!("no model index {key}")))?
        .into();
    change(&mut row);
    Ok(row.update(db).await?)
}

/// Sets a model index's state (a building one's error, cleared with `None`).
pub async fn set_model_state(
    db: &impl ConnectionTrait,
    key: &str,
    state: ModelState,
    error: Option<String>,
) -> Result<model_index::Model> {
    update(db, key, |row| {
        row.state = Set(state);
        row.last_error = Set(error);
        if state == ModelState::Ready {
            row.completed_at = Set(Some(now()));
        }
    })
    .await
}

/// Saves a reindex's counters.
pub async fn save_model_progress(
    db: &impl ConnectionTrait,
    key: &str,
    done: i64,
    failed: i64,
    total: i64,
) -> Result<model_index::Model> {
    update(db, key, |row| {
        row.files_done = Set(done);
        row.files_failed = Set(failed);
        row.files_total = Set(total);
    })
    .await
}

/// Makes `key` the active index, in one transaction: the active one becomes `retired`, and
/// every indexed file is recorded as embedded with `key`'s model.
pub async fn activate(db: &DatabaseConnection, key: &str) -> Result<model_index::Model> {
    let txn = db.begin().await?;
    let target = get_model(&txn, key)
        .await?
        .ok_or_else(|| StoreError::Missing(format!("no model index {key}")))?;
    ModelIndex::update_many()
        .col_expr(model_index::Column::State, Expr::value(ModelState::Retired))
        .filter(model_index::Column::State.eq(ModelState::Active))
        .filter(model_index::Column::Key.ne(key))
        .exec(&txn)
        .await?;
    audio_file::Entity::update_many()
        .col_expr(
            audio_file::Column::ModelId,
            Expr::value(target.model_id.clone()),
        )
        .filter(audio_file::Column::Status.eq(FileStatus::Indexed))
        .exec(&txn)
        .await?;
    let row = update(&txn, key, |row| {
        row.state = Set(ModelState::Active);
        row.last_error = Set(None);
        row.activated_at = Set(Some(now()));
        if row.completed_at.as_ref().is_none() {
            row.completed_at = Set(Some(now()));
        }
    })
    .await?;
    txn.commit().await?;
    Ok(row)
}

/// Forgets a model index (its vectors are the caller's to remove). `false` if there was none.
pub async fn delete_model(db: &impl ConnectionTrait, key: &str) -> Result<bool> {
    Ok(ModelIndex::delete_by_id(key.to_owned())
        .exec(db)
        .await?
        .rows_affected
        == 1)
}

/// Ids of indexed files after `after`, in id order, at most `limit`: a reindex walks the
/// library with these, a page at a time. With `since`: only files whose row changed at or
/// after that time (indexed since).
pub async fn indexed_file_ids(
    db: &impl ConnectionTrait,
    since: Option<DateTime<Utc>>,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Uuid>> {
    let mut select = audio_file::Entity::find()
        .select_only()
        .column(audio_file::Column::Id)
        .filter(audio_file::Column::Status.eq(FileStatus::Indexed))
        .order_by_asc(audio_file::Column::Id)
        .limit(limit);
    if let Some(after) = after {
        select = select.filter(audio_file::Column::Id.gt(after));
    }
    if let Some(since) = since {
        select = select.filter(audio_file::Column::UpdatedAt.gte(since));
    }
    Ok(select.into_tuple::<Uuid>().all(db).await?)
}

/// The models that embedded the library's indexed files, as the files record them.
pub async fn indexed_model_ids(db: &impl ConnectionTrait) -> Result<Vec<String>> {
    let ids: Vec<Option<String>> = audio_file::Entity::find()
        .select_only()
        .column(audio_file::Column::ModelId)
        .distinct()
        .filter(audio_file::Column::Status.eq(FileStatus::Indexed))
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.into_iter().flatten().collect())
}

/// How many files are indexed.
pub async fn count_indexed(db: &impl ConnectionTrait) -> Result<u64> {
    Ok(audio_file::Entity::find()
        .filter(audio_file::Column::Status.eq(FileStatus::Indexed))
        .count(db)
        .await?)
}
