//! The MySQL/MariaDB backend: one `mysql::Conn` per worker (no pool), prepared statements
//! from the connection's statement cache.
//!
//! - Timeouts: TCP connect, read and write timeouts are the storage timeout, and so is
//!   `innodb_lock_wait_timeout` (rounded up to whole seconds), so a stopped or wedged
//!   database turns into `unavailable` in bounded time instead of a hang.
//! - Dialect: the session runs with `NO_BACKSLASH_ESCAPES` (so `ESCAPE '\'` means what it
//!   means in SQLite), `ANSI_QUOTES`, `PIPES_AS_CONCAT` and strict mode, `utf8mb4` with
//!   binary collation (byte-wise comparisons, as in SQLite), and `CLIENT_FOUND_ROWS` (an
//!   `UPDATE` counts the rows it matched, as SQLite does, not only those it changed).
//! - Broken connections: after an I/O or protocol error the connection is dropped and the
//!   failing call returns `Unavailable`; the next call reconnects. If the connection was lost
//!   (or the server aborted the transaction) inside a transaction, every call fails with
//!   `Unavailable` until `rollback`, so the rest of a batch can never run, half in autocommit,
//!   on a fresh connection. A connection idle for a while is pinged before use, so one that
//!   the server closed in the meantime (`wait_timeout`, restart) is replaced transparently.
//! - Stale connections: a read or a `START TRANSACTION` outside a transaction that finds its
//!   (already open) connection closed by the server (a restart since its last use) runs once
//!   more on a new connection, so a restart costs clients nothing. Nothing else is retried:
//!   not a timeout (a stalled server would only be waited on twice), not a statement inside
//!   a transaction, and not a write in autocommit or a `COMMIT`, whose reply may have been
//!   lost after the server applied it (a retry could apply it twice).
//! - Schema: InnoDB, `utf8mb4_bin`, the same tables, columns and indexes as the SQLite
//!   schema. The database named in the URL is created if it does not exist (when the account
//!   may create it); its tables are created by [`migrate`].

use std::time::{Duration, Instant};

use mysql::consts::{CapabilityFlags, ColumnType};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, Params, Value};

use super::{Db, Row, StoreError, Val};

/// The schema, one migration per entry; entry `i` brings the database to version `i + 1`.
/// MySQL commits DDL implicitly, so every statement is idempotent (`IF NOT EXISTS`, indexes
/// inside `CREATE TABLE`, or a `CREATE INDEX` whose duplicate is ignored): a migration
/// interrupted half-way is simply run again.
const MIGRATIONS: &[&[&str]] = &[
    // 1: accounts, communities, channels, the delta log, messages, invites, files.
    &[
        "CREATE TABLE IF NOT EXISTS users (
            user_id       BIGINT NOT NULL PRIMARY KEY,
            username      VARCHAR(128) NOT NULL,
            username_key  VARCHAR(128) NOT NULL,
            password_hash TEXT NOT NULL,
            created_at    BIGINT NOT NULL,
            UNIQUE KEY users_username_key (username_key)
        )",
        "CREATE TABLE IF NOT EXISTS tokens (
            token_hash CHAR(64) NOT NULL PRIMARY KEY,
            user_id    BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            KEY tokens_user (user_id)
        )",
        "CREATE TABLE IF NOT EXISTS servers (
            server_id   BIGINT NOT NULL PRIMARY KEY,
            name        TEXT NOT NULL,
            description TEXT NOT NULL,
            kind        VARCHAR(32) NOT NULL,
            is_public   BIGINT NOT NULL,
            owner_id    BIGINT NOT NULL,
            dm_key      VARCHAR(64) NULL,
            deleted     BIGINT NOT NULL DEFAULT 0,
            created_at  BIGINT NOT NULL,
            UNIQUE KEY servers_dm_key (dm_key),
            KEY servers_public (is_public, deleted, server_id)
        )",
        "CREATE TABLE IF NOT EXISTS server_users (
            server_id BIGINT NOT NULL,
            user_id   BIGINT NOT NULL,
            role      VARCHAR(32) NOT NULL,
            joined_at BIGINT NOT NULL,
            PRIMARY KEY (server_id, user_id),
            KEY server_users_user (user_id)
        )",
        "CREATE TABLE IF NOT EXISTS channels (
            channel_id BIGINT NOT NULL PRIMARY KEY,
            server_id  BIGINT NOT NULL,
            name       TEXT NOT NULL,
            type       VARCHAR(32) NOT NULL,
            deleted    BIGINT NOT NULL DEFAULT 0,
            created_at BIGINT NOT NULL,
            KEY channels_server (server_id)
        )",
        "CREATE TABLE IF NOT EXISTS deltas (
            server_id    BIGINT NOT NULL,
            delta_id     BIGINT NOT NULL,
            partition_no BIGINT NOT NULL,
            type         VARCHAR(32) NOT NULL,
            channel_id   BIGINT NULL,
            message_id   BIGINT NULL,
            user_id      BIGINT NOT NULL,
            content      MEDIUMTEXT NULL,
            attachments  MEDIUMTEXT NULL,
            created_at   BIGINT NOT NULL,
            PRIMARY KEY (server_id, delta_id),
            KEY deltas_channel (channel_id, delta_id)
        )",
        "CREATE TABLE IF NOT EXISTS delta_partitions (
            server_id      BIGINT NOT NULL,
            partition_no   BIGINT NOT NULL,
            first_delta_id BIGINT NOT NULL,
            created_at     BIGINT NOT NULL,
            PRIMARY KEY (server_id, partition_no)
        )",
        "CREATE TABLE IF NOT EXISTS messages (
            message_id    BIGINT NOT NULL PRIMARY KEY,
            server_id     BIGINT NOT NULL,
            channel_id    BIGINT NOT NULL,
            user_id       BIGINT NOT NULL,
            content       MEDIUMTEXT NOT NULL,
            attachments   MEDIUMTEXT NULL,
            client_msg_id VARCHAR(64) NULL,
            delta_id      BIGINT NOT NULL,
            edited        BIGINT NOT NULL DEFAULT 0,
            deleted       BIGINT NOT NULL DEFAULT 0,
            created_at    BIGINT NOT NULL,
            UNIQUE KEY messages_client_msg (user_id, client_msg_id),
            KEY messages_channel (channel_id, message_id)
        )",
        "CREATE TABLE IF NOT EXISTS attachments (
            message_id BIGINT NOT NULL,
            file_id    BIGINT NOT NULL,
            position   BIGINT NOT NULL,
            PRIMARY KEY (message_id, position),
            KEY attachments_file (file_id)
        )",
        "CREATE TABLE IF NOT EXISTS files (
            file_id      BIGINT NOT NULL PRIMARY KEY,
            server_id    BIGINT NOT NULL,
            channel_id   BIGINT NOT NULL,
            uploader_id  BIGINT NOT NULL,
            name         TEXT NOT NULL,
            content_type TEXT NOT NULL,
            size         BIGINT NOT NULL,
            sha256       VARCHAR(128) NOT NULL,
            created_at   BIGINT NOT NULL
        )",
        "CREATE TABLE IF NOT EXISTS invites (
            code       VARCHAR(64) NOT NULL PRIMARY KEY,
            server_id  BIGINT NOT NULL,
            created_by BIGINT NOT NULL,
            max_uses   BIGINT NULL,
            uses       BIGINT NOT NULL DEFAULT 0,
            expires_at BIGINT NULL,
            created_at BIGINT NOT NULL
        )",
    ],
    // 2: the orphan-blob sweep asks which digests have a `files` row. (MySQL has no
    // `CREATE INDEX IF NOT EXISTS`: an existing index of this name counts as done.)
    &["CREATE INDEX files_sha256 ON files (sha256)"],
];

/// Appended to every `CREATE TABLE`.
const TABLE_OPTIONS: &str = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Session SQL mode: strict, and as close to SQLite's reading of the shared SQL as MySQL goes.
const SQL_MODE: &str = "STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES,ANSI_QUOTES,PIPES_AS_CONCAT,\
                        NO_ENGINE_SUBSTITUTION,ERROR_FOR_DIVISION_BY_ZERO";

/// Prepared statements kept per connection (the domain SQL is a few dozen statements).
const STMT_CACHE: usize = 128;

/// A connection idle longer than this is pinged before use.
const PING_AFTER_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tx {
    /// Autocommit.
    Idle,
    /// Inside `begin` .. `commit`/`rollback`.
    Active,
    /// The transaction is gone (connection lost, or aborted by the server): every call
    /// fails until `rollback`.
    Broken,
}

/// What an error did to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Only the statement failed.
    Statement,
    /// The server rolled back the whole transaction; the connection is fine.
    TxAborted,
    /// The connection is unusable.
    ConnLost,
}

/// One MySQL connection configured for chimed.
pub struct MysqlDb {
    opts: Opts,
    conn: Option<Conn>,
    tx: Tx,
    last_used: Instant,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn classify(e: &mysql::Error) -> (StoreError, Effect) {
    use mysql::DriverError as D;
    let msg = e.to_string();
    match e {
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => (unavailable(msg), Effect::ConnLost),
        mysql::Error::DriverError(d) => match d {
            D::MismatchedStmtParams(..) | D::Params(_) | D::MixedParams => {
                (StoreError::Internal(msg), Effect::Statement)
            }
            _ => (unavailable(msg), Effect::ConnLost),
        },
        mysql::Error::MySqlError(m) => match m.code {
            // Duplicate key (also as reported by some servers with the key name).
            1062 | 1169 | 1586 => (StoreError::Conflict(msg), Effect::Statement),
            // Too many connections, server shutdown, gone away / lost, connection killed.
            1040 | 1053 | 1927 | 2006 | 2013 => (unavailable(msg), Effect::ConnLost),
            // Deadlock (the transaction is rolled back), lock wait timeout (counted as
            // aborting it too: `innodb_rollback_on_timeout` may be on), error in
            // COMMIT/ROLLBACK.
            1205 | 1213 | 1180 | 1181 => (unavailable(msg), Effect::TxAborted),
            // Interrupted, statement timeouts, read-only server, disk or table full.
            1317 | 1969 | 3024 | 1290 | 1836 | 1021 | 1114 => (unavailable(msg), Effect::Statement),
            _ => (StoreError::Internal(msg), Effect::Statement),
        },
        _ => (StoreError::Internal(msg), Effect::Statement),
    }
}

/// The I/O error kind behind a driver error, if it is one.
fn io_kind(e: &mysql::Error) -> Option<std::io::ErrorKind> {
    match e {
        mysql::Error::IoError(io) => Some(io.kind()),
        // The codec's own error type is not exported; its source is the I/O error.
        mysql::Error::CodecError(c) => std::error::Error::source(c)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .map(std::io::Error::kind),
        _ => None,
    }
}

/// A read or write that waited its timeout: the server is stalled, not gone.
fn timed_out(e: &mysql::Error) -> bool {
    matches!(
        io_kind(e),
        Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
    )
}

/// The server closed the connection (restart, `wait_timeout`, KILL): a new one may work at
/// once, unlike after a timeout.
fn closed(e: &mysql::Error) -> bool {
    classify(e).1 == Effect::ConnLost && !timed_out(e)
}

fn to_value(v: &Val) -> Value {
    match v {
        Val::Null => Value::NULL,
        Val::Int(i) => Value::Int(*i),
        Val::Text(s) => Value::Bytes(s.as_bytes().to_vec()),
    }
}

fn params(ps: &[Val]) -> Params {
    if ps.is_empty() {
        Params::Empty
    } else {
        Params::Positional(ps.iter().map(to_value).collect())
    }
}

/// Whether a column of this type holds numbers (which the text protocol, or DECIMAL
/// results such as `SUM`, deliver as bytes).
fn numeric(t: ColumnType) -> bool {
    matches!(
        t,
        ColumnType::MYSQL_TYPE_TINY
            | ColumnType::MYSQL_TYPE_SHORT
            | ColumnType::MYSQL_TYPE_LONG
            | ColumnType::MYSQL_TYPE_INT24
            | ColumnType::MYSQL_TYPE_LONGLONG
            | ColumnType::MYSQL_TYPE_YEAR
            | ColumnType::MYSQL_TYPE_DECIMAL
            | ColumnType::MYSQL_TYPE_NEWDECIMAL
            | ColumnType::MYSQL_TYPE_FLOAT
            | ColumnType::MYSQL_TYPE_DOUBLE
    )
}

fn from_value(v: Value, t: ColumnType) -> Val {
    match v {
        Value::NULL => Val::Null,
        Value::Int(i) => Val::Int(i),
        Value::UInt(u) => i64::try_from(u).map_or_else(|_| Val::Text(u.to_string()), Val::Int),
        Value::Float(f) => Val::Int(f as i64),
        Value::Double(f) => Val::Int(f as i64),
        Value::Bytes(b) => {
            let s = String::from_utf8_lossy(&b);
            if numeric(t) {
                if let Ok(i) = s.trim().parse::<i64>() {
                    return Val::Int(i);
                }
                // "12.00" from a DECIMAL, "3e0" from a DOUBLE: integral values become ints.
                if let Ok(f) = s.trim().parse::<f64>() {
                    if f.fract() == 0.0 && f.abs() < 9.0e18 {
                        return Val::Int(f as i64);
                    }
                }
            }
            Val::Text(s.into_owned())
        }
        Value::Date(y, mo, d, h, mi, s, us) => Val::Text(if us == 0 {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
        } else {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
        }),
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = u64::from(days) * 24 + u64::from(h);
            let sign = if neg { "-" } else { "" };
            Val::Text(if us == 0 {
                format!("{sign}{hours:02}:{mi:02}:{s:02}")
            } else {
                format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}")
            })
        }
    }
}

/// Connection options for a `mysql://` URL: the URL's own settings, plus chimed's.
fn build_opts(url: &str, timeout: Duration) -> Result<Opts, StoreError> {
    let base = Opts::from_url(url).map_err(|e| StoreError::Internal(format!("bad MySQL URL: {e}")))?;
    // A zero timeout would mean "none" to some calls and be refused by others.
    let t = timeout.max(Duration::from_millis(1));
    let lock_wait = t.as_secs() + u64::from(t.subsec_nanos() > 0);
    let mut b = OptsBuilder::from_opts(base)
        .tcp_connect_timeout(Some(t))
        .read_timeout(Some(t))
        .write_timeout(Some(t))
        .stmt_cache_size(STMT_CACHE)
        .additional_capabilities(CapabilityFlags::CLIENT_FOUND_ROWS)
        .init(vec![
            "SET NAMES utf8mb4 COLLATE utf8mb4_bin".to_string(),
            format!("SET SESSION sql_mode = '{SQL_MODE}'"),
            format!("SET SESSION innodb_lock_wait_timeout = {}", lock_wait.max(1)),
        ]);
    // The crate would switch a loopback TCP address to the server's Unix socket; stay on
    // the address given (a proxy in front of the database stays in the path), unless the
    // URL asks for it.
    if !url.contains("prefer_socket=") {
        b = b.prefer_socket(false);
    }
    Ok(b.into())
}

/// Closes a broken connection off the caller's thread: `Conn`'s drop writes a close
/// command per cached statement and a quit, each of which may wait the write timeout when
/// the socket's send buffer is full (a stalled server), so the failing call returns now.
fn close_in_background(conn: Conn) {
    let _ = std::thread::Builder::new()
        .name("chimed-mysql-close".into())
        .spawn(move || drop(conn));
}

fn connect(opts: &Opts) -> Result<Conn, StoreError> {
    Conn::new(opts.clone()).map_err(|e| classify(&e).0)
}

fn rows_of(conn: &mut Conn, sql: &str, ps: &[Val]) -> Result<Vec<Row>, mysql::Error> {
    let stmt = conn.prep(sql)?;
    let result = conn.exec_iter(&stmt, params(ps))?;
    let mut out = Vec::new();
    for row in result {
        let row = row?;
        let types: Vec<ColumnType> = row.columns_ref().iter().map(|c| c.column_type()).collect();
        out.push(
            row.unwrap()
                .into_iter()
                .zip(types)
                .map(|(v, t)| from_value(v, t))
                .collect(),
        );
    }
    Ok(out)
}

fn run(conn: &mut Conn, sql: &str, ps: &[Val]) -> Result<u64, mysql::Error> {
    if ps.is_empty() {
        // Transaction control, savepoints and DDL: the text protocol, one round trip.
        conn.query_drop(sql)?;
    } else {
        let stmt = conn.prep(sql)?;
        conn.exec_drop(&stmt, params(ps))?;
    }
    Ok(conn.affected_rows())
}

impl MysqlDb {
    /// Connects now: an unreachable database is an error here, not at the first query.
    pub fn open(url: &str, timeout: Duration) -> Result<MysqlDb, StoreError> {
        let opts = build_opts(url, timeout)?;
        let conn = connect(&opts)?;
        Ok(MysqlDb {
            opts,
            conn: Some(conn),
            tx: Tx::Idle,
            last_used: Instant::now(),
        })
    }

    /// The live connection, reconnecting if the last one broke outside a transaction, and
    /// whether it was open before this call (so it may have gone stale since).
    fn conn(&mut self) -> Result<(&mut Conn, bool), StoreError> {
        if self.tx == Tx::Broken {
            return Err(StoreError::Unavailable(
                "the database connection was lost during this transaction".into(),
            ));
        }
        if self.tx == Tx::Idle && self.last_used.elapsed() > PING_AFTER_IDLE {
            if let Some(c) = self.conn.as_mut() {
                if let Err(e) = c.ping() {
                    self.discard();
                    // A ping that timed out means the server is stalled: do not wait on a
                    // reconnect as well. One that failed at once (closed) is just stale.
                    if timed_out(&e) {
                        return Err(unavailable(e));
                    }
                }
            }
        }
        self.last_used = Instant::now();
        let (conn, reused) = match self.conn.take() {
            Some(c) => (c, true),
            None => (connect(&self.opts)?, false),
        };
        Ok((self.conn.insert(conn), reused))
    }

    fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            close_in_background(conn);
        }
    }

    /// Records what an error did to the connection and the transaction.
    fn fail(&mut self, e: mysql::Error) -> StoreError {
        let (err, effect) = classify(&e);
        if effect == Effect::ConnLost {
            self.discard();
        }
        if effect != Effect::Statement && self.tx == Tx::Active {
            self.tx = Tx::Broken;
        }
        err
    }

    /// Runs `f` on the connection. `repeatable`: the call changes nothing if it runs twice
    /// (a read, START TRANSACTION); then, outside a transaction, a call that found its
    /// already open connection closed by the server runs once more on a new one.
    fn call<T>(
        &mut self,
        repeatable: bool,
        mut f: impl FnMut(&mut Conn) -> Result<T, mysql::Error>,
    ) -> Result<T, StoreError> {
        let idle = self.tx == Tx::Idle;
        let (conn, reused) = self.conn()?;
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) if repeatable && idle && reused && closed(&e) => {
                let first = self.fail(e);
                log::info!("MySQL connection was closed by the server ({first}); running the call again on a new one");
                let r = f(self.conn()?.0);
                r.map_err(|e| self.fail(e))
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    fn exec(&mut self, sql: &str, ps: &[Val]) -> Result<u64, StoreError> {
        self.call(false, |c| run(c, sql, ps))
    }
}

impl Db for MysqlDb {
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        self.exec(sql, params)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError> {
        self.call(true, |c| rows_of(c, sql, params))
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        if self.tx != Tx::Idle {
            self.rollback();
        }
        self.call(true, |c| run(c, "START TRANSACTION", &[]))?;
        self.tx = Tx::Active;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.exec("COMMIT", &[])?;
        self.tx = Tx::Idle;
        Ok(())
    }

    fn rollback(&mut self) {
        if self.tx != Tx::Idle {
            if let Some(c) = self.conn.as_mut() {
                if c.query_drop("ROLLBACK").is_err() {
                    self.discard();
                }
            }
        }
        self.tx = Tx::Idle;
    }

    fn insert_ignore(&self) -> &'static str {
        "INSERT IGNORE"
    }
}

/// Quotes an identifier with backticks.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Connects to the URL's database, creating the database first if the server says it does
/// not exist (and the account may create it).
fn open_or_create(url: &str, timeout: Duration) -> Result<MysqlDb, StoreError> {
    let opts = build_opts(url, timeout)?;
    match Conn::new(opts.clone()) {
        Ok(conn) => Ok(MysqlDb {
            opts,
            conn: Some(conn),
            tx: Tx::Idle,
            last_used: Instant::now(),
        }),
        Err(mysql::Error::MySqlError(m)) if m.code == 1049 => {
            let name = opts.get_db_name().unwrap_or_default().to_string();
            let server: Opts = OptsBuilder::from_opts(opts.clone()).db_name(None::<String>).into();
            let mut c = connect(&server)?;
            c.query_drop(format!(
                "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                ident(&name)
            ))
            .map_err(|e| classify(&e).0)?;
            log::info!("created MySQL database {name:?}");
            MysqlDb::open(url, timeout)
        }
        Err(e) => Err(classify(&e).0),
    }
}

/// Applies every migration newer than the database's version. Two processes migrating at
/// once take turns (a named lock held for the duration).
pub fn migrate(url: &str, timeout: Duration) -> Result<u32, StoreError> {
    let mut db = open_or_create(url, timeout)?;
    if db.opts.get_db_name().unwrap_or_default().is_empty() {
        return Err(StoreError::Internal(
            "the MySQL URL names no database (mysql://USER:PASS@HOST:PORT/DB)".into(),
        ));
    }
    let lock: String = format!("chimed-migrate:{}", db.opts.get_db_name().unwrap_or_default())
        .chars()
        .take(64)
        .collect();
    let got = db.query(
        "SELECT GET_LOCK(?, ?)",
        &[lock.as_str().into(), (timeout.as_secs().max(1) as i64).into()],
    )?;
    if got.first().and_then(|r| r.first()) != Some(&Val::Int(1)) {
        return Err(StoreError::Unavailable(
            "another process is migrating the database".into(),
        ));
    }
    let result = apply_migrations(&mut db);
    let _ = db.query("SELECT RELEASE_LOCK(?)", &[lock.as_str().into()]);
    result
}

/// Runs one migration statement; a `CREATE INDEX` of an index that exists (a migration
/// run again after an interruption) is done already.
fn ddl(db: &mut MysqlDb, sql: &str) -> Result<(), StoreError> {
    let r = run(db.conn()?.0, sql, &[]);
    match r {
        Ok(_) => Ok(()),
        // ER_DUP_KEYNAME.
        Err(mysql::Error::MySqlError(m)) if m.code == 1061 && sql.starts_with("CREATE INDEX") => Ok(()),
        Err(e) => Err(db.fail(e)),
    }
}

fn apply_migrations(db: &mut MysqlDb) -> Result<u32, StoreError> {
    db.execute(
        &format!("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL){TABLE_OPTIONS}"),
        &[],
    )?;
    let current = db
        .query("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])?
        .first()
        .and_then(|r| match r.first() {
            Some(Val::Int(v)) => Some(*v),
            _ => None,
        })
        .unwrap_or(0)
        .max(0) as usize;
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(current) {
        for sql in statements.iter() {
            let sql = if sql.trim_start().starts_with("CREATE TABLE") {
                format!("{sql}{TABLE_OPTIONS}")
            } else {
                sql.to_string()
            };
            ddl(db, &sql)?;
        }
        db.execute(
            "INSERT INTO schema_version (version) VALUES (?)",
            &[(i as i64 + 1).into()],
        )?;
    }
    Ok(MIGRATIONS.len() as u32)
}
