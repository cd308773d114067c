//! The SQLite backend (the embedded default): one `rusqlite` connection per worker, WAL.
//!
//! `synchronous=FULL`: an acknowledged write survives power loss, not only a process
//! crash; group commit pays the fsync once per batch. `busy_timeout` is the storage
//! timeout, so a locked database turns into `unavailable` instead of a hang.

use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, ToSql};

use super::{Db, Row, StoreError, Val};

/// The schema, one migration per entry; entry `i` brings the database to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: accounts, communities, channels, the delta log, messages, invites, files.
    r#"
    CREATE TABLE users (
        user_id       INTEGER PRIMARY KEY,
        username      TEXT NOT NULL,
        username_key  TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        created_at    INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        token_hash TEXT PRIMARY KEY,
        user_id    INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE servers (
        server_id   INTEGER PRIMARY KEY,
        name        TEXT NOT NULL,
        description TEXT NOT NULL,
        kind        TEXT NOT NULL,
        is_public   INTEGER NOT NULL,
        owner_id    INTEGER NOT NULL,
        dm_key      TEXT UNIQUE,
        deleted     INTEGER NOT NULL DEFAULT 0,
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX servers_public ON servers(is_public, deleted, server_id);
    CREATE TABLE server_users (
        server_id INTEGER NOT NULL,
        user_id   INTEGER NOT NULL,
        role      TEXT NOT NULL,
        joined_at INTEGER NOT NULL,
        PRIMARY KEY (server_id, user_id)
    );
    CREATE INDEX server_users_user ON server_users(user_id);
    CREATE TABLE channels (
        channel_id INTEGER PRIMARY KEY,
        server_id  INTEGER NOT NULL,
        name       TEXT NOT NULL,
        type       TEXT NOT NULL,
        deleted    INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX channels_server ON channels(server_id);
    CREATE TABLE deltas (
        server_id    INTEGER NOT NULL,
        delta_id     INTEGER NOT NULL,
        partition_no INTEGER NOT NULL,
        type         TEXT NOT NULL,
        channel_id   INTEGER,
        message_id   INTEGER,
        user_id      INTEGER NOT NULL,
        content      TEXT,
        attachments  TEXT,
        created_at   INTEGER NOT NULL,
        PRIMARY KEY (server_id, delta_id)
    );
    CREATE INDEX deltas_channel ON deltas(channel_id, delta_id);
    CREATE TABLE delta_partitions (
        server_id      INTEGER NOT NULL,
        partition_no   INTEGER NOT NULL,
        first_delta_id INTEGER NOT NULL,
        created_at     INTEGER NOT NULL,
        PRIMARY KEY (server_id, partition_no)
    );
    CREATE TABLE messages (
        message_id    INTEGER PRIMARY KEY,
        server_id     INTEGER NOT NULL,
        channel_id    INTEGER NOT NULL,
        user_id       INTEGER NOT NULL,
        content       TEXT NOT NULL,
        attachments   TEXT,
        client_msg_id TEXT,
        delta_id      INTEGER NOT NULL,
        edited        INTEGER NOT NULL DEFAULT 0,
        deleted       INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX messages_client_msg ON messages(user_id, client_msg_id);
    CREATE INDEX messages_channel ON messages(channel_id, message_id);
    CREATE TABLE attachments (
        message_id INTEGER NOT NULL,
        file_id    INTEGER NOT NULL,
        position   INTEGER NOT NULL,
        PRIMARY KEY (message_id, position)
    );
    CREATE INDEX attachments_file ON attachments(file_id);
    CREATE TABLE files (
        file_id      INTEGER PRIMARY KEY,
        server_id    INTEGER NOT NULL,
        channel_id   INTEGER NOT NULL,
        uploader_id  INTEGER NOT NULL,
        name         TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size         INTEGER NOT NULL,
        sha256       TEXT NOT NULL,
        created_at   INTEGER NOT NULL
    );
    CREATE TABLE invites (
        code       TEXT PRIMARY KEY,
        server_id  INTEGER NOT NULL,
        created_by INTEGER NOT NULL,
        max_uses   INTEGER,
        uses       INTEGER NOT NULL DEFAULT 0,
        expires_at INTEGER,
        created_at INTEGER NOT NULL
    );
    "#,
    // 2: the orphan-blob sweep asks which digests have a `files` row.
    r#"
    CREATE INDEX IF NOT EXISTS files_sha256 ON files(sha256);
    "#,
    // 3: the idempotency index holds only posts that carry a `client_msg_id` (most do
    // not): one B-tree insert less per post.
    r#"
    DROP INDEX messages_client_msg;
    CREATE UNIQUE INDEX messages_client_msg ON messages(user_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
    "#,
];

/// A SQLite connection configured for chimed.
pub struct SqliteDb {
    conn: Connection,
}

fn classify(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation => StoreError::Conflict(e.to_string()),
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::ReadOnly => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        },
        _ => StoreError::Internal(e.to_string()),
    }
}

impl ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl SqliteDb {
    pub fn open(path: &str, timeout: Duration) -> Result<SqliteDb, StoreError> {
        let conn = Connection::open(path).map_err(classify)?;
        // busy_timeout first: switching to WAL can itself be BUSY.
        conn.busy_timeout(timeout).map_err(classify)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(classify)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(classify)?;
        // Any statement journal or sort spill stays in memory, never a temporary file.
        conn.pragma_update(None, "temp_store", "MEMORY").map_err(classify)?;
        // Checkpoint every 32 MiB of WAL instead of 4 MiB: a page rewritten by many
        // batches is copied into the database once, and the database file is fsynced
        // an eighth as often (checkpoints run on the writer, after a commit). The WAL
        // file is cut back to 64 MiB after a checkpoint that leaves it longer.
        conn.pragma_update(None, "wal_autocheckpoint", 8192).map_err(classify)?;
        conn.pragma_update(None, "journal_size_limit", 64 << 20)
            .map_err(classify)?;
        conn.set_prepared_statement_cache_capacity(128);
        Ok(SqliteDb { conn })
    }
}

impl Db for SqliteDb {
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let mut st = self.conn.prepare_cached(sql).map_err(classify)?;
        let n = st
            .execute(rusqlite::params_from_iter(params.iter()))
            .map_err(classify)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        let mut st = self.conn.prepare_cached(sql).map_err(classify)?;
        let cols = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(params.iter())).map_err(classify)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(classify)? {
            let mut r = Vec::with_capacity(cols);
            for i in 0..cols {
                r.push(match row.get_ref(i).map_err(classify)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(v) => Val::Int(v),
                    ValueRef::Real(v) => Val::Int(v as i64),
                    ValueRef::Text(t) | ValueRef::Blob(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                });
            }
            out.push(r);
        }
        Ok(out)
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        // IMMEDIATE takes the write lock now (waiting up to busy_timeout), so a commit
        // never fails half-way because another connection wrote first.
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(classify)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.conn.execute_batch("COMMIT").map_err(classify)
    }

    fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    fn insert_ignore(&self) -> &'static str {
        "INSERT OR IGNORE"
    }

    /// `OR FAIL` keeps no statement journal: a plain (ABORT) multi-row INSERT inside a
    /// transaction first copies every page it touches to a temporary file so it could undo
    /// itself alone, which was 43% of the writer's `pwrite`s. The caller rolls back anyway.
    fn insert_all_or_rollback(&self) -> &'static str {
        "INSERT OR FAIL"
    }
}

/// Applies every migration newer than the database's version, each in its transaction.
pub fn migrate(path: &str, timeout: Duration) -> Result<u32, StoreError> {
    let mut db = SqliteDb::open(path, timeout)?;
    db.conn
        .execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .map_err(classify)?;
    let current = db
        .conn
        .query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(classify)? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        db.begin()?;
        let step = db.conn.execute_batch(sql).and_then(|_| {
            db.conn
                .execute("INSERT INTO schema_version (version) VALUES (?)", [i as i64 + 1])
        });
        match step {
            Ok(_) => db.commit()?,
            Err(e) => {
                db.rollback();
                return Err(classify(e));
            }
        }
    }
    Ok(MIGRATIONS.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path for a new database file in a directory of this test's own.
    fn fresh_db(tag: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("chimed-sqlite-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let _ = std::fs::remove_file(&path);
        let p = path.to_string_lossy().into_owned();
        (dir, p)
    }

    #[test]
    fn migrates_twice_and_maps_conflicts() {
        let (_dir, p) = fresh_db("twice");
        let p = p.as_str();
        let latest = MIGRATIONS.len() as u32;
        assert_eq!(migrate(p, Duration::from_secs(1)).unwrap(), latest);
        assert_eq!(migrate(p, Duration::from_secs(1)).unwrap(), latest);
        let mut db = SqliteDb::open(p, Duration::from_secs(1)).unwrap();
        let ins =
            "INSERT INTO users (user_id, username, username_key, password_hash, created_at) VALUES (?, ?, ?, 'x', 0)";
        db.execute(ins, &[1.into(), "Ann".into(), "ann".into()]).unwrap();
        let err = db.execute(ins, &[2.into(), "ANN".into(), "ann".into()]).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)));
        let row = db
            .query_row("SELECT username FROM users WHERE user_id = ?", &[1.into()])
            .unwrap()
            .unwrap();
        assert_eq!(row, vec![Val::Text("Ann".into())]);
    }

    /// A database made by an older chimed is brought up to date, keeping its rows, and the
    /// idempotency key stays unique where it is set.
    #[test]
    fn upgrades_a_version_1_database() {
        let (dir, p) = fresh_db("v1");
        let p = p.as_str();
        let mut db = SqliteDb::open(p, Duration::from_secs(1)).unwrap();
        db.conn.execute_batch(MIGRATIONS[0]).unwrap();
        db.conn
            .execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1)",
            )
            .unwrap();
        let ins = "INSERT INTO messages (message_id, server_id, channel_id, user_id, content, client_msg_id, delta_id, created_at) \
                   VALUES (?, 1, 1, 7, 'hi', ?, ?, 0)";
        db.execute(ins, &[1.into(), "k".into(), 1.into()]).unwrap();
        db.execute(ins, &[2.into(), Val::Null, 2.into()]).unwrap();
        drop(db);
        assert_eq!(migrate(p, Duration::from_secs(1)).unwrap(), MIGRATIONS.len() as u32);
        let mut db = SqliteDb::open(p, Duration::from_secs(1)).unwrap();
        assert_eq!(db.query("SELECT message_id FROM messages", &[]).unwrap().len(), 2);
        db.execute(ins, &[3.into(), Val::Null, 3.into()]).unwrap();
        let err = db.execute(ins, &[4.into(), "k".into(), 4.into()]).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
