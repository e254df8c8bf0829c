//! Audio files: dedup on insert, state changes by id, listing.
//!
//! The setters here ([`set_status`], [`set_progress`], [`mark_indexed`], [`fail`]) go by id
//! alone: they are for people (a reprocess) and tests. A worker holding a file writes
//! through [`super::work`], where every write names its lease token.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::{now, Result, StoreError};
use crate::audio_file::{Column, Entity as AudioFile, FileStatus, Model};

/// Namespace of the UUIDv5 ids derived from content hashes.
pub const AUDIO_FILE_ID_NAMESPACE: Uuid =
    Uuid::from_u128(0x5c1d_7a3e_9b04_4f6e_a2d8_31c0_e7f5_9a12);

/// The id a file with this content hash gets (UUIDv5 of the lowercase hash).
///
/// The same bytes always get the same id, so an id computed before the insert
/// (to name the stored file, say) is the row's id.
pub fn id_for_hash(content_hash: &str) -> Uuid {
    Uuid::new_v5(
        &AUDIO_FILE_ID_NAMESPACE,
        content_hash.to_ascii_lowercase().as_bytes(),
    )
}

/// What an upload knows about a file before it is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAudioFile {
    pub original_name: String,
    pub stored_path: String,
    /// SHA-256 of the bytes, hex (stored lowercase).
    pub content_hash: String,
    pub size_bytes: i64,
    /// Container as sniffed at upload (`wav`, `flac`, …).
    pub container: String,
}

/// What decoding learnt about a file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaInfo {
    pub codec: Option<String>,
    pub duration_s: Option<f64>,
    pub sample_rate: Option<i32>,
    pub channels: Option<i32>,
}

/// Inserts a `queued` file, or returns the file that already has this content
/// hash. Returns `(row, created)`.
///
/// Race-safe: concurrent calls with the same hash create one row (the insert
/// is `ON CONFLICT DO NOTHING` on the unique hash and the id derived from it),
/// and every caller gets that row back.
pub async fn insert_or_get_by_hash(
    db: &impl ConnectionTrait,
    new: NewAudioFile,
) -> Result<(Model, bool)> {
    let hash = new.content_hash.to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::InvalidArgument(format!(
            "content_hash must be 64 hex digits (SHA-256), got {:?}",
            new.content_hash
        )));
    }
    if new.size_bytes < 0 {
        return Err(StoreError::InvalidArgument(format!(
            "size_bytes must not be negative, got {}",
            new.size_bytes
        )));
    }
    let id = id_for_hash(&hash);
    let t = now();
    let insert = Query::insert()
        .into_table(AudioFile)
        .columns([
            Column::Id,
            Column::OriginalName,
            Column::StoredPath,
            Column::ContentHash,
            Column::SizeBytes,
            Column::Container,
            Column::Status,
            Column::WindowsDone,
            Column::WindowsTotal,
            Column::Attempts,
            Column::CreatedAt,
            Column::UpdatedAt,
        ])
        .values_panic([
            id.into(),
            new.original_name.into(),
            new.stored_path.into(),
            hash.clone().into(),
            new.size_bytes.into(),
            new.container.into(),
            FileStatus::Queued.into(),
            0i32.into(),
            0i32.into(),
            0i32.into(),
            t.into(),
            t.into(),
        ])
        // No conflict target: any unique violation (hash or id) means "exists".
        .on_conflict(OnConflict::new().do_nothing().to_owned())
        .to_owned();
    let created = db.execute(&insert).await?.rows_affected() == 1;
    let row = get_by_hash(db, &hash).await?.ok_or_else(|| {
        // Only if a row with the same id but another hash exists (a UUIDv5
        // collision) or the row was deleted in between.
        StoreError::Db(sea_orm::DbErr::RecordNotFound(format!(
            "audio_file with content_hash {hash} vanished after insert"
        )))
    })?;
    Ok((row, created))
}

/// The file with this id.
pub async fn get(db: &impl ConnectionTrait, id: Uuid) -> Result<Option<Model>> {
    Ok(AudioFile::find_by_id(id).one(db).await?)
}

/// The files with these ids, in one query, keyed by id (missing ids are
/// absent).
pub async fn get_many(
    db: &DatabaseConnection,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Model>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows = AudioFile::find()
        .filter(Column::Id.is_in(ids.iter().copied()))
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|r| (r.id, r)).collect())
}

/// The file with this content hash (hex, any case).
pub async fn get_by_hash(db: &impl ConnectionTrait, content_hash: &str) -> Result<Option<Model>> {
    Ok(AudioFile::find()
        .filter(Column::ContentHash.eq(content_hash.to_ascii_lowercase()))
        .one(db)
        .await?)
}

async fn get_existing(db: &impl ConnectionTrait, id: Uuid) -> Result<Model> {
    get(db, id).await?.ok_or(StoreError::NotFound(id))
}

/// Runs an UPDATE of one file by id; `NotFound` if no row has the id.
async fn update_by_id(
    db: &impl ConnectionTrait,
    id: Uuid,
    sets: Vec<(Column, SimpleExpr)>,
) -> Result<Model> {
    let mut update = AudioFile::update_many()
        .col_expr(Column::UpdatedAt, Expr::value(now()))
        .filter(Column::Id.eq(id));
    for (col, value) in sets {
        update = update.col_expr(col, value);
    }
    if update.exec(db).await?.rows_affected == 0 {
        return Err(StoreError::NotFound(id));
    }
    get_existing(db, id).await
}

pub(super) fn null_string() -> SimpleExpr {
    Expr::value(Option::<String>::None)
}

pub(super) fn null_time() -> SimpleExpr {
    Expr::value(Option::<DateTime<Utc>>::None)
}

/// The lease columns cleared.
pub(super) fn no_lease() -> [(Column, SimpleExpr); 3] {
    [
        (Column::LeaseOwner, null_string()),
        (Column::LeaseToken, Expr::value(Option::<Uuid>::None)),
        (Column::LeaseExpiresAt, null_time()),
    ]
}

pub(super) fn check_duration(duration_s: f64) -> Result<()> {
    if !duration_s.is_finite() || duration_s < 0.0 {
        return Err(StoreError::InvalidArgument(format!(
            "decoded duration {duration_s}"
        )));
    }
    Ok(())
}

pub(super) fn check_progress(windows_done: i32, windows_total: i32) -> Result<()> {
    if windows_done < 0 || windows_total < 0 || windows_done > windows_total {
        return Err(StoreError::InvalidArgument(format!(
            "progress {windows_done}/{windows_total}"
        )));
    }
    Ok(())
}

/// Sets the status.
///
/// Side effects by target status: `queued` clears the lease, the error, the
/// progress, the attempts and any back-off (a manual retry: the file starts afresh); `indexed` sets `indexed_at` and clears the lease
/// and the error (prefer [`mark_indexed`], which also records the model);
/// `failed` clears the lease (prefer [`fail`], which records why);
/// `decoding`/`embedding` touch nothing else.
pub async fn set_status(db: &impl ConnectionTrait, id: Uuid, status: FileStatus) -> Result<Model> {
    let mut sets = vec![(Column::Status, Expr::value(status))];
    match status {
        FileStatus::Queued => {
            sets.extend(no_lease());
            sets.push((Column::ErrorCode, null_string()));
            sets.push((Column::ErrorMessage, null_string()));
            sets.push((Column::WindowsDone, Expr::value(0i32)));
            sets.push((Column::Attempts, Expr::value(0i32)));
            sets.push((Column::RetryAt, null_time()));
        }
        FileStatus::Indexed => {
            sets.extend(no_lease());
            sets.push((Column::ErrorCode, null_string()));
            sets.push((Column::ErrorMessage, null_string()));
            sets.push((Column::IndexedAt, Expr::value(now())));
        }
        FileStatus::Failed => sets.extend(no_lease()),
        FileStatus::Decoding | FileStatus::Embedding => {}
    }
    update_by_id(db, id, sets).await
}

/// Records what decoding learnt (codec, duration, sample rate, channels).
pub async fn set_media_info(db: &DatabaseConnection, id: Uuid, info: &MediaInfo) -> Result<Model> {
    update_by_id(
        db,
        id,
        vec![
            (Column::Codec, Expr::value(info.codec.clone())),
            (Column::DurationS, Expr::value(info.duration_s)),
            (Column::SampleRate, Expr::value(info.sample_rate)),
            (Column::Channels, Expr::value(info.channels)),
        ],
    )
    .await
}

/// What decoding found, replacing the header's claims: the decoded length (what the windows
/// cover), and the container when the decoder saw another one than the upload's sniff.
pub async fn set_decoded(
    db: &DatabaseConnection,
    id: Uuid,
    duration_s: f64,
    container: Option<&str>,
) -> Result<Model> {
    check_duration(duration_s)?;
    let mut sets = vec![(Column::DurationS, Expr::value(duration_s))];
    if let Some(c) = container {
        sets.push((Column::Container, Expr::value(c)));
    }
    update_by_id(db, id, sets).await
}

/// Records embedding progress: `windows_done` of `windows_total`.
pub async fn set_progress(
    db: &DatabaseConnection,
    id: Uuid,
    windows_done: i32,
    windows_total: i32,
) -> Result<()> {
    check_progress(windows_done, windows_total)?;
    let res = AudioFile::update_many()
        .col_expr(Column::WindowsDone, Expr::value(windows_done))
        .col_expr(Column::WindowsTotal, Expr::value(windows_total))
        .col_expr(Column::UpdatedAt, Expr::value(now()))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await?;
    if res.rows_affected == 0 {
        return Err(StoreError::NotFound(id));
    }
    Ok(())
}

/// The file's vectors are in the index: `indexed`, with the model that made
/// them; progress complete, lease and error cleared.
pub async fn mark_indexed(db: &DatabaseConnection, id: Uuid, model_id: &str) -> Result<Model> {
    let mut sets = vec![
        (Column::Status, Expr::value(FileStatus::Indexed)),
        (Column::ModelId, Expr::value(model_id)),
        (Column::IndexedAt, Expr::value(now())),
        (Column::WindowsDone, Expr::col(Column::WindowsTotal)),
        (Column::ErrorCode, null_string()),
        (Column::ErrorMessage, null_string()),
    ];
    sets.extend(no_lease());
    update_by_id(db, id, sets).await
}

/// The file cannot be indexed: `failed`, with a stable `code` (see
/// [`error_code`]) and a message for people; lease cleared.
pub async fn fail(db: &DatabaseConnection, id: Uuid, code: &str, message: &str) -> Result<Model> {
    let mut sets = vec![
        (Column::Status, Expr::value(FileStatus::Failed)),
        (Column::ErrorCode, Expr::value(code)),
        (Column::ErrorMessage, Expr::value(message)),
    ];
    sets.extend(no_lease());
    update_by_id(db, id, sets).await
}

/// Where the file's bytes are read from now (another of its locations, when the one it
/// was read from is gone).
pub async fn set_stored_path(db: &impl ConnectionTrait, id: Uuid, stored_path: &str) -> Result<()> {
    AudioFile::update_many()
        .col_expr(Column::StoredPath, Expr::value(stored_path))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Deletes the file's row and returns it (`None` if there was none). The
/// stored bytes and the vectors are the caller's to remove.
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> Result<Option<Model>> {
    let Some(row) = get(db, id).await? else {
        return Ok(None);
    };
    let res = AudioFile::delete_by_id(id).exec(db).await?;
    Ok((res.rows_affected == 1).then_some(row))
}

/// Listing order, by `(created_at, id)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Oldest first.
    Asc,
    /// Newest first.
    #[default]
    Desc,
}

/// A position in a listing: the `(created_at, id)` of the last row seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    /// The cursor just after `row`.
    pub fn after(row: &Model) -> Self {
        Cursor {
            created_at: row.created_at,
            id: row.id,
        }
    }

    /// An opaque, URL-safe string for clients.
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.id.simple()
        )
    }

    /// Reads [`Cursor::encode`]'s string back.
    pub fn decode(s: &str) -> Result<Self> {
        let bad = || StoreError::InvalidCursor(s.to_owned());
        let (micros, id) = s.split_once('_').ok_or_else(bad)?;
        let created_at = micros
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(bad)?;
        let id = Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Cursor { created_at, id })
    }
}

/// A listing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Only files in this state.
    pub status: Option<FileStatus>,
    /// Only files with a location in this source.
    pub source: Option<Uuid>,
    /// Only files with a location in this folder (an absolute path) or below it.
    pub folder: Option<String>,
    pub order: SortOrder,
    /// Start after this row (from the previous [`Page::next`]).
    pub after: Option<Cursor>,
    /// Rows per page, at most [`ListQuery::MAX_LIMIT`]; 0 gives just the total.
    pub limit: u64,
}

impl ListQuery {
    pub const MAX_LIMIT: u64 = 1000;
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            status: None,
            source: None,
            folder: None,
            order: SortOrder::Desc,
            after: None,
            limit: 50,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Model>,
    /// All rows matching the filter, on every page.
    pub total: u64,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Lists files by `(created_at, id)` with keyset pagination: stable under
/// inserts and deletes, no row seen twice, no OFFSET scans.
pub async fn list(db: &DatabaseConnection, query: &ListQuery) -> Result<Page> {
    let limit = std::cmp::min(query.limit, ListQuery::MAX_LIMIT);
    let mut filtered = AudioFile::find();
    if let Some(status) = query.status {
        filtered = filtered.filter(Column::Status.eq(status));
    }
    if query.source.is_some() || query.folder.is_some() {
        use crate::file_location::{Column as L, Entity as FileLocation};
        let mut located = Query::select()
            .column(L::FileId)
            .from(FileLocation)
            .to_owned();
        if let Some(source) = query.source {
            located.and_where(L::SourceId.eq(source));
        }
        if let Some(folder) = &query.folder {
            let folder = folder.trim_end_matches('/');
            let pattern = format!("{}/%", super::sources::escape_like(folder));
            located.cond_where(Condition::any().add(L::Path.eq(folder)).add(
                Expr::col(L::Path).like(sea_orm::sea_query::LikeExpr::new(pattern).escape('\\')),
            ));
        }
        filtered = filtered.filter(Column::Id.in_subquery(located));
    }
    let total = filtered.clone().count(db).await?;
    if limit == 0 {
        return Ok(Page {
            items: Vec::new(),
            total,
            next: None,
        });
    }
    let mut select = filtered;
    if let Some(c) = query.after {
        let (beyond_time, beyond_id) = match query.order {
            SortOrder::Asc => (Column::CreatedAt.gt(c.created_at), Column::Id.gt(c.id)),
            SortOrder::Desc => (Column::CreatedAt.lt(c.created_at), Column::Id.lt(c.id)),
        };
        select = select.filter(
            Condition::any().add(beyond_time).add(
                Condition::all()
                    .add(Column::CreatedAt.eq(c.created_at))
                    .add(beyond_id),
            ),
        );
    }
    select = match query.order {
        SortOrder::Asc => select
            .order_by_asc(Column::CreatedAt)
            .order_by_asc(Column::Id),
        SortOrder::Desc => select
            .order_by_desc(Column::CreatedAt)
            .order_by_desc(Column::Id),
    };
    let mut items = select.limit(limit + 1).all(db).await?;
    let more = items.len() as u64 > limit;
    items.truncate(limit as usize);
    let next = if more {
        items.last().map(Cursor::after)
    } else {
        None
    };
    Ok(Page { items, total, next })
}

/// How many files are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub queued: u64,
    pub decoding: u64,
    pub embedding: u64,
    pub indexed: u64,
    pub failed: u64,
}

impl StatusCounts {
    pub fn get(&self, status: FileStatus) -> u64 {
        match status {
            FileStatus::Queued => self.queued,
            FileStatus::Decoding => self.decoding,
            FileStatus::Embedding => self.embedding,
            FileStatus::Indexed => self.indexed,
            FileStatus::Failed => self.failed,
        }
    }

    pub fn total(&self) -> u64 {
        FileStatus::ALL.iter().map(|s| self.get(*s)).sum()
    }
}

/// Counts files per status (one grouped query).
pub async fn count_by_status(db: &DatabaseConnection) -> Result<StatusCounts> {
    let rows: Vec<(FileStatus, i64)> = AudioFile::find()
        .select_only()
        .column(Column::Status)
        .column_as(Column::Id.count(), "n")
        .group_by(Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    let mut counts = StatusCounts::default();
    for (status, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        match status {
            FileStatus::Queued => counts.queued = n,
            FileStatus::Decoding => counts.decoding = n,
            FileStatus::Embedding => counts.embedding = n,
            FileStatus::Indexed => counts.indexed = n,
            FileStatus::Failed => counts.failed = n,
        }
    }
    Ok(counts)
}

/// Files, bytes and seconds of audio per container (what the library is made of).
#[derive(Debug, Clone, PartialEq)]
pub struct FormatShare {
    pub container: String,
    pub files: u64,
    pub bytes: f64,
    /// Seconds of decoded audio (files not yet decoded count 0).
    pub duration_s: f64,
}

/// The library's composition by container, largest share of files first
/// (one grouped query). Sums are cast to double so SQLite and PostgreSQL
/// (where `SUM(bigint)` is `numeric`) decode alike.
pub async fn composition_by_format(db: &DatabaseConnection) -> Result<Vec<FormatShare>> {
    let rows: Vec<(String, i64, Option<f64>, Option<f64>)> = AudioFile::find()
        .select_only()
        .column(Column::Container)
        .column_as(Column::Id.count(), "n")
        .column_as(
            Expr::cust("CAST(SUM(size_bytes) AS DOUBLE PRECISION)"),
            "bytes",
        )
        .column_as(
            Expr::cust("CAST(SUM(duration_s) AS DOUBLE PRECISION)"),
            "seconds",
        )
        .group_by(Column::Container)
        .into_tuple()
        .all(db)
        .await?;
    let mut shares: Vec<FormatShare> = rows
        .into_iter()
        .map(|(container, n, bytes, seconds)| FormatShare {
            container,
            files: u64::try_from(n).unwrap_or(0),
            bytes: bytes.unwrap_or(0.0),
            duration_s: seconds.unwrap_or(0.0),
        })
        .collect();
    shares.sort_by(|a, b| b.files.cmp(&a.files).then(a.container.cmp(&b.container)));
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            id: id_for_hash(&"ab".repeat(32)),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        for bad in [
            "",
            "x",
            "1_",
            "_abc",
            "12_nothex",
            "1.5_00000000000000000000000000000000",
        ] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_stable_and_case_insensitive() {
        let h = "0123456789abcdef".repeat(4);
        assert_eq!(id_for_hash(&h), id_for_hash(&h.to_uppercase()));
        assert_ne!(id_for_hash(&h), id_for_hash(&"f".repeat(64)));
        assert_eq!(id_for_hash(&h).get_version_num(), 5);
    }
}
