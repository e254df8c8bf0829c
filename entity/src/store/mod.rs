//! What the server does with the database: plain async functions over a
//! [`DatabaseConnection`], one per operation, with [`StoreError`] errors.
//!
//! - [`connect_and_migrate`]: open SQLite or PostgreSQL and bring the schema up
//!   to date.
//! - files ([`files`]): [`insert_or_get_by_hash`], status and progress updates by id,
//!   [`delete`], keyset-paginated [`list`].
//! - work ([`work`]): claims with lease tokens shared by every process on the database
//!   ([`work::claim_next`]), and the lease-checked writes of the worker holding a file.
//! - [`notify`]: a PostgreSQL notification, sent when the caller's transaction commits.
//! - searches ([`searches`]): [`log_search`], [`search_stats`], [`recent_searches`].
//!
//! Every statement is portable between SQLite and PostgreSQL; the tests run
//! each function on both.
//!
//! Timestamps are written by this module (UTC, truncated to microseconds, the
//! precision PostgreSQL keeps), never by a database default, so both backends
//! store and compare them the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use log::LevelFilter;
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use uuid::Uuid;

pub mod files;
pub mod keys;
pub mod models;
pub mod searches;
pub mod sources;

pub mod work;

pub use files::{
    composition_by_format, count_by_status, delete, fail, get, get_by_hash, get_many, id_for_hash,
    insert_or_get_by_hash, list, mark_indexed, set_decoded, set_media_info, set_progress,
    set_status, Cursor, FormatShare, ListQuery, MediaInfo, NewAudioFile, Page, SortOrder,
    StatusCounts,
};
pub use keys::{
    count_live_keys, create_key, find_key, hash_secret, list_keys, revoke_key, setting_or_insert,
    touch_key, KEY_PREFIX,
};
pub use searches::{
    count_searches, log_search, recent_searches, search_stats, NewSearch, SearchStats,
};
pub use work::{Claimed, Lease};

/// How long a SQLite connection waits for another writer before giving up.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in a SQLite file's pool (WAL lets readers run beside a writer).
pub const SQLITE_MAX_CONNECTIONS: u32 = 4;

/// Errors of the store functions.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed (connection, SQL, constraint).
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// No audio file has this id.
    #[error("audio file {0} not found")]
    NotFound(Uuid),
    /// A pagination cursor that [`Cursor::encode`] did not make.
    #[error("invalid cursor {0:?}")]
    InvalidCursor(String),
    /// An argument out of range (a negative count, a lease too long, …).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Something else named by the caller (an API key, a setting) does not exist.
    #[error("{0}")]
    Missing(String),
    /// The SQLite file's directory could not be created.
    #[error("cannot create the database directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Result of the store functions.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Now, as the store writes it: UTC, truncated to microseconds.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Sends `payload` on the PostgreSQL notification `channel` through `conn`: inside a
/// transaction it is delivered when (and only if) the transaction commits, after the rows it
/// announces are visible. Nothing happens on SQLite (one process: nobody else to tell).
pub async fn notify(conn: &impl ConnectionTrait, channel: &str, payload: &str) -> Result<()> {
    if conn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    conn.query_one_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_notify($1, $2)",
        [channel.into(), payload.into()],
    ))
    .await?;
    Ok(())
}

/// The `DATABASE_URL` of a SQLite file (created on first connect).
pub fn sqlite_url(path: &Path) -> String {
    let mut url = String::from("sqlite://");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => url.push_str("%25"),
            '?' => url.push_str("%3F"),
            '#' => url.push_str("%23"),
            c => url.push(c),
        }
    }
    url
}

/// Opens the database at `url` and applies every pending migration.
///
/// `url` is `sqlite://PATH` (relative or absolute; the file and its parent
/// directory are created), `sqlite::memory:` (tests), or
/// `postgres://user[:password]@host[:port]/database`.
///
/// SQLite files run in WAL mode with a busy timeout of
/// [`SQLITE_BUSY_TIMEOUT`] and foreign keys on.
pub async fn connect_and_migrate(url: &str) -> Result<DatabaseConnection> {
    let db = connect(url).await?;
    Migrator::up(&db, None).await?;
    tracing::debug!(backend = ?db.get_database_backend(), "database schema up to date");
    Ok(db)
}

/// Opens the database at `url` like [`connect_and_migrate`], without migrating.
pub async fn connect(url: &str) -> Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_owned());
    // sea-orm logs every statement at INFO; keep that for RUST_LOG=debug and
    // surface only slow statements.
    opts.sqlx_logging(true)
        .sqlx_logging_level(LevelFilter::Debug)
        .sqlx_slow_statements_logging_settings(LevelFilter::Warn, Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30));
    if DbBackend::Sqlite.is_prefix_of(url) {
        if is_sqlite_memory(url) {
            // An in-memory database lives as long as its connections: keep
            // exactly one, forever.
            opts.max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
            opts.map_sqlx_sqlite_opts(|o| o.foreign_keys(true));
        } else {
            if let Some(dir) = sqlite_file_path(url).and_then(|p| p.parent().map(Path::to_owned)) {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(&dir)
                        .map_err(|source| StoreError::CreateDir { path: dir, source })?;
                }
            }
            opts.max_connections(SQLITE_MAX_CONNECTIONS);
            opts.map_sqlx_sqlite_opts(|o| {
                use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                o.create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true)
            });
        }
    }
    Ok(Database::connect(opts).await?)
}

fn is_sqlite_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// The file a `sqlite:` URL names, if it names one.
fn sqlite_file_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || is_sqlite_memory(url) {
        return None;
    }
    Some(PathBuf::from(percent_decode(path)))
}

/// `%XX` → byte, as sqlx does with the file name of a `sqlite:` URL.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_file_path("sqlite://data/traum.db?mode=rwc"),
            Some(PathBuf::from("data/traum.db"))
        );
        assert_eq!(
            sqlite_file_path("sqlite:///abs/traum.db"),
            Some(PathBuf::from("/abs/traum.db"))
        );
        assert_eq!(
            sqlite_file_path("sqlite:traum.db"),
            Some(PathBuf::from("traum.db"))
        );
        assert_eq!(sqlite_file_path("sqlite::memory:"), None);
        assert_eq!(sqlite_file_path("postgres://x@y/z"), None);
        let odd = Path::new("/tmp/a b/100%?#/t.db");
        assert_eq!(sqlite_url(odd), "sqlite:///tmp/a b/100%25%3F%23/t.db");
        assert_eq!(sqlite_file_path(&sqlite_url(odd)).as_deref(), Some(odd));
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn now_is_microseconds() {
        assert_eq!(now().timestamp_subsec_nanos() % 1000, 0);
    }
}
