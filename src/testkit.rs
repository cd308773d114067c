//! Unit-test harness: a database and a files directory of their own, and ops run the way
//! the workers run them (`run_read`, a read's hand-over to the writer, `run_batch`).
//!
//! SQLite by default; `CHIMED_TEST_BACKEND=mysql` runs the same tests on MySQL/MariaDB at
//! `CHIMED_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`) in a database created for
//! the test and dropped after it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::chat::ops::{run_read, Effect, Op, Settings, Step, WriterState};
use crate::protocol::ApiError;
use crate::store::{self, Db};
use crate::workers::run_batch;

const TIMEOUT: Duration = Duration::from_secs(10);

pub type Data = Map<String, Value>;

pub struct Kit {
    pub dir: PathBuf,
    pub url: String,
    pub db: Box<dyn Db>,
    pub s: Settings,
    pub w: WriterState,
    /// `(admin URL, database)` to drop at the end, on MySQL.
    mysql: Option<(String, String)>,
}

impl Kit {
    pub fn new(tag: &str) -> Kit {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let unique = format!(
            "{tag}_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("chimed-unit-{unique}"));
        let mysql = std::env::var("CHIMED_TEST_BACKEND").is_ok_and(|b| b == "mysql" || b == "mariadb");
        let (url, mysql) = if mysql {
            let base = std::env::var("CHIMED_TEST_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
            let base = base.trim_end_matches('/').to_string();
            let name = format!("chimed_u_{unique}");
            let mut admin = store::open(&format!("{base}/mysql"), TIMEOUT).unwrap();
            admin.execute(&format!("CREATE DATABASE `{name}`"), &[]).unwrap();
            (format!("{base}/{name}"), Some((base, name)))
        } else {
            (format!("sqlite://{}", dir.join("t.db").display()), None)
        };
        // After the database: a server that cannot be reached leaves no directory behind.
        std::fs::create_dir_all(&dir).unwrap();
        store::migrate(&url, TIMEOUT).unwrap();
        let db = store::open(&url, TIMEOUT).unwrap();
        let s = Settings {
            storage_timeout: TIMEOUT,
            token_ttl_ms: 3_600_000,
            partition_size: 10_000,
            max_batch: 64,
            files_dir: dir.join("files"),
        };
        crate::files::prepare_dir(&s.files_dir).unwrap();
        Kit {
            dir,
            url,
            db,
            s,
            w: WriterState::default(),
            mysql,
        }
    }

    /// Runs an op as the pool would: reads on a reader (with the hand-over of
    /// `Step::Write`), writes in a batch of their own.
    pub fn exec(&mut self, op: Op) -> Result<(Data, Effect), ApiError> {
        let op = if op.is_write() {
            op
        } else {
            match run_read(self.db.as_mut(), &self.s, op) {
                Ok(Step::Done(data, effect)) => return Ok((data, effect)),
                Ok(Step::Write(next)) => next,
                Err(e) => return Err(e.into_api(|e| panic!("storage error: {e}"))),
            }
        };
        let mut staged = run_batch(self.db.as_mut(), &mut self.w, &self.s, vec![((), op)])
            .unwrap_or_else(|(_, e)| panic!("batch failed: {e}"));
        let (_, r) = staged.pop().unwrap();
        r.map(|((answer, effect), _)| (answer.into_map(), effect))
            .map_err(|e| e.into_api(|e| panic!("storage error: {e}")))
    }

    /// The data of an op that must succeed.
    pub fn ok(&mut self, op: Op) -> Data {
        let name = format!("{op:?}").chars().take(60).collect::<String>();
        self.exec(op).unwrap_or_else(|e| panic!("{name}: {e}")).0
    }

    pub fn user(&mut self, name: &str) -> i64 {
        let d = self.ok(Op::CreateUser {
            username: name.into(),
            password_hash: "x".into(),
        });
        id(&d, "user_id")
    }

    /// A public server owned by `owner`: `(server_id, general channel_id)`.
    pub fn server(&mut self, owner: i64) -> (i64, i64) {
        let d = self.ok(Op::CreateServer {
            user: owner,
            name: "srv".into(),
            description: String::new(),
            is_public: true,
        });
        (id(&d, "server_id"), id(&d, "channel_id"))
    }

    pub fn join(&mut self, user: i64, server_id: i64) {
        self.ok(Op::JoinServer {
            user,
            server_id: Some(server_id),
            invite_code: None,
        });
    }

    pub fn post(&mut self, user: i64, channel_id: i64, content: &str) -> Data {
        self.ok(Op::PostMessage {
            user,
            channel_id,
            content: content.into(),
            attachments: Vec::new(),
            client_msg_id: None,
        })
    }

    pub fn count(&mut self, sql: &str) -> i64 {
        use crate::store::RowExt;
        self.db.query_row(sql, &[]).unwrap().unwrap().int(0).unwrap()
    }
}

impl Drop for Kit {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((base, name)) = &self.mysql {
            if let Ok(mut admin) = store::open(&format!("{base}/mysql"), TIMEOUT) {
                let _ = admin.execute(&format!("DROP DATABASE IF EXISTS `{name}`"), &[]);
            }
        }
    }
}

/// A wire id (a string) from response data.
pub fn id(d: &Data, key: &str) -> i64 {
    d[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no id {key} in {d:?}"))
}

/// A `Db` that fails chosen statements: each `(prefix, n)` makes the next `n` statements
/// starting with `prefix` fail with `Unavailable` (a lock timeout, a full disk), as a real
/// backend can fail one statement inside a transaction that goes on.
pub struct Faulty<'a> {
    pub inner: &'a mut dyn Db,
    pub fail: Vec<(&'static str, usize)>,
}

impl Faulty<'_> {
    fn check(&mut self, sql: &str) -> Result<(), store::StoreError> {
        for (prefix, n) in self.fail.iter_mut() {
            if *n > 0 && sql.starts_with(*prefix) {
                *n -= 1;
                return Err(store::StoreError::Unavailable(format!("injected failure: {sql}")));
            }
        }
        Ok(())
    }
}

impl Db for Faulty<'_> {
    fn execute(&mut self, sql: &str, params: &[store::Val]) -> Result<u64, store::StoreError> {
        self.check(sql)?;
        self.inner.execute(sql, params)
    }
    fn query(&mut self, sql: &str, params: &[store::Val]) -> Result<Vec<store::Row>, store::StoreError> {
        self.check(sql)?;
        self.inner.query(sql, params)
    }
    fn begin(&mut self) -> Result<(), store::StoreError> {
        self.inner.begin()
    }
    fn commit(&mut self) -> Result<(), store::StoreError> {
        self.inner.commit()
    }
    fn rollback(&mut self) {
        self.inner.rollback()
    }
    fn insert_ignore(&self) -> &'static str {
        self.inner.insert_ignore()
    }
}
