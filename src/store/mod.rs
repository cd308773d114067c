//! Storage: one small driver interface, two backends.
//!
//! The chat rules (`crate::chat::ops`) are written once, as portable SQL over [`Db`]; a
//! backend only has to run statements, map rows to [`Val`]s, and classify its errors. That
//! keeps SQLite and MySQL at parity by construction. Each worker thread owns one `Db`
//! (one connection), so nothing here is shared between threads.

pub mod mysql;
pub mod sqlite;

use std::fmt;

/// A SQL value, as bound to a parameter or read from a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// One result row.
pub type Row = Vec<Val>;

/// Typed column access; a wrong type is an internal error, not a panic.
pub trait RowExt {
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
}

impl RowExt for Row {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        self.opt_int(i)?
            .ok_or_else(|| StoreError::Internal(format!("column {i} is NULL")))
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.get(i) {
            Some(Val::Int(v)) => Ok(Some(*v)),
            Some(Val::Null) => Ok(None),
            Some(Val::Text(t)) => t
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Internal(format!("column {i} not an integer"))),
            None => Err(StoreError::Internal(format!("no column {i}"))),
        }
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.opt_text(i)?
            .ok_or_else(|| StoreError::Internal(format!("column {i} is NULL")))
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.get(i) {
            Some(Val::Text(t)) => Ok(Some(t.clone())),
            Some(Val::Int(v)) => Ok(Some(v.to_string())),
            Some(Val::Null) => Ok(None),
            None => Err(StoreError::Internal(format!("no column {i}"))),
        }
    }
}

/// Storage failures, classified by what the client should be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database is unreachable, locked or too slow; nothing was written.
    Unavailable(String),
    /// A unique constraint refused the write.
    Conflict(String),
    /// Anything else: a bug or a corrupt database.
    Internal(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "storage unavailable: {m}"),
            StoreError::Conflict(m) => write!(f, "constraint violated: {m}"),
            StoreError::Internal(m) => write!(f, "storage error: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// One database connection. Statements use `?` placeholders and SQL that both SQLite and
/// MySQL accept.
pub trait Db: Send {
    /// Runs a statement; returns the number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Val]) -> Result<u64, StoreError>;
    /// Runs a query; returns every row. A query reads only: a backend may run it again
    /// (MySQL does, once, on a connection the server closed since its last use).
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>, StoreError>;
    fn begin(&mut self) -> Result<(), StoreError>;
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Best effort: a failed rollback leaves the connection to be reset by the backend.
    fn rollback(&mut self);
    /// `INSERT` that silently skips rows violating a unique key, in this backend's dialect.
    fn insert_ignore(&self) -> &'static str;
    /// `INSERT` for multi-row inserts whose failure fails the whole transaction (or
    /// savepoint): rows written before the failing one may stay until the rollback.
    fn insert_all_or_rollback(&self) -> &'static str {
        "INSERT"
    }

    /// The first row of a query, if any.
    fn query_row(&mut self, sql: &str, params: &[Val]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

/// Opens a connection for the URL (`sqlite://PATH` or `mysql://USER:PASS@HOST:PORT/DB`).
pub fn open(url: &str, timeout: std::time::Duration) -> Result<Box<dyn Db>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Box::new(sqlite::SqliteDb::open(path, timeout)?));
    }
    if url.starts_with("mysql://") {
        return Ok(Box::new(mysql::MysqlDb::open(url, timeout)?));
    }
    Err(StoreError::Internal(format!(
        "unsupported storage URL {url:?} (expected sqlite://PATH or mysql://USER:PASS@HOST:PORT/DB)"
    )))
}

/// Creates or upgrades the schema. Run once at start, before the loop.
pub fn migrate(url: &str, timeout: std::time::Duration) -> Result<u32, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return sqlite::migrate(path, timeout);
    }
    if url.starts_with("mysql://") {
        return mysql::migrate(url, timeout);
    }
    Err(StoreError::Internal(format!("unsupported storage URL {url:?}")))
}
