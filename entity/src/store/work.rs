//! Work on files: claims, leases, and how an attempt ends.
//!
//! The database is the work queue, shared by every process that uses it (one `traum serve`,
//! or several replicas and `traum ingest`s on one PostgreSQL).
//!
//! # Claims and leases
//!
//! A worker calls [`claim_next`] with its owner id and a lease duration. The claim takes the
//! oldest claimable file (`queued` and past any back-off, or in progress with an expired
//! lease), counts an attempt, and gives it a fresh **lease token**. On PostgreSQL it is one
//! `UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)`: claimers never wait on each
//! other. On SQLite (one process) it is a conditional `UPDATE` retried on a lost race.
//!
//! Every later write of the worker ([`renew`], [`start_embedding`], [`save_progress`],
//! [`save_decoded`], [`commit_indexed`], [`fail_attempt`], [`retry_later`], [`release`])
//! names the [`Lease`] and changes nothing unless the row still carries that token: a worker
//! whose lease ran out, and whose file another process claimed since, cannot overwrite that
//! process's work, and a file deleted or reprocessed meanwhile is left alone. Each returns
//! whether (or what) it wrote, so the worker knows it lost the file.
//!
//! # Attempts
//!
//! Attempts are counted at the claim, so a worker that dies (a crash, a kill, a file that
//! takes the process down) has used its attempt. [`claim_next`] never claims a file that has
//! used `max_attempts`; [`fail_exhausted`] fails such files with `TOO_MANY_ATTEMPTS`, naming
//! the last error when there was one. Only [`release`] (a worker stopped on purpose, at
//! shutdown or by a delete) gives the attempt back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::files::{
    check_duration, check_progress, get, no_lease, null_string, null_time, MediaInfo,
};
use super::{now, Result, StoreError};
use crate::audio_file::{error_code, Column, Entity as AudioFile, FileStatus, Model};

/// A worker's hold on one file: what every write it makes names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub file_id: Uuid,
    /// New at every claim.
    pub token: Uuid,
}

/// A file [`claim_next`] gave a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The row as claimed: `decoding`, attempts counted.
    pub row: Model,
    pub lease: Lease,
}

/// The longest lease accepted (a guard against a unit mix-up).
const MAX_LEASE: chrono::Duration = chrono::Duration::days(365);

fn chrono_duration(what: &str, d: Duration) -> Result<chrono::Duration> {
    chrono::Duration::from_std(d)
        .ok()
        .filter(|d| *d <= MAX_LEASE)
        .ok_or_else(|| StoreError::InvalidArgument(format!("{what} of {d:?} is too long")))
}

fn check_max_attempts(max_attempts: i32) -> Result<()> {
    if max_attempts < 1 {
        return Err(StoreError::InvalidArgument(format!(
            "max_attempts must be at least 1, got {max_attempts}"
        )));
    }
    Ok(())
}

const IN_PROGRESS: [FileStatus; 2] = [FileStatus::Decoding, FileStatus::Embedding];

/// Files a worker may take at `t`, attempts aside: `queued` past any back-off, or in
/// progress with an expired (or missing) lease (its worker died or hung).
fn claimable(t: DateTime<Utc>) -> Condition {
    let lease_over = Condition::any()
        .add(Column::LeaseExpiresAt.is_null())
        .add(Column::LeaseExpiresAt.lt(t));
    Condition::any()
        .add(
            Condition::all()
                .add(Column::Status.eq(FileStatus::Queued))
                .add(
                    Condition::any()
                        .add(Column::RetryAt.is_null())
                        .add(Column::RetryAt.lte(t)),
                ),
        )
        .add(
            Condition::all()
                .add(Column::Status.is_in(IN_PROGRESS))
                .add(lease_over),
        )
}

/// The row still carries this lease (and is being worked on).
fn held(lease: &Lease) -> Condition {
    Condition::all()
        .add(Column::Id.eq(lease.file_id))
        .add(Column::LeaseToken.eq(lease.token))
        .add(Column::Status.is_in(IN_PROGRESS))
}

/// The columns a claim sets.
fn claim_sets(
    owner: &str,
    token: Uuid,
    t: DateTime<Utc>,
    lease: chrono::Duration,
) -> [(Column, SimpleExpr); 10] {
    [
        (Column::Status, Expr::value(FileStatus::Decoding)),
        (Column::LeaseOwner, Expr::value(owner)),
        (Column::LeaseToken, Expr::value(token)),
        (Column::LeaseExpiresAt, Expr::value(t + lease)),
        (Column::Attempts, Expr::col(Column::Attempts).add(1)),
        (Column::WindowsDone, Expr::value(0i32)),
        (Column::ErrorCode, null_string()),
        (Column::ErrorMessage, null_string()),
        (Column::RetryAt, null_time()),
        (Column::UpdatedAt, Expr::value(t)),
    ]
}

/// Claims the oldest claimable file with attempts left for `owner`, leased for `lease`:
/// `decoding`, one more attempt, a new lease token, progress, error and back-off cleared.
/// `None` when there is nothing to do. Safe with any number of concurrent claimers in any
/// number of processes (see the module docs).
pub async fn claim_next(
    db: &DatabaseConnection,
    owner: &str,
    lease: Duration,
    max_attempts: i32,
) -> Result<Option<Claimed>> {
    let lease_len = chrono_duration("lease", lease)?;
    check_max_attempts(max_attempts)?;
    match db.get_database_backend() {
        DbBackend::Postgres => claim_skip_locked(db, owner, lease_len, max_attempts).await,
        _ => claim_optimistic(db, owner, lease_len, max_attempts).await,
    }
}

/// One statement: lock the first claimable row nobody else has locked, update it, return it.
async fn claim_skip_locked(
    db: &DatabaseConnection,
    owner: &str,
    lease: chrono::Duration,
    max_attempts: i32,
) -> Result<Option<Claimed>> {
    let t = now();
    let token = Uuid::new_v4();
    let candidate = Query::select()
        .column(Column::Id)
        .from(AudioFile)
        .cond_where(claimable(t))
        .and_where(Column::Attempts.lt(max_attempts))
        .order_by(Column::CreatedAt, sea_orm::Order::Asc)
        .order_by(Column::Id, sea_orm::Order::Asc)
        .limit(1)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .to_owned();
    let mut update = AudioFile::update_many().filter(Column::Id.in_subquery(candidate));
    for (col, value) in claim_sets(owner, token, t, lease) {
        update = update.col_expr(col, value);
    }
    let mut rows = update.exec_with_returning(db).await?;
    Ok(rows.pop().map(|row| Claimed {
        lease: Lease {
            file_id: row.id,
            token,
        },
        row,
    }))
}

/// Look, then take it only if it is still claimable; a lost race means another claimer
/// took that file, so try the next.
async fn claim_optimistic(
    db: &DatabaseConnection,
    owner: &str,
    lease: chrono::Duration,
    max_attempts: i32,
) -> Result<Option<Claimed>> {
    // Each lost race means another claimer took a file, so this ends; the bound only
    // guards against a livelock nobody has seen.
    for _ in 0..1000 {
        let t = now();
        let still_claimable = || {
            Condition::all()
                .add(claimable(t))
                .add(Column::Attempts.lt(max_attempts))
        };
        let candidate: Option<Uuid> = AudioFile::find()
            .select_only()
            .column(Column::Id)
            .filter(still_claimable())
            .order_by_asc(Column::CreatedAt)
            .order_by_asc(Column::Id)
            .into_tuple()
            .one(db)
            .await?;
        let Some(id) = candidate else {
            return Ok(None);
        };
        let token = Uuid::new_v4();
        let mut update = AudioFile::update_many()
            .filter(Column::Id.eq(id))
            .filter(still_claimable());
        for (col, value) in claim_sets(owner, token, t, lease) {
            update = update.col_expr(col, value);
        }
        if update.exec(db).await?.rows_affected == 1 {
            return Ok(get(db, id).await?.map(|row| Claimed {
                row,
                lease: Lease { file_id: id, token },
            }));
        }
        tracing::trace!(%id, owner, "lost a claim race; trying the next file");
    }
    Ok(None)
}

/// Fails every claimable file that has used `max_attempts` (its workers kept dying, or its
/// passing failures kept coming back) with `TOO_MANY_ATTEMPTS`, and returns those rows.
/// Workers call it before they claim, so such a file ends `failed` instead of waiting.
pub async fn fail_exhausted(db: &DatabaseConnection, max_attempts: i32) -> Result<Vec<Model>> {
    check_max_attempts(max_attempts)?;
    let t = now();
    let exhausted = || {
        Condition::all()
            .add(claimable(t))
            .add(Column::Attempts.gte(max_attempts))
    };
    let rows = AudioFile::find()
        .filter(exhausted())
        .limit(100)
        .all(db)
        .await?;
    let mut failed = Vec::with_capacity(rows.len());
    for row in rows {
        let message = exhausted_message(row.attempts, row.error_message.as_deref());
        let mut update = AudioFile::update_many()
            .col_expr(Column::Status, Expr::value(FileStatus::Failed))
            .col_expr(
                Column::ErrorCode,
                Expr::value(error_code::TOO_MANY_ATTEMPTS),
            )
            .col_expr(Column::ErrorMessage, Expr::value(message))
            .col_expr(Column::RetryAt, null_time())
            .col_expr(Column::UpdatedAt, Expr::value(t))
            .filter(Column::Id.eq(row.id))
            .filter(exhausted());
        for (col, value) in no_lease() {
            update = update.col_expr(col, value);
        }
        if update.exec(db).await?.rows_affected == 1 {
            if let Some(row) = get(db, row.id).await? {
                tracing::warn!(id = %row.id, attempts = row.attempts, "giving up on a file");
                failed.push(row);
            }
        }
    }
    Ok(failed)
}

fn exhausted_message(attempts: i32, last_error: Option<&str>) -> String {
    match last_error {
        Some(last) => format!(
            "gave up after {attempts} attempts; the last one failed: {last}. \
             Reprocess the file to try again"
        ),
        None => format!(
            "gave up after {attempts} attempts: the worker stopped each time before it finished \
             (a crash, a kill, or a file that takes the process down). Reprocess the file to try \
             again"
        ),
    }
}

/// Runs an UPDATE of the held file; `None` if the lease no longer holds, else the new row.
async fn update_held(
    db: &impl ConnectionTrait,
    lease: &Lease,
    sets: Vec<(Column, SimpleExpr)>,
) -> Result<Option<Model>> {
    if !update_held_quiet(db, lease, sets).await? {
        return Ok(None);
    }
    get(db, lease.file_id).await
}

/// [`update_held`] without reading the row back.
async fn update_held_quiet(
    db: &impl ConnectionTrait,
    lease: &Lease,
    sets: Vec<(Column, SimpleExpr)>,
) -> Result<bool> {
    let mut update = AudioFile::update_many()
        .col_expr(Column::UpdatedAt, Expr::value(now()))
        .filter(held(lease));
    for (col, value) in sets {
        update = update.col_expr(col, value);
    }
    Ok(update.exec(db).await?.rows_affected == 1)
}

/// Extends the lease to now + `lease`. `false`: the worker lost the file (its lease ran out
/// and another worker claimed it, or it was deleted, reprocessed or released); it should stop.
pub async fn renew(db: &DatabaseConnection, lease: &Lease, duration: Duration) -> Result<bool> {
    let len = chrono_duration("lease", duration)?;
    update_held_quiet(
        db,
        lease,
        vec![(Column::LeaseExpiresAt, Expr::value(now() + len))],
    )
    .await
}

/// The container is open: `embedding`, what decoding learnt, progress `0/windows_total`.
pub async fn start_embedding(
    db: &DatabaseConnection,
    lease: &Lease,
    info: &MediaInfo,
    windows_total: i32,
) -> Result<Option<Model>> {
    update_held(
        db,
        lease,
        vec![
            (Column::Status, Expr::value(FileStatus::Embedding)),
            (Column::Codec, Expr::value(info.codec.clone())),
            (Column::DurationS, Expr::value(info.duration_s)),
            (Column::SampleRate, Expr::value(info.sample_rate)),
            (Column::Channels, Expr::value(info.channels)),
            (Column::WindowsDone, Expr::value(0i32)),
            (
                Column::WindowsTotal,
                Expr::value(std::cmp::max(windows_total, 0)),
            ),
        ],
    )
    .await
}

/// Records embedding progress; `false` if the lease no longer holds.
pub async fn save_progress(
    db: &DatabaseConnection,
    lease: &Lease,
    windows_done: i32,
    windows_total: i32,
) -> Result<bool> {
    check_progress(windows_done, windows_total)?;
    update_held_quiet(
        db,
        lease,
        vec![
            (Column::WindowsDone, Expr::value(windows_done)),
            (Column::WindowsTotal, Expr::value(windows_total)),
        ],
    )
    .await
}

/// What decoding found, replacing the header's claims: the decoded length, and the container
/// when the decoder saw another one than the upload's sniff.
pub async fn save_decoded(
    db: &DatabaseConnection,
    lease: &Lease,
    duration_s: f64,
    container: Option<&str>,
) -> Result<Option<Model>> {
    check_duration(duration_s)?;
    let mut sets = vec![(Column::DurationS, Expr::value(duration_s))];
    if let Some(c) = container {
        sets.push((Column::Container, Expr::value(c)));
    }
    update_held(db, lease, sets).await
}

/// The file's vectors are in the index: `indexed` with the model that made them, progress
/// `windows/windows`, lease and error cleared. `None`: the lease no longer holds (the file
/// was deleted, reprocessed or taken over since); the caller decides what its vectors become.
pub async fn commit_indexed(
    db: &DatabaseConnection,
    lease: &Lease,
    model_id: &str,
    windows: i32,
) -> Result<Option<Model>> {
    let mut sets = vec![
        (Column::Status, Expr::value(FileStatus::Indexed)),
        (Column::ModelId, Expr::value(model_id)),
        (Column::IndexedAt, Expr::value(now())),
        (Column::WindowsDone, Expr::value(windows)),
        (Column::WindowsTotal, Expr::value(windows)),
        (Column::ErrorCode, null_string()),
        (Column::ErrorMessage, null_string()),
    ];
    sets.extend(no_lease());
    update_held(db, lease, sets).await
}

/// The file cannot be indexed (the file's fault): `failed` with a stable `code` and a
/// message for people. `None` if the lease no longer holds.
pub async fn fail_attempt(
    db: &DatabaseConnection,
    lease: &Lease,
    code: &str,
    message: &str,
) -> Result<Option<Model>> {
    let mut sets = vec![
        (Column::Status, Expr::value(FileStatus::Failed)),
        (Column::ErrorCode, Expr::value(code)),
        (Column::ErrorMessage, Expr::value(message)),
    ];
    sets.extend(no_lease());
    update_held(db, lease, sets).await
}

/// The attempt failed for a passing reason (a connection, a full queue, a device out of
/// memory): back to `queued`, not claimable before now + `backoff`, with the reason kept in
/// `error_code`/`error_message` for people to see. The attempt stays counted, so
/// `max_attempts` bounds these too. `None` if the lease no longer holds.
pub async fn retry_later(
    db: &DatabaseConnection,
    lease: &Lease,
    code: &str,
    message: &str,
    backoff: Duration,
) -> Result<Option<Model>> {
    let backoff = chrono_duration("back-off", backoff)?;
    let mut sets = vec![
        (Column::Status, Expr::value(FileStatus::Queued)),
        (Column::ErrorCode, Expr::value(code)),
        (Column::ErrorMessage, Expr::value(message)),
        (Column::RetryAt, Expr::value(now() + backoff)),
        (Column::WindowsDone, Expr::value(0i32)),
    ];
    sets.extend(no_lease());
    update_held(db, lease, sets).await
}

/// Gives the file back unfinished because the worker was stopped on purpose (shutdown, a
/// cancelled file): `queued`, lease and progress cleared, and the attempt given back (it was
/// not the file's). `None` if the lease no longer holds.
pub async fn release(db: &impl ConnectionTrait, lease: &Lease) -> Result<Option<Model>> {
    let mut sets = vec![
        (Column::Status, Expr::value(FileStatus::Queued)),
        (Column::WindowsDone, Expr::value(0i32)),
        (
            Column::Attempts,
            Expr::cust("CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"),
        ),
    ];
    sets.extend(no_lease());
    update_held(db, lease, sets).await
}

/// At start, for a process whose owner id is stable across restarts: every file its killed
/// predecessor still held goes back to `queued` at once instead of waiting for the lease to
/// run out. The attempts stay counted (the predecessor died on them), so a file that kills
/// the process every time still ends `TOO_MANY_ATTEMPTS`. Returns how many were requeued.
pub async fn requeue_owner(db: &DatabaseConnection, owner: &str) -> Result<u64> {
    let mut update = AudioFile::update_many()
        .col_expr(Column::Status, Expr::value(FileStatus::Queued))
        .col_expr(Column::WindowsDone, Expr::value(0i32))
        .col_expr(Column::UpdatedAt, Expr::value(now()))
        .filter(Column::LeaseOwner.eq(owner))
        .filter(Column::Status.is_in(IN_PROGRESS));
    for (col, value) in no_lease() {
        update = update.col_expr(col, value);
    }
    Ok(update.exec(db).await?.rows_affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_messages_say_why_and_what_to_do() {
        let crash = exhausted_message(3, None);
        assert!(
            crash.contains("3 attempts") && crash.contains("Reprocess"),
            "{crash}"
        );
        let last = exhausted_message(4, Some("database: connection refused"));
        assert!(
            last.contains("4 attempts") && last.contains("connection refused"),
            "{last}"
        );
    }

    #[test]
    fn durations_are_bounded() {
        assert!(chrono_duration("lease", Duration::from_secs(60)).is_ok());
        assert!(chrono_duration("lease", Duration::from_secs(400 * 86_400)).is_err());
        assert!(check_max_attempts(0).is_err());
        assert!(check_max_attempts(1).is_ok());
    }
}
