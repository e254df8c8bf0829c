//! Runs one async test body on each real backend: a SQLite file, SQLite in
//! memory, and a fresh PostgreSQL database.
//!
//! PostgreSQL: `TRAUM_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) is the admin connection; each
//! test creates its own database `traum_test_<pid>_<nanos>_<n>` there and
//! drops it afterwards, passed or failed. If the server is not reachable the
//! test fails and says how to start it, unless `TRAUM_SKIP_POSTGRES=1`.

#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use entity::store;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    SqliteFile,
    SqliteMemory,
    Postgres,
}

/// The database a test body gets.
pub struct TestDb {
    pub db: DatabaseConnection,
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A second connection pool to the same database, as another process
    /// would have (for SQLite in memory, which one pool owns, the same pool).
    pub async fn connect_again(&self) -> DatabaseConnection {
        match self.backend {
            Backend::SqliteMemory => self.db.clone(),
            _ => store::connect(&self.url)
                .await
                .expect("second connection to the test database"),
        }
    }
}

/// Declares one test module per body, with a test per backend:
/// `name::sqlite_file`, `name::sqlite_memory`, `name::postgres`.
#[macro_export]
macro_rules! backend_tests {
    ($( $(#[$meta:meta])* async fn $name:ident($t:ident: TestDb) $body:block )*) => {
        $(
            $(#[$meta])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn body($t: common::TestDb) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_file() {
                    common::run(common::Backend::SqliteFile, body).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_memory() {
                    common::run(common::Backend::SqliteMemory, body).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    common::run(common::Backend::Postgres, body).await
                }
            }
        )*
    };
}

/// Sets up `backend`, runs `body` on it, tears it down (also when `body`
/// panics, whose panic is then re-raised).
pub async fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match backend {
        Backend::SqliteFile => {
            let dir = tempfile::tempdir().expect("temp dir");
            // A directory that does not exist yet: connect must create it.
            let url = store::sqlite_url(&dir.path().join("data").join("traum.db"));
            let db = store::connect_and_migrate(&url)
                .await
                .expect("open and migrate a SQLite file");
            finish(
                tokio::spawn(body(TestDb {
                    db,
                    url,
                    backend,
                    _dir: Some(dir),
                }))
                .await,
            );
        }
        Backend::SqliteMemory => {
            let url = "sqlite::memory:".to_owned();
            let db = store::connect_and_migrate(&url)
                .await
                .expect("open and migrate SQLite in memory");
            finish(
                tokio::spawn(body(TestDb {
                    db,
                    url,
                    backend,
                    _dir: None,
                }))
                .await,
            );
        }
        Backend::Postgres => {
            let Some(scratch) = PgScratch::create().await else {
                return;
            };
            let db = store::connect_and_migrate(&scratch.url)
                .await
                .expect("open and migrate the PostgreSQL test database");
            let outcome = tokio::spawn(body(TestDb {
                db,
                url: scratch.url.clone(),
                backend,
                _dir: None,
            }))
            .await;
            scratch.drop_database().await;
            finish(outcome);
        }
    }
}

fn finish(outcome: Result<(), tokio::task::JoinError>) {
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test body did not finish: {e}"),
        }
    }
}

/// A PostgreSQL database made for one test.
pub struct PgScratch {
    admin: DatabaseConnection,
    pub name: String,
    pub url: String,
}

impl PgScratch {
    /// `None` (after saying so) when `TRAUM_SKIP_POSTGRES=1`; panics with
    /// instructions when the server cannot be reached.
    pub async fn create() -> Option<PgScratch> {
        if std::env::var("TRAUM_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
            eprintln!("TRAUM_SKIP_POSTGRES=1: skipping the PostgreSQL run of this test");
            return None;
        }
        let admin_url = std::env::var("TRAUM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let mut opts = ConnectOptions::new(admin_url.clone());
        opts.max_connections(1)
            .connect_timeout(std::time::Duration::from_secs(5))
            .acquire_timeout(std::time::Duration::from_secs(5))
            .sqlx_logging(false);
        // Once one test found the server down, the others fail at once.
        static DOWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let unreachable = |e: &dyn std::fmt::Display| -> ! {
            panic!(
                "PostgreSQL is not reachable at {admin_url}: {e}\n\
                 Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                 (or point TRAUM_TEST_POSTGRES_URL at a server where this user may CREATE DATABASE), \
                 or set TRAUM_SKIP_POSTGRES=1 to skip the PostgreSQL tests."
            )
        };
        if let Some(e) = DOWN.get() {
            unreachable(e);
        }
        let admin = match Database::connect(opts).await {
            Ok(db) => db,
            Err(e) => unreachable(DOWN.get_or_init(|| e.to_string())),
        };
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!(
            "traum_test_{}_{}_{}",
            std::process::id(),
            nanos,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin_url}: {e}"));
        let (base, query) = match admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin_url.as_str(), String::new()),
        };
        let server = base
            .rsplit_once('/')
            .map(|(s, _)| s)
            .filter(|s| !s.ends_with('/'))
            .unwrap_or(base);
        let url = format!("{server}/{name}{query}");
        Some(PgScratch { admin, name, url })
    }

    pub async fn drop_database(self) {
        let sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = self.admin.execute_unprepared(&sql).await {
            eprintln!("warning: {sql}: {e}");
        }
        let _ = self.admin.close().await;
    }
}
