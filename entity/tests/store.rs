//! The store on real databases: every test runs on a SQLite file, SQLite in
//! memory and PostgreSQL (see `common`).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use entity::audio_file::{self, error_code, FileStatus};
use entity::migration::{Migrator, MigratorTrait, SchemaManager};
use entity::search_log::{self, SearchKind};
use entity::store::{
    self, work, Cursor, ListQuery, NewAudioFile, NewSearch, SortOrder, StoreError,
};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

const HOUR: Duration = Duration::from_secs(3600);

fn hash(n: u64) -> String {
    format!("{n:064x}")
}

fn new_file(n: u64) -> NewAudioFile {
    NewAudioFile {
        original_name: format!("clip {n}.wav"),
        stored_path: format!("blobs/{}", hash(n)),
        content_hash: hash(n),
        size_bytes: 1000 + n as i64,
        container: "wav".into(),
    }
}

async fn insert(db: &DatabaseConnection, n: u64) -> audio_file::Model {
    let (row, created) = store::insert_or_get_by_hash(db, new_file(n)).await.unwrap();
    assert!(created, "file {n} was new");
    row
}

/// Sets one column of one file directly (test set-up only).
async fn force(db: &DatabaseConnection, id: Uuid, col: audio_file::Column, value: Expr) {
    let res = audio_file::Entity::update_many()
        .col_expr(col, value)
        .filter(audio_file::Column::Id.eq(id))
        .exec(db)
        .await
        .unwrap();
    assert_eq!(res.rows_affected, 1);
}

async fn expire_lease(db: &DatabaseConnection, id: Uuid) {
    let past = store::now() - chrono::Duration::seconds(1);
    force(
        db,
        id,
        audio_file::Column::LeaseExpiresAt,
        Expr::value(Some(past)),
    )
    .await;
}

async fn reload(db: &DatabaseConnection, id: Uuid) -> audio_file::Model {
    store::get(db, id).await.unwrap().expect("row exists")
}

const TABLES: [&str; 7] = [
    "audio_file",
    "search_log",
    "api_key",
    "server_setting",
    "library_source",
    "file_location",
    "model_index",
];
const INDEXES: [(&str, &str); 7] = [
    ("library_source", "idx_library_source_path"),
    ("file_location", "idx_file_location_file"),
    ("audio_file", "idx_audio_file_content_hash"),
    ("audio_file", "idx_audio_file_status"),
    ("audio_file", "idx_audio_file_created_at"),
    ("search_log", "idx_search_log_created_at"),
    ("search_log", "idx_search_log_kind"),
];

async fn assert_schema(db: &DatabaseConnection, present: bool) {
    let m = SchemaManager::new(db);
    for table in TABLES {
        assert_eq!(m.has_table(table).await.unwrap(), present, "table {table}");
    }
    if present {
        for (table, index) in INDEXES {
            assert!(m.has_index(table, index).await.unwrap(), "index {index}");
        }
    }
}

backend_tests! {
    async fn migrations_up_down_up(t: TestDb) {
        let db = &t.db;
        // connect_and_migrate ran `up`.
        assert_schema(db, true).await;
        assert!(Migrator::get_pending_migrations(db).await.unwrap().is_empty());
        insert(db, 1).await;

        Migrator::down(db, None).await.unwrap();
        assert_schema(db, false).await;
        assert_eq!(Migrator::get_pending_migrations(db).await.unwrap().len(), 6);

        Migrator::up(db, None).await.unwrap();
        assert_schema(db, true).await;
        // Down dropped the data; the fresh tables work.
        assert_eq!(store::list(db, &ListQuery::default()).await.unwrap().total, 0);
        insert(db, 1).await;

        // One step at a time, and `up` on an up-to-date schema is a no-op.
        let m = SchemaManager::new(db);
        assert!(m.has_table("model_index").await.unwrap());
        Migrator::down(db, Some(1)).await.unwrap();
        assert!(!m.has_table("model_index").await.unwrap());
        assert!(m.has_table("file_location").await.unwrap());
        Migrator::down(db, Some(1)).await.unwrap();
        assert!(!m.has_table("file_location").await.unwrap());
        assert!(!m.has_table("library_source").await.unwrap());
        assert!(m.has_column("audio_file", "lease_token").await.unwrap());
        Migrator::down(db, Some(1)).await.unwrap();
        assert!(!m.has_column("audio_file", "lease_token").await.unwrap());
        assert!(!m.has_column("audio_file", "retry_at").await.unwrap());
        assert!(m.has_column("audio_file", "lease_owner").await.unwrap());
        Migrator::down(db, Some(1)).await.unwrap();
        assert!(m.has_table("search_log").await.unwrap());
        assert!(!m.has_table("api_key").await.unwrap());
        assert!(!m.has_table("server_setting").await.unwrap());
        Migrator::down(db, Some(1)).await.unwrap();
        assert!(m.has_table("audio_file").await.unwrap());
        assert!(!m.has_table("search_log").await.unwrap());
        Migrator::up(db, None).await.unwrap();
        Migrator::up(db, None).await.unwrap();
        assert_schema(db, true).await;
        // A second connect_and_migrate on the same database changes nothing.
        if t.backend != common::Backend::SqliteMemory {
            let again = store::connect_and_migrate(&t.url).await.unwrap();
            assert_eq!(store::list(&again, &ListQuery::default()).await.unwrap().total, 1);
        }
    }

    async fn api_keys_are_hashed_found_and_revoked(t: TestDb) {
        use entity::api_key::Scope;
        let db = &t.db;
        assert_eq!(store::count_live_keys(db).await.unwrap(), 0);
        let (row, secret) = store::create_key(db, "laptop", Scope::Write).await.unwrap();
        assert!(secret.starts_with(store::KEY_PREFIX) && secret.len() == 70, "{secret}");
        assert!(secret.starts_with(&row.prefix));
        // Only the hash is stored.
        assert_eq!(row.secret_hash, store::hash_secret(&secret));
        assert!(!row.secret_hash.contains(&secret[6..]));
        let found = store::find_key(db, &secret).await.unwrap().unwrap();
        assert_eq!((found.id, found.scope), (row.id, Scope::Write));
        assert!(store::find_key(db, &format!("{secret}x")).await.unwrap().is_none());
        let (other, _) = store::create_key(db, "ci", Scope::Read).await.unwrap();
        assert_eq!(store::list_keys(db).await.unwrap().len(), 2);
        assert_eq!(store::count_live_keys(db).await.unwrap(), 2);
        assert!(store::create_key(db, "  ", Scope::Read).await.is_err());
        // By prefix (or a longer piece of the key), by id, by the whole key.
        let revoked = store::revoke_key(db, &secret[..18]).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(store::find_key(db, &secret).await.unwrap().is_none());
        assert_eq!(store::count_live_keys(db).await.unwrap(), 1);
        store::revoke_key(db, &other.id.to_string()).await.unwrap();
        assert!(store::revoke_key(db, "traum_").await.is_err(), "too short");
        assert!(store::revoke_key(db, "traum_zzzzzzzz").await.is_err(), "no such key");
        store::touch_key(db, row.id).await.unwrap();
        // A shared setting: the first value stays.
        let a = store::setting_or_insert(db, "k", || "one".into()).await.unwrap();
        let b = store::setting_or_insert(db, "k", || "two".into()).await.unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("one", "one"));
    }

    async fn dedup_by_hash(t: TestDb) {
        let db = &t.db;
        let (first, created) = store::insert_or_get_by_hash(db, new_file(1)).await.unwrap();
        assert!(created);
        assert_eq!(first.id, store::id_for_hash(&hash(1)));
        assert_eq!(first.status, FileStatus::Queued);
        assert_eq!((first.attempts, first.windows_done, first.windows_total), (0, 0, 0));
        assert_eq!(first.original_name, "clip 1.wav");
        assert_eq!(first.size_bytes, 1001);
        assert!(first.codec.is_none() && first.duration_s.is_none());
        assert!(first.lease_owner.is_none() && first.indexed_at.is_none());
        assert_eq!(first.created_at, first.updated_at);

        // Same content under another name, hash in upper case: the first row.
        let again = NewAudioFile {
            original_name: "copy.wav".into(),
            stored_path: "blobs/elsewhere".into(),
            content_hash: hash(1).to_uppercase(),
            ..new_file(1)
        };
        let (second, created) = store::insert_or_get_by_hash(db, again).await.unwrap();
        assert!(!created);
        assert_eq!(second, first);

        // Racing uploads of one new file, over two connection pools.
        let other = t.connect_again().await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let db = if i % 2 == 0 { t.db.clone() } else { other.clone() };
            tasks.push(tokio::spawn(async move {
                store::insert_or_get_by_hash(&db, new_file(2)).await.unwrap()
            }));
        }
        let mut created = 0;
        let mut ids = HashSet::new();
        for task in tasks {
            let (row, c) = task.await.unwrap();
            created += c as usize;
            ids.insert(row.id);
        }
        assert_eq!(created, 1, "exactly one racer creates the row");
        assert_eq!(ids.len(), 1);
        assert_eq!(store::list(db, &ListQuery::default()).await.unwrap().total, 2);

        // Bad input is refused before it reaches the database.
        for bad in [
            NewAudioFile { content_hash: "abc".into(), ..new_file(3) },
            NewAudioFile { content_hash: "g".repeat(64), ..new_file(3) },
            NewAudioFile { size_bytes: -1, ..new_file(3) },
        ] {
            assert!(matches!(
                store::insert_or_get_by_hash(db, bad).await,
                Err(StoreError::InvalidArgument(_))
            ));
        }
    }

    async fn concurrent_claimers_never_share(t: TestDb) {
        const FILES: u64 = 24;
        for n in 0..FILES {
            insert(&t.db, n).await;
        }
        let other = t.connect_again().await;
        let mut workers = Vec::new();
        for w in 0..4 {
            let db = if w % 2 == 0 { t.db.clone() } else { other.clone() };
            workers.push(tokio::spawn(async move {
                let owner = format!("worker-{w}");
                let mut got = Vec::new();
                while let Some(c) = work::claim_next(&db, &owner, HOUR, 3).await.unwrap() {
                    assert_eq!(c.row.lease_owner.as_deref(), Some(owner.as_str()));
                    assert_eq!(c.row.lease_token, Some(c.lease.token));
                    got.push((c.row.id, owner.clone(), c.lease.token));
                }
                got
            }));
        }
        let mut claims = Vec::new();
        for w in workers {
            claims.extend(w.await.unwrap());
        }
        let ids: HashSet<Uuid> = claims.iter().map(|(id, _, _)| *id).collect();
        let tokens: HashSet<Uuid> = claims.iter().map(|(_, _, token)| *token).collect();
        assert_eq!(claims.len() as u64, FILES, "every file claimed once: {claims:?}");
        assert_eq!(ids.len() as u64, FILES, "no file claimed twice");
        assert_eq!(tokens.len() as u64, FILES, "every claim has its own token");
        for (id, owner, token) in &claims {
            let row = reload(&t.db, *id).await;
            assert_eq!(row.status, FileStatus::Decoding);
            assert_eq!(row.attempts, 1);
            assert_eq!(row.lease_owner.as_ref(), Some(owner));
            assert_eq!(row.lease_token, Some(*token));
            assert!(row.lease_expires_at.unwrap() > store::now());
        }
        assert!(work::claim_next(&t.db, "late", HOUR, 3).await.unwrap().is_none());
    }

    async fn claims_go_oldest_first_and_skip_finished(t: TestDb) {
        let db = &t.db;
        let a = insert(db, 1).await;
        let b = insert(db, 2).await;
        let c = insert(db, 3).await;
        let base = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        for (row, secs) in [(&a, 30), (&b, 10), (&c, 20)] {
            let at = base + chrono::Duration::seconds(secs);
            force(db, row.id, audio_file::Column::CreatedAt, Expr::value(at)).await;
        }
        store::mark_indexed(db, c.id, "m").await.unwrap();
        let first = work::claim_next(db, "w", HOUR, 3).await.unwrap().unwrap();
        assert_eq!(first.row.id, b.id, "oldest first");
        let second = work::claim_next(db, "w", HOUR, 3).await.unwrap().unwrap();
        assert_eq!(second.row.id, a.id);
        // c is indexed; a failed file is not claimable either.
        store::fail(db, a.id, error_code::CORRUPT, "bad frame").await.unwrap();
        assert!(work::claim_next(db, "w", HOUR, 3).await.unwrap().is_none());
        // A lease longer than a year, or no attempts at all, is refused.
        assert!(matches!(
            work::claim_next(db, "w", Duration::from_secs(400 * 86400), 3).await,
            Err(StoreError::InvalidArgument(_))
        ));
        assert!(matches!(
            work::claim_next(db, "w", HOUR, 0).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }

    async fn a_lost_lease_writes_nothing(t: TestDb) {
        let db = &t.db;
        let f = insert(db, 1).await;
        let a = work::claim_next(db, "a", HOUR, 5).await.unwrap().unwrap();
        assert_eq!((a.row.id, a.row.attempts, a.row.status), (f.id, 1, FileStatus::Decoding));
        assert!(work::claim_next(db, "b", HOUR, 5).await.unwrap().is_none(), "leased");
        assert!(work::renew(db, &a.lease, HOUR).await.unwrap());
        let info = store::MediaInfo { codec: Some("pcm_s16le".into()), ..Default::default() };
        let row = work::start_embedding(db, &a.lease, &info, 9).await.unwrap().unwrap();
        assert_eq!((row.status, row.windows_total), (FileStatus::Embedding, 9));
        assert!(work::save_progress(db, &a.lease, 3, 9).await.unwrap());

        // a hangs; its lease runs out and b takes the file over.
        expire_lease(db, f.id).await;
        let b = work::claim_next(db, "b", HOUR, 5).await.unwrap().unwrap();
        assert_eq!(b.row.id, f.id);
        assert_ne!(b.lease.token, a.lease.token);
        assert_eq!(b.row.attempts, 2);
        assert_eq!(b.row.status, FileStatus::Decoding);
        assert_eq!(b.row.windows_done, 0, "progress restarts");

        // Every write a makes now is refused and changes nothing.
        assert!(!work::renew(db, &a.lease, HOUR).await.unwrap());
        assert!(!work::save_progress(db, &a.lease, 9, 9).await.unwrap());
        assert!(work::start_embedding(db, &a.lease, &info, 9).await.unwrap().is_none());
        assert!(work::save_decoded(db, &a.lease, 90.0, Some("flac")).await.unwrap().is_none());
        assert!(work::commit_indexed(db, &a.lease, "m", 9).await.unwrap().is_none());
        assert!(work::fail_attempt(db, &a.lease, error_code::CORRUPT, "x").await.unwrap().is_none());
        assert!(work::retry_later(db, &a.lease, "INTERNAL", "x", HOUR).await.unwrap().is_none());
        assert!(work::release(db, &a.lease).await.unwrap().is_none());
        let row = reload(db, f.id).await;
        assert_eq!(row.status, FileStatus::Decoding);
        assert_eq!(row.lease_owner.as_deref(), Some("b"));
        assert_eq!(row.lease_token, Some(b.lease.token));
        assert_eq!((row.windows_done, row.container.as_str()), (0, "wav"));

        // b's writes hold.
        let row = work::save_decoded(db, &b.lease, 12.5, Some("flac")).await.unwrap().unwrap();
        assert_eq!((row.duration_s, row.container.as_str()), (Some(12.5), "flac"));
        let row = work::commit_indexed(db, &b.lease, "m", 2).await.unwrap().unwrap();
        assert_eq!(row.status, FileStatus::Indexed);
        assert_eq!((row.windows_done, row.windows_total), (2, 2));
        assert!(row.lease_token.is_none() && row.lease_owner.is_none());
        assert!(work::claim_next(db, "a", HOUR, 5).await.unwrap().is_none());

        // A reprocess (by id, from anyone) ends a holder's lease too.
        store::set_status(db, f.id, FileStatus::Queued).await.unwrap();
        let c = work::claim_next(db, "c", HOUR, 5).await.unwrap().unwrap();
        assert_eq!(c.row.attempts, 1, "a reprocess starts the attempts afresh");
        store::set_status(db, f.id, FileStatus::Queued).await.unwrap();
        assert!(work::commit_indexed(db, &c.lease, "m", 2).await.unwrap().is_none());
        // And a delete.
        let d = work::claim_next(db, "d", HOUR, 5).await.unwrap().unwrap();
        store::delete(db, f.id).await.unwrap();
        assert!(work::commit_indexed(db, &d.lease, "m", 2).await.unwrap().is_none());
        assert!(!work::renew(db, &d.lease, HOUR).await.unwrap());
    }

    async fn release_gives_the_attempt_back_and_a_death_does_not(t: TestDb) {
        let db = &t.db;
        let f = insert(db, 1).await;
        // Stopped on purpose (shutdown) three times: not the file's fault, never exhausted.
        for _ in 0..3 {
            let c = work::claim_next(db, "a", HOUR, 2).await.unwrap().unwrap();
            assert_eq!(c.row.attempts, 1);
            let row = work::release(db, &c.lease).await.unwrap().unwrap();
            assert_eq!((row.status, row.attempts), (FileStatus::Queued, 0));
            assert!(row.lease_token.is_none() && row.lease_expires_at.is_none());
        }
        // The worker dies twice (its lease runs out): both attempts count.
        let c = work::claim_next(db, "a", HOUR, 2).await.unwrap().unwrap();
        expire_lease(db, f.id).await;
        assert!(work::fail_exhausted(db, 2).await.unwrap().is_empty(), "one attempt left");
        let c2 = work::claim_next(db, "b", HOUR, 2).await.unwrap().unwrap();
        assert_eq!(c2.row.attempts, 2);
        assert_ne!(c.lease.token, c2.lease.token);
        expire_lease(db, f.id).await;
        // No attempts left: nobody claims it, and it is failed with a reason.
        assert!(work::claim_next(db, "c", HOUR, 2).await.unwrap().is_none());
        let failed = work::fail_exhausted(db, 2).await.unwrap();
        assert_eq!(failed.len(), 1);
        let row = &failed[0];
        assert_eq!((row.id, row.status), (f.id, FileStatus::Failed));
        assert_eq!(row.error_code.as_deref(), Some(error_code::TOO_MANY_ATTEMPTS));
        let message = row.error_message.as_deref().unwrap();
        assert!(message.contains("2 attempts") && message.contains("Reprocess"), "{message}");
        assert!(row.lease_token.is_none());
        assert!(work::fail_exhausted(db, 2).await.unwrap().is_empty(), "idempotent");

        // A live lease is never failed, however many attempts it used.
        let g = insert(db, 2).await;
        force(db, g.id, audio_file::Column::Attempts, Expr::value(7)).await;
        assert!(work::claim_next(db, "a", HOUR, 8).await.unwrap().is_some());
        assert!(work::fail_exhausted(db, 1).await.unwrap().is_empty());
    }

    async fn passing_failures_back_off_and_are_bounded(t: TestDb) {
        let db = &t.db;
        let f = insert(db, 1).await;
        let c = work::claim_next(db, "a", HOUR, 2).await.unwrap().unwrap();
        let row = work::retry_later(db, &c.lease, "INDEX_FAILED", "no Qdrant node answered", HOUR)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.status, FileStatus::Queued);
        assert_eq!(row.attempts, 1, "a passing failure still used its attempt");
        assert!(row.retry_at.unwrap() > store::now() + chrono::Duration::minutes(59));
        assert_eq!(row.error_message.as_deref(), Some("no Qdrant node answered"));
        // Not before its time.
        assert!(work::claim_next(db, "b", HOUR, 2).await.unwrap().is_none());
        let past = store::now() - chrono::Duration::seconds(1);
        force(db, f.id, audio_file::Column::RetryAt, Expr::value(Some(past))).await;
        let c = work::claim_next(db, "b", HOUR, 2).await.unwrap().unwrap();
        assert_eq!(c.row.attempts, 2);
        assert!(c.row.retry_at.is_none() && c.row.error_message.is_none());
        // It fails again; the attempts are used up, so it ends failed with the reason.
        work::retry_later(db, &c.lease, "INDEX_FAILED", "no Qdrant node answered", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        assert!(work::claim_next(db, "b", HOUR, 2).await.unwrap().is_none());
        let failed = work::fail_exhausted(db, 2).await.unwrap();
        assert_eq!(failed.len(), 1);
        let message = failed[0].error_message.as_deref().unwrap();
        assert!(message.contains("no Qdrant node answered"), "{message}");
    }

    async fn requeue_owner_keeps_the_attempts(t: TestDb) {
        let db = &t.db;
        let mut ids = Vec::new();
        for n in 0..3 {
            ids.push(insert(db, n).await.id);
        }
        // A previous run of this server ("old", a stable owner id) held two files when it was
        // killed; someone else holds the third.
        work::claim_next(db, "old", HOUR, 3).await.unwrap().unwrap();
        work::claim_next(db, "old", HOUR, 3).await.unwrap().unwrap();
        work::claim_next(db, "other", HOUR, 3).await.unwrap().unwrap();
        assert_eq!(work::requeue_owner(db, "nobody").await.unwrap(), 0);
        assert_eq!(work::requeue_owner(db, "old").await.unwrap(), 2);
        let counts = store::count_by_status(db).await.unwrap();
        assert_eq!((counts.queued, counts.decoding), (2, 1));
        for id in &ids {
            let row = reload(db, *id).await;
            assert_eq!(row.attempts, 1, "the killed run's attempt stays counted");
            if row.status == FileStatus::Queued {
                assert!(row.lease_token.is_none() && row.lease_owner.is_none());
            } else {
                assert_eq!(row.lease_owner.as_deref(), Some("other"));
            }
        }
    }

    async fn composition_sums_per_format(t: TestDb) {
        let db = &t.db;
        assert!(store::composition_by_format(db).await.unwrap().is_empty());
        // Three wav (sizes 1000..1002), two flac (1003, 1004); durations on
        // some only: undecoded files count zero seconds.
        for n in 0..5u64 {
            let row = insert(db, n).await;
            if n >= 3 {
                force(db, row.id, audio_file::Column::Container, Expr::value("flac")).await;
            }
            if n % 2 == 0 {
                let seconds = 1.5 * (n + 1) as f64;
                force(db, row.id, audio_file::Column::DurationS, Expr::value(seconds)).await;
            }
        }
        let shares = store::composition_by_format(db).await.unwrap();
        assert_eq!(
            shares,
            vec![
                store::FormatShare {
                    container: "wav".into(),
                    files: 3,
                    bytes: 3003.0,
                    duration_s: 1.5 + 4.5,
                },
                store::FormatShare {
                    container: "flac".into(),
                    files: 2,
                    bytes: 2007.0,
                    duration_s: 7.5,
                },
            ]
        );
    }

    async fn pagination_is_stable_and_complete(t: TestDb) {
        let db = &t.db;
        const N: u64 = 25;
        // Creation times with ties, whole seconds and fractions, out of
        // insertion order.
        let base = Utc.with_ymd_and_hms(2026, 11, 24, 12, 0, 0).unwrap();
        let offsets_us = [0i64, 500_000, 1_000_000, 1_000_000, 1_000_001, 59_999_999, 7];
        let mut expected = Vec::new();
        for n in 0..N {
            let row = insert(db, n).await;
            let at = base
                + chrono::Duration::microseconds(offsets_us[(n as usize * 5) % offsets_us.len()]);
            force(db, row.id, audio_file::Column::CreatedAt, Expr::value(at)).await;
            expected.push((at, row.id));
        }
        expected.sort();
        let asc: Vec<Uuid> = expected.iter().map(|(_, id)| *id).collect();
        let desc: Vec<Uuid> = asc.iter().rev().copied().collect();

        for (order, want) in [(SortOrder::Asc, &asc), (SortOrder::Desc, &desc)] {
            for limit in [1u64, 7, 25, 100] {
                let mut seen = Vec::new();
                let mut after: Option<String> = None;
                let mut pages = 0;
                loop {
                    let query = ListQuery {
                        status: None,
                        source: None,
                        folder: None,
                        order,
                        // The client gets the cursor as a string and sends it back.
                        after: after.as_deref().map(|s| Cursor::decode(s).unwrap()),
                        limit,
                    };
                    let page = store::list(db, &query).await.unwrap();
                    pages += 1;
                    assert_eq!(page.total, N);
                    assert!(page.items.len() as u64 <= limit);
                    seen.extend(page.items.iter().map(|r| r.id));
                    match page.next {
                        Some(c) => after = Some(c.encode()),
                        None => break,
                    }
                }
                assert_eq!(&seen, want, "{order:?} by {limit}");
                assert_eq!(pages, N.div_ceil(limit).max(1), "{order:?} by {limit}");
            }
        }

        // Rows added while paging (newer than all) show up at the end, once.
        let first = store::list(db, &ListQuery { order: SortOrder::Asc, limit: 10, ..Default::default() })
            .await
            .unwrap();
        let late = insert(db, 999).await;
        let rest = store::list(
            db,
            &ListQuery { order: SortOrder::Asc, after: first.next, limit: 100, ..Default::default() },
        )
        .await
        .unwrap();
        assert_eq!(rest.total, N + 1);
        assert_eq!(rest.items.len() as u64, N - 10 + 1);
        assert_eq!(rest.items.last().unwrap().id, late.id);

        // limit 0: just the count; a limit over the cap is capped.
        let count_only = store::list(db, &ListQuery { limit: 0, ..Default::default() }).await.unwrap();
        assert!(count_only.items.is_empty() && count_only.next.is_none());
        assert_eq!(count_only.total, N + 1);
        let capped = store::list(db, &ListQuery { limit: u64::MAX, ..Default::default() }).await.unwrap();
        assert_eq!(capped.items.len() as u64, N + 1);
        assert!(matches!(Cursor::decode("nonsense"), Err(StoreError::InvalidCursor(_))));
    }

    async fn status_filter(t: TestDb) {
        let db = &t.db;
        let wanted = [
            FileStatus::Queued,
            FileStatus::Indexed,
            FileStatus::Failed,
            FileStatus::Indexed,
            FileStatus::Queued,
            FileStatus::Embedding,
            FileStatus::Indexed,
            FileStatus::Queued,
            FileStatus::Failed,
            FileStatus::Queued,
        ];
        let mut indexed = HashSet::new();
        for (n, status) in wanted.iter().enumerate() {
            let row = insert(db, n as u64).await;
            match status {
                FileStatus::Indexed => {
                    store::mark_indexed(db, row.id, "m").await.unwrap();
                    indexed.insert(row.id);
                }
                FileStatus::Failed => {
                    store::fail(db, row.id, error_code::EMPTY, "no samples").await.unwrap();
                }
                FileStatus::Embedding => {
                    store::set_status(db, row.id, FileStatus::Embedding).await.unwrap();
                }
                _ => {}
            }
        }
        let mut seen = HashSet::new();
        let mut query = ListQuery { status: Some(FileStatus::Indexed), limit: 2, ..Default::default() };
        loop {
            let page = store::list(db, &query).await.unwrap();
            assert_eq!(page.total, 3);
            for row in &page.items {
                assert_eq!(row.status, FileStatus::Indexed);
                assert!(seen.insert(row.id));
            }
            match page.next {
                Some(c) => query.after = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, indexed);
        for status in FileStatus::ALL {
            let n = wanted.iter().filter(|s| **s == status).count() as u64;
            let page = store::list(db, &ListQuery { status: Some(status), ..Default::default() })
                .await
                .unwrap();
            assert_eq!((page.total, page.items.len() as u64), (n, n), "{status}");
        }
        let counts = store::count_by_status(db).await.unwrap();
        assert_eq!(
            (counts.queued, counts.decoding, counts.embedding, counts.indexed, counts.failed),
            (4, 0, 1, 3, 2)
        );
        assert_eq!(counts.total(), 10);
    }

    async fn delete_returns_the_row(t: TestDb) {
        let db = &t.db;
        let a = insert(db, 1).await;
        let b = insert(db, 2).await;
        let deleted = store::delete(db, a.id).await.unwrap();
        assert_eq!(deleted, Some(a.clone()));
        assert!(store::get(db, a.id).await.unwrap().is_none());
        assert!(store::get_by_hash(db, &a.content_hash).await.unwrap().is_none());
        assert!(store::delete(db, a.id).await.unwrap().is_none());
        assert!(store::delete(db, Uuid::nil()).await.unwrap().is_none());
        let page = store::list(db, &ListQuery::default()).await.unwrap();
        assert_eq!(page.total, 1);
        assert_eq!(page.items[0].id, b.id);
        // The same bytes uploaded again make a new row with the same id.
        let (again, created) = store::insert_or_get_by_hash(db, new_file(1)).await.unwrap();
        assert!(created);
        assert_eq!(again.id, a.id);
    }

    async fn state_updates(t: TestDb) {
        let db = &t.db;
        let f = insert(db, 1).await;
        let info = store::MediaInfo {
            codec: Some("flac".into()),
            duration_s: Some(213.375),
            sample_rate: Some(44100),
            channels: Some(2),
        };
        let row = store::set_media_info(db, f.id, &info).await.unwrap();
        assert_eq!(row.codec.as_deref(), Some("flac"));
        assert_eq!(row.duration_s, Some(213.375));
        assert_eq!((row.sample_rate, row.channels), (Some(44100), Some(2)));
        assert!(row.updated_at >= f.updated_at);

        store::set_status(db, f.id, FileStatus::Embedding).await.unwrap();
        store::set_progress(db, f.id, 5, 22).await.unwrap();
        let row = reload(db, f.id).await;
        assert_eq!((row.status, row.windows_done, row.windows_total), (FileStatus::Embedding, 5, 22));
        assert!(matches!(
            store::set_progress(db, f.id, 23, 22).await,
            Err(StoreError::InvalidArgument(_))
        ));

        let row = store::mark_indexed(db, f.id, "laion/larger_clap_music_and_speech").await.unwrap();
        assert_eq!(row.status, FileStatus::Indexed);
        assert_eq!(row.model_id.as_deref(), Some("laion/larger_clap_music_and_speech"));
        assert_eq!(row.windows_done, 22);
        assert!(row.indexed_at.is_some());

        let g = insert(db, 2).await;
        let row = store::fail(db, g.id, error_code::UNSUPPORTED_FORMAT, "not audio: PNG image")
            .await
            .unwrap();
        assert_eq!(row.status, FileStatus::Failed);
        assert_eq!(row.error_code.as_deref(), Some("UNSUPPORTED_FORMAT"));
        assert_eq!(row.error_message.as_deref(), Some("not audio: PNG image"));
        // A manual retry clears the error.
        let row = store::set_status(db, g.id, FileStatus::Queued).await.unwrap();
        assert!(row.error_code.is_none() && row.error_message.is_none());

        let missing = Uuid::nil();
        assert!(matches!(
            store::set_status(db, missing, FileStatus::Failed).await,
            Err(StoreError::NotFound(id)) if id == missing
        ));
        assert!(matches!(store::fail(db, missing, "X", "y").await, Err(StoreError::NotFound(_))));
        assert!(matches!(store::mark_indexed(db, missing, "m").await, Err(StoreError::NotFound(_))));
        assert!(matches!(store::set_progress(db, missing, 0, 1).await, Err(StoreError::NotFound(_))));
        assert!(matches!(
            store::set_media_info(db, missing, &info).await,
            Err(StoreError::NotFound(_))
        ));
    }

    async fn search_log_stats(t: TestDb) {
        let db = &t.db;
        let empty = store::search_stats(db, None).await.unwrap();
        assert_eq!(empty, store::SearchStats::default());
        assert!(empty.mean_latency_ms.is_none() && empty.p95_latency_ms.is_none());

        // Latencies 1..=20 ms, logged in shuffled order, kinds in turn.
        for i in [7, 1, 20, 13, 2, 19, 3, 18, 4, 17, 5, 16, 6, 15, 8, 14, 9, 12, 10, 11] {
            let kind = SearchKind::ALL[i % 3];
            let row = store::log_search(
                db,
                NewSearch {
                    kind,
                    query_text: (kind == SearchKind::Text).then(|| format!("query {i}")),
                    result_count: i as i32,
                    latency_ms: i as f64,
                },
            )
            .await
            .unwrap();
            assert_eq!((row.kind, row.latency_ms), (kind, i as f64));
        }
        let stats = store::search_stats(db, None).await.unwrap();
        assert_eq!(stats.total, 20);
        // i % 3 == 0: 3,6,…,18; == 1: 1,4,…,19; == 2: 2,5,…,20.
        assert_eq!((stats.text, stats.audio, stats.similar), (6, 7, 7));
        assert_eq!(stats.count(SearchKind::Audio), 7);
        assert!((stats.mean_latency_ms.unwrap() - 10.5).abs() < 1e-9);
        assert_eq!(stats.p95_latency_ms, Some(19.0), "nearest rank: 19th of 20");
        assert_eq!(store::count_searches(db).await.unwrap(), 20);

        let future = store::now() + chrono::Duration::hours(1);
        assert_eq!(store::search_stats(db, Some(future)).await.unwrap().total, 0);
        let past = store::now() - chrono::Duration::hours(1);
        assert_eq!(store::search_stats(db, Some(past)).await.unwrap(), stats);

        let recent = store::recent_searches(db, 3).await.unwrap();
        let latencies: Vec<f64> = recent.iter().map(|r| r.latency_ms).collect();
        assert_eq!(latencies, [11.0, 10.0, 12.0], "newest first");

        assert!(matches!(
            store::log_search(
                db,
                NewSearch { kind: SearchKind::Text, query_text: None, result_count: 0, latency_ms: f64::NAN }
            )
            .await,
            Err(StoreError::InvalidArgument(_))
        ));
    }

    async fn enum_round_trip(t: TestDb) {
        let db = &t.db;
        for (n, status) in FileStatus::ALL.into_iter().enumerate() {
            let row = insert(db, n as u64).await;
            force(db, row.id, audio_file::Column::Status, Expr::value(status)).await;
            assert_eq!(reload(db, row.id).await.status, status);
            let stored: String = audio_file::Entity::find_by_id(row.id)
                .select_only()
                .column(audio_file::Column::Status)
                .into_tuple()
                .one(db)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored, status.as_str());
            assert_eq!(stored.parse::<FileStatus>().unwrap(), status);
            assert_eq!(status.to_string(), stored);
        }
        for kind in SearchKind::ALL {
            let row = store::log_search(
                db,
                NewSearch { kind, query_text: None, result_count: 0, latency_ms: 1.0 },
            )
            .await
            .unwrap();
            let back = search_log::Entity::find_by_id(row.id).one(db).await.unwrap().unwrap();
            assert_eq!(back.kind, kind);
            let stored: String = search_log::Entity::find_by_id(row.id)
                .select_only()
                .column(search_log::Column::Kind)
                .into_tuple()
                .one(db)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored, kind.as_str());
            assert_eq!(stored.parse::<SearchKind>().unwrap(), kind);
        }
        assert!("bogus".parse::<FileStatus>().is_err());
        assert!("bogus".parse::<SearchKind>().is_err());
    }
}

/// SQLite files get WAL, a busy timeout and foreign keys; the directory is made.
#[tokio::test]
async fn sqlite_file_settings() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("traum.db");
    let db = store::connect_and_migrate(&store::sqlite_url(&path))
        .await
        .unwrap();
    assert!(path.is_file());
    for (pragma, want) in [
        ("journal_mode", "wal"),
        ("foreign_keys", "1"),
        ("busy_timeout", "10000"),
    ] {
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("PRAGMA {pragma}"),
            ))
            .await
            .unwrap()
            .unwrap();
        let got = row
            .try_get_by_index::<String>(0)
            .or_else(|_| row.try_get_by_index::<i64>(0).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(got, want, "PRAGMA {pragma}");
    }
    db.close().await.unwrap();
    // Reopening migrates nothing and keeps the data.
    let db = store::connect_and_migrate(&store::sqlite_url(&path))
        .await
        .unwrap();
    assert_eq!(
        store::list(&db, &ListQuery::default()).await.unwrap().total,
        0
    );
}

/// A directory that cannot be created is a clear error.
#[tokio::test]
async fn sqlite_unwritable_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let url = store::sqlite_url(&file.join("sub").join("traum.db"));
    let err = store::connect_and_migrate(&url).await.unwrap_err();
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
}

backend_tests! {
    /// Folder sources and file locations: one source per folder, locations that move and
    /// go, files listed by source and folder (LIKE wildcards in names match only
    /// themselves), and the uploads of an older library adopted by the upload source.
    async fn sources_and_locations(t: TestDb) {
        use entity::library_source::{SourceKind, SourceState};
        use entity::store::sources;
        let db = &t.db;
        let legacy = insert(db, 1).await;
        assert_eq!(sources::adopt_unlocated_uploads(db, "/data").await.unwrap(), 1);
        assert_eq!(sources::adopt_unlocated_uploads(db, "/data").await.unwrap(), 0);
        let upload = sources::upload_source(db, "/data").await.unwrap();
        assert_eq!(upload.id, sources::UPLOAD_SOURCE_ID);
        assert_eq!(upload.kind, SourceKind::Upload);
        let locs = sources::locations_of_file(db, legacy.id).await.unwrap();
        assert_eq!(locs.len(), 1);
        assert_eq!(locs[0].path, legacy.stored_path);

        let (a, created) = sources::add_folder(db, "/music/a_b%").await.unwrap();
        assert!(created);
        assert_eq!(a.state, SourceState::Idle);
        let (again, created) = sources::add_folder(db, "/music/a_b%").await.unwrap();
        assert!(!created);
        assert_eq!(again.id, a.id);
        let (other, _) = sources::add_folder(db, "/music/aXbY").await.unwrap();
        assert!(sources::add_folder(db, "/data").await.is_err(), "the upload store is no folder");

        let f2 = insert(db, 2).await;
        let f3 = insert(db, 3).await;
        sources::put_location(db, a.id, "/music/a_b%/x.wav", f2.id, 10, 5).await.unwrap();
        sources::put_location(db, a.id, "/music/a_b%/sub/y.wav", f3.id, 11, 6).await.unwrap();
        sources::put_location(db, other.id, "/music/aXbY/z.wav", f3.id, 11, 6).await.unwrap();
        // The same path again replaces (a changed file).
        sources::put_location(db, a.id, "/music/a_b%/x.wav", f2.id, 12, 7).await.unwrap();
        let in_a = sources::locations_in_source(db, a.id).await.unwrap();
        assert_eq!(in_a.len(), 2);
        assert!(in_a.iter().any(|l| l.size_bytes == 12 && l.mtime_ns == 7));
        let under = sources::locations_under(db, a.id, "/music/a_b%/sub").await.unwrap();
        assert_eq!(under.len(), 1);
        assert_eq!(sources::count_locations(db, f3.id).await.unwrap(), 2);
        let counts = sources::files_per_source(db).await.unwrap();
        assert_eq!(counts[&a.id], 2);
        assert_eq!(counts[&other.id], 1);
        assert_eq!(counts[&upload.id], 1);

        let list = |source: Option<Uuid>, folder: Option<&str>| {
            let query = ListQuery {
                source,
                folder: folder.map(str::to_owned),
                ..ListQuery::default()
            };
            async move {
                let mut ids: Vec<Uuid> =
                    store::list(db, &query).await.unwrap().items.iter().map(|r| r.id).collect();
                ids.sort();
                ids
            }
        };
        let mut both = vec![f2.id, f3.id];
        both.sort();
        assert_eq!(list(Some(a.id), None).await, both);
        assert_eq!(list(None, Some("/music/a_b%")).await, both);
        assert_eq!(list(None, Some("/music/a_b%/")).await, both, "a trailing slash is the same folder");
        assert_eq!(list(None, Some("/music/aXbY")).await, vec![f3.id]);
        assert_eq!(list(None, Some("/music/a")).await, Vec::<Uuid>::new(), "a prefix of a name is not a folder");
        assert_eq!(list(Some(upload.id), None).await, vec![legacy.id]);

        assert!(sources::move_location(db, a.id, "/music/a_b%/x.wav", "/music/a_b%/sub/x2.wav", 12, 8)
            .await
            .unwrap());
        assert!(!sources::move_location(db, a.id, "/music/a_b%/x.wav", "/elsewhere", 1, 1)
            .await
            .unwrap());
        assert_eq!(sources::locations_under(db, a.id, "/music/a_b%/sub").await.unwrap().len(), 2);
        let removed = sources::delete_location(db, a.id, "/music/a_b%/sub/x2.wav").await.unwrap();
        assert_eq!(removed.unwrap().file_id, f2.id);
        assert_eq!(sources::files_without_locations(db, &[f2.id, f3.id]).await.unwrap(), vec![f2.id]);

        // A file's locations go with it; a source's with the source.
        store::delete(db, f3.id).await.unwrap();
        assert!(sources::locations_in_source(db, other.id).await.unwrap().is_empty());
        let detached = sources::set_state(db, a.id, SourceState::Detached, None).await.unwrap();
        assert_eq!(detached.state, SourceState::Detached);
        assert_eq!(sources::list_sources(db, false).await.unwrap().len(), 2);
        assert_eq!(sources::list_sources(db, true).await.unwrap().len(), 3);
        let (back, created) = sources::add_folder(db, "/music/a_b%").await.unwrap();
        assert!(!created);
        assert_eq!(back.state, SourceState::Idle, "adding a detached folder attaches it");
        assert!(sources::delete_source(db, a.id).await.unwrap());
        assert!(sources::get_source(db, a.id).await.unwrap().is_none());
    }
}

backend_tests! {
    /// Model indexes: the first becomes active, another is recorded once (a second insert
    /// returns the row), activation retires the old one and records the new model on every
    /// indexed file, and the reindex walks indexed files a page at a time in id order.
    async fn model_indexes(t: TestDb) {
        use entity::model_index::ModelState;
        use entity::store::models::{self, NewModelIndex};
        let db = &t.db;
        assert!(models::active_model(db).await.unwrap().is_none());
        let new = |key: &str, model: &str, dim: i32, state| NewModelIndex {
            key: key.into(),
            model_id: model.into(),
            weights_digest: format!("{:0>64}", dim),
            dim,
            location: format!("indexes/{key}"),
            state,
        };
        let a = models::insert_model(db, new("a@1", "/m/a", 24, ModelState::Active))
            .await
            .unwrap();
        assert_eq!(a.state, ModelState::Active);
        assert!(a.activated_at.is_some());
        let b = models::insert_model(db, new("b@2", "/m/b", 20, ModelState::Building))
            .await
            .unwrap();
        assert_eq!((b.state, b.dim, b.activated_at), (ModelState::Building, 20, None));
        // Recorded once: the second insert (another replica starting) gets the same row.
        let again = models::insert_model(db, new("b@2", "/m/other", 99, ModelState::Active))
            .await
            .unwrap();
        assert_eq!((again.model_id.as_str(), again.dim), ("/m/b", 20));
        assert_eq!(models::active_model(db).await.unwrap().unwrap().key, "a@1");

        let mut ids = Vec::new();
        for n in 0..5 {
            let row = insert(db, n).await;
            if n != 2 {
                store::mark_indexed(db, row.id, "/m/a").await.unwrap();
                ids.push(row.id);
            }
        }
        ids.sort();
        assert_eq!(models::count_indexed(db).await.unwrap(), 4);
        let first = models::indexed_file_ids(db, None, None, 3).await.unwrap();
        assert_eq!(first, ids[..3]);
        let rest = models::indexed_file_ids(db, None, Some(first[2]), 3).await.unwrap();
        assert_eq!(rest, ids[3..]);
        assert!(models::indexed_file_ids(db, None, Some(ids[3]), 3).await.unwrap().is_empty());
        let later = store::now() + chrono::Duration::seconds(5);
        assert!(models::indexed_file_ids(db, Some(later), None, 9).await.unwrap().is_empty());
        let earlier = store::now() - chrono::Duration::seconds(60);
        assert_eq!(models::indexed_file_ids(db, Some(earlier), None, 9).await.unwrap(), ids);
        assert_eq!(models::indexed_model_ids(db).await.unwrap(), ["/m/a"]);

        let saved = models::save_model_progress(db, "b@2", 3, 1, 4).await.unwrap();
        assert_eq!((saved.files_done, saved.files_failed, saved.files_total), (3, 1, 4));
        let ready = models::set_model_state(db, "b@2", ModelState::Ready, None).await.unwrap();
        assert!(ready.completed_at.is_some());

        let active = models::activate(db, "b@2").await.unwrap();
        assert_eq!(active.state, ModelState::Active);
        assert!(active.activated_at.is_some());
        let old = models::get_model(db, "a@1").await.unwrap().unwrap();
        assert_eq!(old.state, ModelState::Retired);
        assert_eq!(models::active_model(db).await.unwrap().unwrap().key, "b@2");
        for id in &ids {
            let row = reload(db, *id).await;
            assert_eq!(row.model_id.as_deref(), Some("/m/b"));
        }
        let listed: Vec<String> = models::list_models(db)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(listed, ["a@1", "b@2"]);
        assert!(models::delete_model(db, "a@1").await.unwrap());
        assert!(!models::delete_model(db, "a@1").await.unwrap());
        assert_eq!(models::list_models(db).await.unwrap().len(), 1);
    }
}
