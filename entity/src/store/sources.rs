//! Sources (folders read in place, and the uploads) and the locations of files in them.

use sea_orm::sea_query::{Expr, ExprTrait, LikeExpr, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set,
};
use uuid::Uuid;

use super::{now, Result, StoreError};
use crate::file_location::{self, Entity as FileLocation};
use crate::library_source::{self, Entity as LibrarySource, SourceKind, SourceState};

/// The one upload source's id (the same in every library).
pub const UPLOAD_SOURCE_ID: Uuid = Uuid::from_u128(0x7b4e_0c1a_55d2_4f09_9e3b_aa61_0d2c_8f47);

/// Namespace of folder source ids (UUIDv5 of the canonical path), so that every replica
/// adding the same folder names the same source.
const SOURCE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x2f6a_91c4_3e7d_4b58_8a10_6c9e_d4b3_71f5);

/// What one scan counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanCounts {
    pub found: i64,
    pub new: i64,
    pub changed: i64,
    pub moved: i64,
    pub gone: i64,
    pub failed: i64,
}

/// The upload source, created on first use. `storage` is the storage directory.
pub async fn upload_source(
    db: &impl ConnectionTrait,
    storage: &str,
) -> Result<library_source::Model> {
    if let Some(source) = get_source(db, UPLOAD_SOURCE_ID).await? {
        return Ok(source);
    }
    insert_source(db, UPLOAD_SOURCE_ID, SourceKind::Upload, storage).await?;
    get_source(db, UPLOAD_SOURCE_ID)
        .await?
        .ok_or_else(|| StoreError::Missing("the upload source vanished after insert".into()))
}

async fn insert_source(
    db: &impl ConnectionTrait,
    id: Uuid,
    kind: SourceKind,
    path: &str,
) -> Result<bool> {
    use library_source::Column as C;
    let insert = Query::insert()
        .into_table(LibrarySource)
        .columns([C::Id, C::Kind, C::Path, C::State, C::CreatedAt])
        .values_panic([
            id.into(),
            kind.into(),
            path.into(),
            SourceState::Idle.into(),
            now().into(),
        ])
        .on_conflict(OnConflict::new().do_nothing().to_owned())
        .to_owned();
    Ok(db.execute(&insert).await?.rows_affected() == 1)
}

/// Adds a folder (an absolute, canonical path), or returns the source it already is (a
/// detached one is attached again). Returns `(source, created)`.
pub async fn add_folder(
    db: &impl ConnectionTrait,
    path: &str,
) -> Result<(library_source::Model, bool)> {
    let id = Uuid::new_v5(&SOURCE_ID_NAMESPACE, path.as_bytes());
    let created = insert_source(db, id, SourceKind::Folder, path).await?;
    let source = LibrarySource::find()
        .filter(library_source::Column::Path.eq(path))
        .one(db)
        .await?
        .ok_or_else(|| StoreError::Missing(format!("source {path} vanished after insert")))?;
    if source.kind != SourceKind::Folder {
        return Err(StoreError::InvalidArgument(format!(
            "{path} is the upload store, not a folder to read"
        )));
    }
    if source.state == SourceState::Detached {
        let source = set_state(db, source.id, SourceState::Idle, None).await?;
        return Ok((source, false));
    }
    Ok((source, created))
}

pub async fn get_source(
    db: &impl ConnectionTrait,
    id: Uuid,
) -> Result<Option<library_source::Model>> {
    Ok(LibrarySource::find_by_id(id).one(db).await?)
}

/// Every source, folders by path, then the uploads; detached ones only when asked for.
pub async fn list_sources(
    db: &impl ConnectionTrait,
    with_detached: bool,
) -> Result<Vec<library_source::Model>> {
    let mut select = LibrarySource::find().order_by_asc(library_source::Column::Path);
    if !with_detached {
        select = select.filter(library_source::Column::State.ne(SourceState::Detached));
    }
    let mut sources = select.all(db).await?;
    sources.sort_by_key(|s| s.kind == SourceKind::Upload);
    Ok(sources)
}

/// Sets a source's state (and its error, cleared with `None`).
pub async fn set_state(
    db: &impl ConnectionTrait,
    id: Uuid,
    state: SourceState,
    error: Option<String>,
) -> Result<library_source::Model> {
    let mut source: library_source::ActiveModel = get_source(db, id)
        .await?
        .ok_or_else(|| StoreError::Missing(format!("no source with id {id}")))?
        .into();
    source.state = Set(state);
    source.last_error = Set(error);
    Ok(source.update(db).await?)
}

/// Marks a scan as started: state `scanning`, counters zero.
pub async fn start_scan(db: &impl ConnectionTrait, id: Uuid) -> Result<library_source::Model> {
    save_scan(
        db,
        id,
        SourceState::Scanning,
        ScanCounts::default(),
        None,
        true,
    )
    .await
}

/// Saves a scan's counters (and, when it ended, its final state and error).
pub async fn save_scan(
    db: &impl ConnectionTrait,
    id: Uuid,
    state: SourceState,
    counts: ScanCounts,
    error: Option<String>,
    starting: bool,
) -> Result<library_source::Model> {
    let mut source: library_source::ActiveModel = get_source(db, id)
        .await?
        .ok_or_else(|| StoreError::Missing(format!("no source with id {id}")))?
        .into();
    source.state = Set(state);
    source.last_error = Set(error);
    source.found = Set(counts.found);
    source.new = Set(counts.new);
    source.changed = Set(counts.changed);
    source.moved = Set(counts.moved);
    source.gone = Set(counts.gone);
    source.failed = Set(counts.failed);
    if starting {
        source.scan_started_at = Set(Some(now()));
    } else if state == SourceState::Idle {
        source.scanned_at = Set(Some(now()));
    }
    Ok(source.update(db).await?)
}

/// Deletes the source and its locations (not the files: see [`files_without_locations`]).
pub async fn delete_source(db: &impl ConnectionTrait, id: Uuid) -> Result<bool> {
    FileLocation::delete_many()
        .filter(file_location::Column::SourceId.eq(id))
        .exec(db)
        .await?;
    Ok(LibrarySource::delete_by_id(id)
        .exec(db)
        .await?
        .rows_affected
        == 1)
}

/// Every location in a source.
pub async fn locations_in_source(
    db: &impl ConnectionTrait,
    source_id: Uuid,
) -> Result<Vec<file_location::Model>> {
    Ok(FileLocation::find()
        .filter(file_location::Column::SourceId.eq(source_id))
        .all(db)
        .await?)
}

/// The locations in a source at `path` or below it (`path/…`).
pub async fn locations_under(
    db: &impl ConnectionTrait,
    source_id: Uuid,
    path: &str,
) -> Result<Vec<file_location::Model>> {
    let path = path.trim_end_matches('/');
    let pattern = format!("{}/%", escape_like(path));
    let below = format!("{path}/");
    let found = FileLocation::find()
        .filter(file_location::Column::SourceId.eq(source_id))
        .filter(
            sea_orm::Condition::any()
                .add(file_location::Column::Path.eq(path))
                .add(
                    Expr::col(file_location::Column::Path)
                        .like(LikeExpr::new(pattern).escape('\\')),
                ),
        )
        .all(db)
        .await?;
    // SQLite's LIKE ignores ASCII case; paths do not.
    Ok(found
        .into_iter()
        .filter(|l| l.path == path || l.path.starts_with(&below))
        .collect())
}

/// `s` with LIKE's wildcards escaped (by `\`).
pub fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every location of a file, oldest first.
pub async fn locations_of_file(
    db: &impl ConnectionTrait,
    file_id: Uuid,
) -> Result<Vec<file_location::Model>> {
    Ok(FileLocation::find()
        .filter(file_location::Column::FileId.eq(file_id))
        .order_by_asc(file_location::Column::CreatedAt)
        .all(db)
        .await?)
}

/// How many locations a file has.
pub async fn count_locations(db: &impl ConnectionTrait, file_id: Uuid) -> Result<u64> {
    Ok(FileLocation::find()
        .filter(file_location::Column::FileId.eq(file_id))
        .count(db)
        .await?)
}

/// Records that `file_id`'s content is at `path` in the source (replacing what was there).
pub async fn put_location(
    db: &impl ConnectionTrait,
    source_id: Uuid,
    path: &str,
    file_id: Uuid,
    size_bytes: i64,
    mtime_ns: i64,
) -> Result<()> {
    use file_location::Column as C;
    let insert = Query::insert()
        .into_table(FileLocation)
        .columns([
            C::SourceId,
            C::Path,
            C::FileId,
            C::SizeBytes,
            C::MtimeNs,
            C::CreatedAt,
        ])
        .values_panic([
            source_id.into(),
            path.into(),
            file_id.into(),
            size_bytes.into(),
            mtime_ns.into(),
            now().into(),
        ])
        .on_conflict(
            OnConflict::columns([C::SourceId, C::Path])
                .update_columns([C::FileId, C::SizeBytes, C::MtimeNs])
                .to_owned(),
        )
        .to_owned();
    db.execute(&insert).await?;
    Ok(())
}

/// Moves a location to a new path (a renamed or moved file), keeping its file.
pub async fn move_location(
    db: &impl ConnectionTrait,
    source_id: Uuid,
    from: &str,
    to: &str,
    size_bytes: i64,
    mtime_ns: i64,
) -> Result<bool> {
    use file_location::Column as C;
    let res = FileLocation::update_many()
        .col_expr(C::Path, Expr::value(to))
        .col_expr(C::SizeBytes, Expr::value(size_bytes))
        .col_expr(C::MtimeNs, Expr::value(mtime_ns))
        .filter(C::SourceId.eq(source_id))
        .filter(C::Path.eq(from))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Removes one location; returns it.
pub async fn delete_location(
    db: &impl ConnectionTrait,
    source_id: Uuid,
    path: &str,
) -> Result<Option<file_location::Model>> {
    let Some(location) = FileLocation::find_by_id((source_id, path.to_owned()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    FileLocation::delete_by_id((source_id, path.to_owned()))
        .exec(db)
        .await?;
    Ok(Some(location))
}

/// Of these files, those with no location left.
pub async fn files_without_locations(
    db: &impl ConnectionTrait,
    file_ids: &[Uuid],
) -> Result<Vec<Uuid>> {
    let mut orphans = Vec::new();
    for &id in file_ids {
        if count_locations(db, id).await? == 0 {
            orphans.push(id);
        }
    }
    Ok(orphans)
}

/// Gives every file that has no location one in the upload source (its stored copy):
/// libraries written before sources existed. Returns how many it gave.
pub async fn adopt_unlocated_uploads(db: &impl ConnectionTrait, storage: &str) -> Result<u64> {
    use crate::audio_file::{Column as F, Entity as AudioFile};
    let upload = upload_source(db, storage).await?;
    let unlocated = AudioFile::find()
        .filter(
            F::Id.not_in_subquery(
                Query::select()
                    .column(file_location::Column::FileId)
                    .from(FileLocation)
                    .to_owned(),
            ),
        )
        .all(db)
        .await?;
    for file in &unlocated {
        put_location(
            db,
            upload.id,
            &file.stored_path,
            file.id,
            file.size_bytes,
            0,
        )
        .await?;
    }
    Ok(unlocated.len() as u64)
}

/// Counts of files per source (a file in two sources counts in both).
pub async fn files_per_source(
    db: &impl ConnectionTrait,
) -> Result<std::collections::HashMap<Uuid, u64>> {
    use sea_orm::{FromQueryResult, QuerySelect};
    #[derive(FromQueryResult)]
    struct Row {
        source_id: Uuid,
        n: i64,
    }
    let rows = FileLocation::find()
        .select_only()
        .column(file_location::Column::SourceId)
        .column_as(Expr::cust("COUNT(DISTINCT file_id)"), "n")
        .group_by(file_location::Column::SourceId)
        .into_model::<Row>()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.source_id, r.n as u64))
        .collect())
}
