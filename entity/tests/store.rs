//! The store on real databases: every test runs on a SQLite file, SQLite in
//! memory and PostgreSQL (see `common`).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use entity::audio_file::{self, error_code, FileStatus};
use entity::migration::{Migrator, MigratorTrait, SchemaManager};
use entity::search_log::{self, SearchKind};
use entity::store::{self, Cursor, ListQuery, NewAudioFile, NewSearch, SortOrder, StoreError};
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

const TABLES: [&str; 4] = ["audio_file", "search_log", "api_key", "server_setting"];
const INDEXES: [(&str, &str); 5] = [
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
        assert_eq!(Migrator::get_pending_migrations(db).await.unwrap().len(), 3);

        Migrator::up(db, None).await.unwrap();
        assert_schema(db, true).await;
        // Down dropped the data; the fresh tables work.
        assert_eq!(store::list(db, &ListQuery::default()).await.unwrap().total, 0);
        insert(db, 1).await;

        // One step at a time, and `up` on an up-to-date schema is a no-op.
        Migrator::down(db, Some(1)).await.unwrap();
        let m = SchemaManager::new(db);
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
                while let Some(row) = store::claim_next(&db, &owner, HOUR).await.unwrap() {
                    assert_eq!(row.lease_owner.as_deref(), Some(owner.as_str()));
                    got.push((row.id, owner.clone()));
                }
                got
            }));
        }
        let mut claims = Vec::new();
        for w in workers {
            claims.extend(w.await.unwrap());
        }
        let ids: HashSet<Uuid> = claims.iter().map(|(id, _)| *id).collect();
        assert_eq!(claims.len() as u64, FILES, "every file claimed once: {claims:?}");
        assert_eq!(ids.len() as u64, FILES, "no file claimed twice");
        for (id, owner) in &claims {
            let row = reload(&t.db, *id).await;
            assert_eq!(row.status, FileStatus::Decoding);
            assert_eq!(row.attempts, 1);
            assert_eq!(row.lease_owner.as_ref(), Some(owner));
            assert!(row.lease_expires_at.unwrap() > store::now());
        }
        assert!(store::claim_next(&t.db, "late", HOUR).await.unwrap().is_none());
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
        let first = store::claim_next(db, "w", HOUR).await.unwrap().unwrap();
        assert_eq!(first.id, b.id, "oldest first");
        let second = store::claim_next(db, "w", HOUR).await.unwrap().unwrap();
        assert_eq!(second.id, a.id);
        // c is indexed; a failed file is not claimable either.
        store::fail(db, a.id, error_code::CORRUPT, "bad frame").await.unwrap();
        assert!(store::claim_next(db, "w", HOUR).await.unwrap().is_none());
        // A lease longer than a year is refused.
        assert!(matches!(
            store::claim_next(db, "w", Duration::from_secs(400 * 86400)).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }

    async fn expired_lease_is_reclaimed(t: TestDb) {
        let db = &t.db;
        let f = insert(db, 1).await;
        let a = store::claim_next(db, "a", HOUR).await.unwrap().unwrap();
        assert_eq!((a.id, a.attempts, a.status), (f.id, 1, FileStatus::Decoding));
        assert!(store::claim_next(db, "b", HOUR).await.unwrap().is_none(), "leased");
        assert!(store::renew_lease(db, f.id, "a", HOUR).await.unwrap());
        assert!(!store::renew_lease(db, f.id, "b", HOUR).await.unwrap());

        // a's worker dies mid-way; its lease runs out.
        store::set_status(db, f.id, FileStatus::Embedding).await.unwrap();
        store::set_progress(db, f.id, 3, 9).await.unwrap();
        expire_lease(db, f.id).await;
        let b = store::claim_next(db, "b", HOUR).await.unwrap().unwrap();
        assert_eq!(b.id, f.id);
        assert_eq!(b.attempts, 2);
        assert_eq!(b.status, FileStatus::Decoding);
        assert_eq!(b.lease_owner.as_deref(), Some("b"));
        assert_eq!(b.windows_done, 0, "progress restarts");
        // a finds out it lost the file.
        assert!(!store::renew_lease(db, f.id, "a", HOUR).await.unwrap());
        assert!(!store::release(db, f.id, "a").await.unwrap());
        assert!(store::claim_next(db, "a", HOUR).await.unwrap().is_none());

        // b gives it back unfinished; a claims it again.
        assert!(store::release(db, f.id, "b").await.unwrap());
        let released = reload(db, f.id).await;
        assert_eq!(released.status, FileStatus::Queued);
        assert!(released.lease_owner.is_none() && released.lease_expires_at.is_none());
        let again = store::claim_next(db, "a", HOUR).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (f.id, 3));
    }

    async fn requeue_interrupted_files(t: TestDb) {
        let db = &t.db;
        let ids: Vec<Uuid> = {
            let mut v = Vec::new();
            for n in 0..6 {
                v.push(insert(db, n).await.id);
            }
            v
        };
        // Claim all six as "old" (a previous run), then shape their states.
        for _ in 0..6 {
            store::claim_next(db, "old", HOUR).await.unwrap().unwrap();
        }
        // 0: decoding, lease expired -> queued.
        expire_lease(db, ids[0]).await;
        // 1: embedding, lease live -> untouched (its worker may be alive).
        store::set_status(db, ids[1], FileStatus::Embedding).await.unwrap();
        // 2: embedding, expired, third attempt of at most 3 -> failed.
        store::set_status(db, ids[2], FileStatus::Embedding).await.unwrap();
        force(db, ids[2], audio_file::Column::Attempts, Expr::value(3)).await;
        expire_lease(db, ids[2]).await;
        // 3: indexed -> untouched.
        store::mark_indexed(db, ids[3], "m").await.unwrap();
        // 4: back in the queue -> untouched.
        store::set_status(db, ids[4], FileStatus::Queued).await.unwrap();
        // 5: decoding without any lease -> queued.
        force(db, ids[5], audio_file::Column::LeaseOwner, Expr::value(Option::<String>::None)).await;
        force(
            db,
            ids[5],
            audio_file::Column::LeaseExpiresAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .await;

        let report = store::requeue_interrupted(db, 3).await.unwrap();
        assert_eq!(report, store::RequeueReport { requeued: 2, failed: 1 });
        let status = |i: usize| {
            let id = ids[i];
            async move { reload(db, id).await }
        };
        for i in [0, 5] {
            let row = status(i).await;
            assert_eq!(row.status, FileStatus::Queued, "file {i}");
            assert!(row.lease_owner.is_none() && row.lease_expires_at.is_none());
            assert_eq!(row.attempts, 1, "requeueing is not an attempt");
        }
        let row1 = status(1).await;
        assert_eq!(row1.status, FileStatus::Embedding);
        assert_eq!(row1.lease_owner.as_deref(), Some("old"));
        let row2 = status(2).await;
        assert_eq!(row2.status, FileStatus::Failed);
        assert_eq!(row2.error_code.as_deref(), Some(error_code::TOO_MANY_ATTEMPTS));
        assert!(row2.error_message.unwrap().contains("interrupted"));
        assert!(row2.lease_owner.is_none());
        assert_eq!(status(3).await.status, FileStatus::Indexed);
        assert_eq!(status(4).await.status, FileStatus::Queued);
        // Idempotent.
        assert_eq!(
            store::requeue_interrupted(db, 3).await.unwrap(),
            store::RequeueReport::default()
        );

        // The previous run was this server under a stable owner id: its live
        // lease goes too.
        assert_eq!(store::release_owner(db, "someone-else").await.unwrap(), 0);
        assert_eq!(store::release_owner(db, "old").await.unwrap(), 1);
        assert_eq!(status(1).await.status, FileStatus::Queued);
        let counts = store::count_by_status(db).await.unwrap();
        assert_eq!((counts.queued, counts.indexed, counts.failed), (4, 1, 1));
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
