//! The MySQL/MariaDB backend against a real server, through the `Db` trait.
//!
//! Needs a MariaDB/MySQL server: `CHIMED_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`,
//! an account that may create and drop databases). Each test works in its own database,
//! created here and dropped at the end, also when the test fails. An unreachable server
//! fails the tests: they do not skip.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chimed::store::{self, Db, RowExt, StoreError, Val};
use mysql::prelude::Queryable;

const TIMEOUT: Duration = Duration::from_secs(3);

fn server_url() -> String {
    std::env::var("CHIMED_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
        .trim_end_matches('/')
        .to_string()
}

fn try_admin() -> mysql::Result<mysql::Conn> {
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&server_url())?)
        .prefer_socket(false)
        .tcp_connect_timeout(Some(TIMEOUT));
    mysql::Conn::new(opts)
}

fn admin() -> mysql::Conn {
    try_admin().unwrap_or_else(|e| {
        panic!(
            "cannot reach the MariaDB/MySQL server for these tests at {} ({e}); start one, or set \
             CHIMED_TEST_MYSQL=mysql://USER:PASS@HOST:PORT to an account that may create databases",
            server_url()
        )
    })
}

/// A database of its own for one test, dropped when the guard goes (also on panic).
struct TempDb {
    name: String,
    url: String,
}

impl TempDb {
    fn new(tag: &str) -> TempDb {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "chimed_t_{tag}_{}_{}_{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        admin()
            .query_drop(format!("CREATE DATABASE `{name}`"))
            .expect("create test database");
        let url = format!("{}/{name}", server_url());
        TempDb { name, url }
    }

    /// A database name that does not exist yet (migrate creates it); dropped all the same.
    fn missing(tag: &str) -> TempDb {
        let db = TempDb::new(tag);
        admin()
            .query_drop(format!("DROP DATABASE `{}`", db.name))
            .expect("drop test database");
        db
    }

    fn migrated(tag: &str) -> (TempDb, Box<dyn Db>) {
        let t = TempDb::new(tag);
        assert_eq!(store::migrate(&t.url, TIMEOUT).expect("migrate"), 2);
        let db = store::open(&t.url, TIMEOUT).expect("open");
        (t, db)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if let Ok(mut c) = try_admin() {
            let _ = c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
        }
    }
}

const INSERT_USER: &str =
    "INSERT INTO users (user_id, username, username_key, password_hash, created_at) VALUES (?, ?, ?, 'x', 0)";

fn count(db: &mut dyn Db, table: &str) -> i64 {
    db.query_row(&format!("SELECT COUNT(*) FROM {table}"), &[])
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap()
}

#[test]
fn migrates_twice_with_the_full_schema() {
    let t = TempDb::new("migrate");
    assert_eq!(store::migrate(&t.url, TIMEOUT).unwrap(), 2);
    assert_eq!(store::migrate(&t.url, TIMEOUT).unwrap(), 2);
    let mut db = store::open(&t.url, TIMEOUT).unwrap();
    let versions = db
        .query("SELECT version FROM schema_version ORDER BY version", &[])
        .unwrap();
    assert_eq!(versions, vec![vec![Val::Int(1)], vec![Val::Int(2)]]);
    // Interrupted after its index was made, before its version was recorded: the
    // migration runs again and finds the index there.
    db.execute("DELETE FROM schema_version WHERE version = 2", &[]).unwrap();
    assert_eq!(store::migrate(&t.url, TIMEOUT).unwrap(), 2);
    let tables = db
        .query(
            "SELECT table_name, engine, table_collation FROM information_schema.tables \
             WHERE table_schema = DATABASE()",
            &[],
        )
        .unwrap();
    let mut names: Vec<String> = tables.iter().map(|r| r.text(0).unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "attachments",
            "channels",
            "delta_partitions",
            "deltas",
            "files",
            "invites",
            "messages",
            "schema_version",
            "server_users",
            "servers",
            "tokens",
            "users"
        ]
    );
    for r in &tables {
        assert_eq!(r.text(1).unwrap(), "InnoDB", "{r:?}");
        assert_eq!(r.text(2).unwrap(), "utf8mb4_bin", "{r:?}");
    }
    let indexes = db
        .query(
            "SELECT DISTINCT table_name, index_name, non_unique FROM information_schema.statistics \
             WHERE table_schema = DATABASE() AND index_name <> 'PRIMARY'",
            &[],
        )
        .unwrap();
    let mut got: Vec<(String, i64)> = indexes
        .iter()
        .map(|r| (r.text(1).unwrap(), r.int(2).unwrap()))
        .collect();
    got.sort();
    let want = [
        ("attachments_file", 1),
        ("channels_server", 1),
        ("deltas_channel", 1),
        ("files_sha256", 1),
        ("messages_channel", 1),
        ("messages_client_msg", 0),
        ("server_users_user", 1),
        ("servers_dm_key", 0),
        ("servers_public", 1),
        ("tokens_user", 1),
        ("users_username_key", 0),
    ];
    assert_eq!(got, want.map(|(n, u)| (n.to_string(), u)));
}

#[test]
fn migrate_creates_a_missing_database() {
    let t = TempDb::missing("create");
    assert_eq!(store::migrate(&t.url, TIMEOUT).unwrap(), 2);
    let mut db = store::open(&t.url, TIMEOUT).unwrap();
    assert_eq!(count(db.as_mut(), "users"), 0);
}

#[test]
fn values_round_trip() {
    let (_t, mut db) = TempDb::migrated("values");
    let text = "héllo 🎉 'quoted' \"double\" back\\slash %_";
    let n = db
        .execute(
            "INSERT INTO messages (message_id, server_id, channel_id, user_id, content, attachments, client_msg_id, \
             delta_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                i64::MAX.into(),
                1.into(),
                2.into(),
                (-3).into(),
                text.into(),
                Val::Null,
                Option::<String>::None.into(),
                7.into(),
                1_700_000_000_123.into(),
            ],
        )
        .unwrap();
    assert_eq!(n, 1);
    let row = db
        .query_row(
            "SELECT message_id, user_id, content, attachments, client_msg_id, edited, created_at FROM messages \
             WHERE channel_id = ? AND message_id <= ?",
            &[2.into(), i64::MAX.into()],
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        row,
        vec![
            Val::Int(i64::MAX),
            Val::Int(-3),
            Val::Text(text.into()),
            Val::Null,
            Val::Null,
            Val::Int(0),
            Val::Int(1_700_000_000_123),
        ]
    );
    // UPDATE counts matched rows, as in SQLite, also when nothing changes.
    let upd = "UPDATE messages SET edited = 1 WHERE message_id = ?";
    assert_eq!(db.execute(upd, &[i64::MAX.into()]).unwrap(), 1);
    assert_eq!(db.execute(upd, &[i64::MAX.into()]).unwrap(), 1);
    assert_eq!(db.execute(upd, &[5.into()]).unwrap(), 0);
    assert!(db
        .query("SELECT 1 FROM messages WHERE message_id = ?", &[5.into()])
        .unwrap()
        .is_empty());
    // Binary collation, as SQLite compares text.
    db.execute(INSERT_USER, &[1.into(), "Ann".into(), "ann".into()])
        .unwrap();
    assert!(db
        .query_row("SELECT 1 FROM users WHERE username_key = ?", &[Val::from("ANN")])
        .unwrap()
        .is_none());
    // insert_ignore skips a duplicate and reports 0 rows.
    let sql = format!(
        "{} INTO delta_partitions (server_id, partition_no, first_delta_id, created_at) VALUES (?, ?, ?, ?)",
        db.insert_ignore()
    );
    let args = [1.into(), 1.into(), 1.into(), 0.into()];
    assert_eq!(db.execute(&sql, &args).unwrap(), 1);
    assert_eq!(db.execute(&sql, &args).unwrap(), 0);
}

#[test]
fn duplicate_keys_are_conflicts() {
    let (_t, mut db) = TempDb::migrated("conflict");
    db.execute(INSERT_USER, &[1.into(), "Ann".into(), "ann".into()])
        .unwrap();
    let err = db
        .execute(INSERT_USER, &[2.into(), "ANN".into(), "ann".into()])
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let err = db
        .execute(INSERT_USER, &[1.into(), "Bob".into(), "bob".into()])
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // Many NULL client_msg_ids per user; a repeated key is refused.
    let ins = "INSERT INTO messages (message_id, server_id, channel_id, user_id, content, client_msg_id, delta_id, \
               created_at) VALUES (?, 1, 1, 1, 'x', ?, 1, 0)";
    db.execute(ins, &[1.into(), Val::Null]).unwrap();
    db.execute(ins, &[2.into(), Val::Null]).unwrap();
    db.execute(ins, &[3.into(), "k1".into()]).unwrap();
    let err = db.execute(ins, &[4.into(), "k1".into()]).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // The connection is still good.
    assert_eq!(count(db.as_mut(), "messages"), 3);
    assert_eq!(count(db.as_mut(), "users"), 1);
}

#[test]
fn savepoint_rollback_keeps_the_rest_of_the_transaction() {
    let (_t, mut db) = TempDb::migrated("savepoint");
    let user = |id: i64| -> [Val; 3] { [id.into(), format!("U{id}").into(), format!("u{id}").into()] };
    // The writer's group commit: each job in a savepoint.
    db.begin().unwrap();
    db.execute("SAVEPOINT job", &[]).unwrap();
    db.execute(INSERT_USER, &user(1)).unwrap();
    db.execute("RELEASE SAVEPOINT job", &[]).unwrap();

    db.execute("SAVEPOINT job", &[]).unwrap();
    db.execute(INSERT_USER, &user(2)).unwrap();
    let err = db.execute(INSERT_USER, &user(1)).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    db.execute("ROLLBACK TO SAVEPOINT job", &[]).unwrap();
    db.execute("RELEASE SAVEPOINT job", &[]).unwrap();

    db.execute("SAVEPOINT job", &[]).unwrap();
    db.execute(INSERT_USER, &user(3)).unwrap();
    db.execute("RELEASE SAVEPOINT job", &[]).unwrap();
    db.commit().unwrap();

    let ids = db.query("SELECT user_id FROM users ORDER BY user_id", &[]).unwrap();
    assert_eq!(ids, vec![vec![Val::Int(1)], vec![Val::Int(3)]]);

    // A rolled-back transaction leaves nothing.
    db.begin().unwrap();
    db.execute(INSERT_USER, &user(4)).unwrap();
    db.rollback();
    assert_eq!(count(db.as_mut(), "users"), 2);
    // And a committed one is seen by another connection.
    db.begin().unwrap();
    db.execute(INSERT_USER, &user(5)).unwrap();
    db.commit().unwrap();
    let mut other = store::open(&_t.url, TIMEOUT).unwrap();
    assert_eq!(count(other.as_mut(), "users"), 3);
}

#[test]
fn aggregates_come_back_as_ints() {
    let (_t, mut db) = TempDb::migrated("aggregates");
    let max = "SELECT MAX(delta_id) FROM deltas WHERE server_id = ?";
    assert_eq!(db.query_row(max, &[1.into()]).unwrap().unwrap(), vec![Val::Null]);
    let next_id =
        "SELECT MAX(m) FROM (SELECT MAX(user_id) AS m FROM users UNION ALL SELECT MAX(server_id) FROM servers \
                   UNION ALL SELECT MAX(channel_id) FROM channels UNION ALL SELECT MAX(message_id) FROM messages \
                   UNION ALL SELECT MAX(file_id) FROM files) AS t";
    assert_eq!(db.query_row(next_id, &[]).unwrap().unwrap(), vec![Val::Null]);
    for d in 1..=3 {
        db.execute(
            "INSERT INTO deltas (server_id, delta_id, partition_no, type, user_id, created_at) VALUES (?, ?, 1, 'message', 1, 0)",
            &[1.into(), d.into()],
        )
        .unwrap();
    }
    db.execute(INSERT_USER, &[(1_i64 << 40).into(), "A".into(), "a".into()])
        .unwrap();
    db.execute(
        "INSERT INTO channels (channel_id, server_id, name, type, created_at) VALUES (?, 1, 'c', 'text', 0)",
        &[((1_i64 << 40) + 7).into()],
    )
    .unwrap();
    assert_eq!(db.query_row(max, &[1.into()]).unwrap().unwrap(), vec![Val::Int(3)]);
    assert_eq!(
        db.query_row(next_id, &[]).unwrap().unwrap(),
        vec![Val::Int((1_i64 << 40) + 7)]
    );
    let r = db
        .query_row(
            "SELECT COUNT(*), COALESCE(MAX(version), 0), SUM(delta_id), 1 FROM deltas, schema_version WHERE version = 1",
            &[],
        )
        .unwrap()
        .unwrap();
    assert_eq!(r, vec![Val::Int(3), Val::Int(1), Val::Int(6), Val::Int(1)]);
    // Text protocol results (no parameters) are typed the same way.
    let r = db
        .query_row("SELECT COUNT(*), MAX(delta_id), 'x' FROM deltas", &[])
        .unwrap()
        .unwrap();
    assert_eq!(r, vec![Val::Int(3), Val::Int(3), Val::Text("x".into())]);
}

#[test]
fn discover_like_escape_query_runs() {
    let (_t, mut db) = TempDb::migrated("discover");
    let names = [
        "50% Off",
        "5000 Offers",
        "snake_case",
        "snakeXcase",
        "back\\slash",
        "Backslash",
        "Plain",
    ];
    for (i, name) in names.iter().enumerate() {
        let id = i as i64 + 1;
        db.execute(
            "INSERT INTO servers (server_id, name, description, kind, is_public, owner_id, dm_key, created_at) \
             VALUES (?, ?, '', 'community', 1, 1, NULL, 0)",
            &[id.into(), (*name).into()],
        )
        .unwrap();
        db.execute(
            "INSERT INTO server_users (server_id, user_id, role, joined_at) VALUES (?, ?, 'owner', 0)",
            &[id.into(), 1.into()],
        )
        .unwrap();
    }
    // Exactly the statement and pattern of src/chat/servers.rs `discover`.
    let discover = |db: &mut dyn Db, query: &str| -> Vec<(i64, String, i64)> {
        let pattern = format!(
            "%{}%",
            query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
        );
        db.query(
            "SELECT s.server_id, s.name, s.description, (SELECT COUNT(*) FROM server_users m WHERE m.server_id = s.server_id) \
             FROM servers s WHERE s.is_public = 1 AND s.deleted = 0 AND s.kind = 'community' AND s.server_id > ? \
             AND LOWER(s.name) LIKE LOWER(?) ESCAPE '\\' ORDER BY s.server_id LIMIT ?",
            &[0.into(), pattern.into(), 11.into()],
        )
        .unwrap()
        .iter()
        .map(|r| (r.int(0).unwrap(), r.text(1).unwrap(), r.int(3).unwrap()))
        .collect()
    };
    let names_of = |v: Vec<(i64, String, i64)>| v.into_iter().map(|(_, n, _)| n).collect::<Vec<_>>();
    assert_eq!(names_of(discover(db.as_mut(), "50%")), ["50% Off"]);
    assert_eq!(names_of(discover(db.as_mut(), "e_c")), ["snake_case"]);
    assert_eq!(names_of(discover(db.as_mut(), "k\\s")), ["back\\slash"]);
    assert_eq!(names_of(discover(db.as_mut(), "OFF")), ["50% Off", "5000 Offers"]);
    assert_eq!(discover(db.as_mut(), "plain"), vec![(7, "Plain".to_string(), 1)]);
    assert_eq!(discover(db.as_mut(), "").len(), names.len());
}

/// A port with nothing listening on it.
fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn nothing_listening_is_unavailable_within_the_timeout() {
    let url = format!("mysql://root@127.0.0.1:{}/chimed", dead_port());
    let timeout = Duration::from_secs(2);
    let t0 = Instant::now();
    let err = store::open(&url, timeout).err().expect("open must fail");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = store::migrate(&url, timeout).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(t0.elapsed() < timeout, "took {:?}", t0.elapsed());
}

#[test]
fn a_server_that_never_answers_is_unavailable_within_the_timeout() {
    // Accepts TCP connections, never speaks: like a stopped (SIGSTOP) database.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = l.local_addr().unwrap();
    let url = format!("mysql://root@127.0.0.1:{}/chimed", addr.port());
    let timeout = Duration::from_millis(700);
    let t0 = Instant::now();
    let err = store::open(&url, timeout).err().expect("open must fail");
    let took = t0.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(took < timeout * 3, "took {took:?}");
    drop(l);
}

fn connection_id(db: &mut dyn Db) -> i64 {
    db.query_row("SELECT CONNECTION_ID()", &[])
        .unwrap()
        .unwrap()
        .int(0)
        .unwrap()
}

fn kill(id: i64) {
    admin().query_drop(format!("KILL CONNECTION {id}")).unwrap();
}

#[test]
fn a_connection_closed_by_the_server_is_replaced_outside_a_transaction() {
    // As after a restart of the database (or its wait_timeout, or KILL): the pooled
    // connection is gone. A read is retried once on a new connection.
    let (_t, mut db) = TempDb::migrated("reconnect");
    let id = connection_id(db.as_mut());
    kill(id);
    assert_eq!(count(db.as_mut(), "users"), 0);
    assert_ne!(connection_id(db.as_mut()), id);
    // So is START TRANSACTION: nothing had run yet.
    kill(connection_id(db.as_mut()));
    db.begin().unwrap();
    db.execute(INSERT_USER, &[1.into(), "A".into(), "a".into()]).unwrap();
    db.commit().unwrap();
    // A write in autocommit is not: the server may have applied it before the connection
    // went, and running it again could apply it twice. It fails once, then reconnects.
    let id = connection_id(db.as_mut());
    kill(id);
    let err = db
        .execute(INSERT_USER, &[2.into(), "B".into(), "b".into()])
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(count(db.as_mut(), "users"), 1);
    assert_ne!(connection_id(db.as_mut()), id);
}

#[test]
fn a_connection_lost_mid_transaction_fails_the_transaction() {
    let (_t, mut db) = TempDb::migrated("losttx");
    db.begin().unwrap();
    db.execute("SAVEPOINT job", &[]).unwrap();
    db.execute(INSERT_USER, &[1.into(), "A".into(), "a".into()]).unwrap();
    db.execute("RELEASE SAVEPOINT job", &[]).unwrap();
    let id = connection_id(db.as_mut());
    admin().query_drop(format!("KILL CONNECTION {id}")).unwrap();
    let err = db.execute("SAVEPOINT job", &[]).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    // Nothing may run on a fresh connection in autocommit as if the transaction went on.
    let err = db
        .execute(INSERT_USER, &[2.into(), "B".into(), "b".into()])
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let err = db.commit().unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    db.rollback();
    assert_eq!(count(db.as_mut(), "users"), 0);
    db.begin().unwrap();
    db.execute(INSERT_USER, &[3.into(), "C".into(), "c".into()]).unwrap();
    db.commit().unwrap();
    assert_eq!(count(db.as_mut(), "users"), 1);
}

#[test]
fn bad_urls_and_sql_are_internal() {
    let err = store::open("mysql://root@127.0.0.1:notaport/x", TIMEOUT).err().unwrap();
    assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
    let (_t, mut db) = TempDb::migrated("internal");
    let err = db.query("SELECT nope FROM users", &[]).unwrap_err();
    assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
    let err = db.query("SELECT ? + ?", &[1.into()]).unwrap_err();
    assert!(matches!(err, StoreError::Internal(_)), "{err:?}");
    assert_eq!(count(db.as_mut(), "users"), 0);
}

/// Drives the chat ops (every statement of src/chat) like the workers do, on one backend.
struct Chat {
    db: Box<dyn Db>,
    s: chimed::chat::ops::Settings,
    w: chimed::chat::ops::WriterState,
    transcript: Vec<String>,
}

type Data = serde_json::Map<String, serde_json::Value>;

impl Chat {
    fn new(db: Box<dyn Db>) -> Chat {
        Chat {
            db,
            s: chimed::chat::ops::Settings {
                storage_timeout: TIMEOUT,
                token_ttl_ms: 3_600_000,
                partition_size: 2,
                max_batch: 64,
                files_dir: std::env::temp_dir().join("chimed-mysql-backend-files"),
            },
            w: Default::default(),
            transcript: Vec::new(),
        }
    }

    /// One job in its own batch: transaction, savepoint, commit.
    fn write(&mut self, op: chimed::chat::ops::Op) -> Option<Data> {
        let db = self.db.as_mut();
        db.begin().unwrap();
        db.execute("SAVEPOINT job", &[]).unwrap();
        let mut deltas = Vec::new();
        let label = format!("{op:?}");
        let r = chimed::chat::ops::run_write(db, &self.s, &mut self.w, op, &mut deltas);
        if r.is_ok() {
            db.execute("RELEASE SAVEPOINT job", &[]).unwrap();
        } else {
            db.execute("ROLLBACK TO SAVEPOINT job", &[]).unwrap();
            db.execute("RELEASE SAVEPOINT job", &[]).unwrap();
        }
        db.commit().unwrap();
        let ids: Vec<i64> = deltas.iter().map(|d| d.delta_id).collect();
        self.record(&label, r.map(|(data, _)| data.into_map()), format!(" deltas={ids:?}"))
    }

    fn read(&mut self, op: chimed::chat::ops::Op) -> Option<Data> {
        use chimed::chat::ops::Step;
        // Ops are not Clone (file ops own open files): keep their Debug text for the transcript.
        let label = format!("{op:?}");
        match chimed::chat::ops::run_read(self.db.as_mut(), &self.s, op) {
            Ok(Step::Write(next)) => self.write(next),
            Ok(Step::Done(data, effect)) => {
                let extra = match effect {
                    chimed::chat::ops::Effect::Subscribed(p) | chimed::chat::ops::Effect::CatchUp(p) => {
                        let ids: Vec<i64> = p.deltas.iter().map(|d| d.delta_id).collect();
                        format!(" head={} page={ids:?} more={}", p.head, p.has_more)
                    }
                    _ => String::new(),
                };
                self.record(&label, Ok(data), extra)
            }
            Err(e) => self.record(&label, Err(e), String::new()),
        }
    }

    fn record(&mut self, op: &str, r: Result<Data, chimed::chat::ops::OpError>, extra: String) -> Option<Data> {
        let name = op.split([' ', '{']).next().unwrap().to_string();
        match r {
            Ok(data) => {
                self.transcript.push(format!(
                    "{name}: ok {}{extra}",
                    normalize(&serde_json::Value::Object(data.clone()))
                ));
                Some(data)
            }
            Err(chimed::chat::ops::OpError::Store(e)) => panic!("{name}: storage error {e}"),
            Err(chimed::chat::ops::OpError::Api(e)) => {
                self.transcript.push(format!("{name}: refused {:?}", e.code));
                None
            }
        }
    }
}

/// Ids, tokens, codes and times differ between runs; everything else must not.
fn normalize(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = match k.as_str() {
                        "token" | "invite_code" | "timestamp" if v.is_string() => Value::String("<var>".into()),
                        _ => normalize(v),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::String(s) if s.parse::<i64>().is_ok() => Value::String("<id>".into()),
        other => other.clone(),
    }
}

fn id_of(d: &Option<Data>, key: &str) -> i64 {
    d.as_ref().expect("op succeeded")[key]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Every kind of op, on one backend; returns the normalized transcript.
fn chat_scenario(db: Box<dyn Db>) -> Vec<String> {
    use chimed::chat::ops::Op;
    use chimed::chat::roles::Role;
    let mut c = Chat::new(db);
    let pw = "correct horse battery".to_string();
    let reg = |c: &mut Chat, u: &str| {
        let d = c.read(Op::Register {
            username: u.into(),
            password: pw.clone(),
        });
        id_of(&d, "user_id")
    };
    let ann = reg(&mut c, "Ann");
    let bob = reg(&mut c, "bob");
    let cat = reg(&mut c, "cat_3");
    c.read(Op::Register {
        username: "ANN".into(),
        password: pw.clone(),
    });
    let login = c.read(Op::Login {
        username: "ann".into(),
        password: pw.clone(),
    });
    let token = login.unwrap()["token"].as_str().unwrap().to_string();
    c.read(Op::Auth { token: token.clone() });
    c.read(Op::Login {
        username: "ann".into(),
        password: "wrong".into(),
    });

    let srv = c.write(Op::CreateServer {
        user: ann,
        name: "Rust 100% Fans".into(),
        description: "all about_rust".into(),
        is_public: true,
    });
    let (server, general) = (id_of(&srv, "server_id"), id_of(&srv, "channel_id"));
    c.write(Op::CreateServer {
        user: bob,
        name: "Private".into(),
        description: String::new(),
        is_public: false,
    });
    for q in ["100%", "rust", "_", "nothing"] {
        c.read(Op::DiscoverServers {
            query: q.into(),
            after: 0,
            limit: 10,
        });
    }
    c.write(Op::JoinServer {
        user: bob,
        server_id: Some(server),
        invite_code: None,
    });
    let inv = c.write(Op::CreateInvite {
        user: ann,
        server_id: server,
        max_uses: Some(1),
        expires_in_s: Some(60),
    });
    let code = inv.unwrap()["invite_code"].as_str().unwrap().to_string();
    c.write(Op::JoinServer {
        user: cat,
        server_id: None,
        invite_code: Some(code.clone()),
    });
    c.write(Op::LeaveServer {
        user: cat,
        server_id: server,
    });
    c.write(Op::JoinServer {
        user: cat,
        server_id: None,
        invite_code: Some(code),
    });
    c.read(Op::ListMembers {
        user: ann,
        server_id: server,
        after: 0,
        limit: 10,
    });
    c.write(Op::SetRole {
        user: ann,
        server_id: server,
        target: bob,
        role: Role::Moderator,
    });
    c.read(Op::ListServers { user: bob });
    let voice = c.write(Op::CreateChannel {
        user: ann,
        server_id: server,
        name: "voice".into(),
        kind: "voice".into(),
    });
    let voice = id_of(&voice, "channel_id");
    c.read(Op::ListChannels {
        user: bob,
        server_id: server,
    });
    c.read(Op::Voice {
        user: bob,
        channel_id: voice,
        join: true,
    });
    c.read(Op::Typing {
        user: bob,
        channel_id: general,
    });
    let post = |c: &mut Chat, user: i64, text: &str, key: Option<&str>| {
        c.write(Op::PostMessage {
            user,
            channel_id: general,
            content: text.into(),
            attachments: vec![],
            client_msg_id: key.map(Into::into),
        })
    };
    let m1 = post(&mut c, ann, "hello 🎉 \\ 'world'", Some("k1"));
    let m1 = id_of(&m1, "message_id");
    post(&mut c, ann, "hello again", Some("k1"));
    post(&mut c, bob, "hi", Some("k1"));
    post(&mut c, bob, "no key", None);
    post(&mut c, bob, "no key either", None);
    c.write(Op::EditMessage {
        user: ann,
        message_id: m1,
        content: "edited".into(),
    });
    c.write(Op::EditMessage {
        user: cat,
        message_id: m1,
        content: "not mine".into(),
    });
    c.write(Op::DeleteMessage {
        user: bob,
        message_id: m1,
    });
    c.read(Op::GetMessages {
        user: bob,
        channel_id: general,
        before: None,
        limit: 2,
    });
    c.read(Op::Sync {
        user: bob,
        server_id: server,
        after: 3,
        limit: 4,
    });
    c.read(Op::Restore {
        user: bob,
        channel_id: general,
        before: None,
        limit: 3,
    });
    c.read(Op::Subscribe {
        user: bob,
        server_id: server,
        after: Some(2),
        page: 3,
    });
    c.read(Op::CatchUp {
        server_id: server,
        after: 5,
        page: 100,
    });
    c.read(Op::CallSignal {
        user: ann,
        to_user: bob,
        call_id: "c1".into(),
        payload: serde_json::json!({"sdp": "x"}),
    });
    c.write(Op::OpenDm {
        user: ann,
        others: vec![bob],
    });
    c.write(Op::OpenDm {
        user: bob,
        others: vec![ann],
    });
    c.write(Op::Kick {
        user: ann,
        server_id: server,
        target: cat,
    });
    c.write(Op::DeleteChannel {
        user: ann,
        channel_id: voice,
    });
    c.write(Op::DeleteServer {
        user: bob,
        server_id: server,
    });
    c.write(Op::DeleteServer {
        user: ann,
        server_id: server,
    });
    c.read(Op::ListServers { user: ann });
    c.write(Op::Logout {
        token_hash: chimed::chat::accounts::hash_token(&token),
    });
    c.read(Op::Auth { token });
    c.transcript
}

#[test]
fn chat_ops_give_the_same_results_as_on_sqlite() {
    let (_t, mysql_db) = TempDb::migrated("parity");
    let on_mysql = chat_scenario(mysql_db);

    let dir = std::env::temp_dir().join(format!("chimed-mysql-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("chat.db").display());
    store::migrate(&url, TIMEOUT).unwrap();
    let on_sqlite = chat_scenario(store::open(&url, TIMEOUT).unwrap());
    let _ = std::fs::remove_dir_all(&dir);

    for (i, (m, s)) in on_mysql.iter().zip(&on_sqlite).enumerate() {
        assert_eq!(m, s, "step {i} differs (left MySQL, right SQLite)");
    }
    assert_eq!(on_mysql.len(), on_sqlite.len());
}

/// A TCP proxy to the test server that can be frozen: while frozen it forwards nothing,
/// like a database process that was stopped (SIGSTOP) or a network that drops everything.
struct Proxy {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    fn start() -> Proxy {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let upstream = {
            let opts = mysql::Opts::from_url(&server_url()).unwrap();
            format!("{}:{}", opts.get_ip_or_hostname(), opts.get_tcp_port())
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(&upstream) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let f = f.clone();
                    std::thread::spawn(move || pump(from, to, f));
                }
            }
        });
        Proxy { port, frozen }
    }

    fn url(&self, db: &TempDb) -> String {
        let opts = mysql::Opts::from_url(&server_url()).unwrap();
        let user = opts.get_user().unwrap_or("root");
        let auth = match opts.get_pass() {
            Some(p) => format!("{user}:{p}"),
            None => user.to_string(),
        };
        format!("mysql://{auth}@127.0.0.1:{}/{}", self.port, db.name)
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 16 * 1024];
    loop {
        while frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                // Data that arrives while frozen is held until the thaw.
                while frozen.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_stalled_database_is_unavailable_within_the_timeout_then_recovers() {
    let t = TempDb::new("stall");
    store::migrate(&t.url, TIMEOUT).unwrap();
    let proxy = Proxy::start();
    let timeout = Duration::from_millis(800);
    let mut db = store::open(&proxy.url(&t), timeout).unwrap();
    db.execute(INSERT_USER, &[1.into(), "A".into(), "a".into()]).unwrap();

    // A stall in autocommit: the statement fails in bounded time.
    proxy.freeze(true);
    let t0 = Instant::now();
    let err = db.query("SELECT COUNT(*) FROM users", &[]).unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(took >= timeout / 2 && took < timeout * 3, "took {took:?}");
    // Still stalled: reconnecting is bounded too.
    let t0 = Instant::now();
    let err = db.query("SELECT COUNT(*) FROM users", &[]).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(t0.elapsed() < timeout * 3, "took {:?}", t0.elapsed());
    proxy.freeze(false);
    assert_eq!(count(db.as_mut(), "users"), 1);

    // A stall inside a transaction: the batch fails as a whole, nothing is written.
    db.begin().unwrap();
    db.execute("SAVEPOINT job", &[]).unwrap();
    db.execute(INSERT_USER, &[2.into(), "B".into(), "b".into()]).unwrap();
    proxy.freeze(true);
    let err = db.execute("RELEASE SAVEPOINT job", &[]).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    proxy.freeze(false);
    let err = db
        .execute(INSERT_USER, &[3.into(), "C".into(), "c".into()])
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(matches!(db.commit(), Err(StoreError::Unavailable(_))));
    db.rollback();
    let ids = db.query("SELECT user_id FROM users ORDER BY user_id", &[]).unwrap();
    assert_eq!(ids, vec![vec![Val::Int(1)]]);
}
