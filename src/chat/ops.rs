//! Storage operations: the chat rules as they run on the worker threads.
//!
//! The loop turns a request into an [`Op`] (arguments already validated); a reader runs
//! read ops, the writer runs write ops inside its group-commit transaction. Authorization
//! that depends on stored state (membership, roles) is checked here, in the same
//! transaction as the write it guards. An op returns the response data plus an
//! [`Effect`]: the change the loop must make to its own state once the answer arrives.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::accounts::{self, Session};
use super::delta::Delta;
use crate::protocol::ApiError;
use crate::store::{Db, RowExt, StoreError, Val};

/// Worker-side settings (a copy of the relevant config).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub storage_timeout: Duration,
    pub token_ttl_ms: i64,
    pub partition_size: i64,
    pub max_batch: usize,
}

/// Every storage operation. Read ops run on readers, write ops on the writer.
#[derive(Debug, Clone)]
pub enum Op {
    // accounts
    Register { username: String, password: String },
    Login { username: String, password: String },
    Auth { token: String },
    CreateUser { username: String, password_hash: String },
    CreateToken { user_id: i64, username: String },
    Logout { token_hash: String },
}

impl Op {
    pub fn is_write(&self) -> bool {
        matches!(self, Op::CreateUser { .. } | Op::CreateToken { .. } | Op::Logout { .. })
    }
}

/// What the loop must change in its state when the answer arrives.
#[derive(Debug, Clone)]
pub enum Effect {
    None,
    /// The job failed; nothing changes.
    Failed,
    /// The connection now has this session.
    Session(Session),
    /// This token was revoked: every session holding it ends.
    Logout {
        token_hash: String,
    },
}

/// A read op's outcome: answered, or handed on to the writer.
pub enum Step {
    Done(Map<String, Value>, Effect),
    Write(Op),
}

/// An op's failure: a refusal for the client, or a storage failure to classify.
#[derive(Debug)]
pub enum OpError {
    Api(ApiError),
    Store(StoreError),
}

impl From<ApiError> for OpError {
    fn from(e: ApiError) -> OpError {
        OpError::Api(e)
    }
}
impl From<StoreError> for OpError {
    fn from(e: StoreError) -> OpError {
        OpError::Store(e)
    }
}

impl OpError {
    pub fn into_api(self, store: impl FnOnce(StoreError) -> ApiError) -> ApiError {
        match self {
            OpError::Api(e) => e,
            OpError::Store(e) => store(e),
        }
    }
}

pub type OpResult<T> = Result<T, OpError>;

/// State the writer keeps between batches: the id generator and, per server, the last
/// delta id handed out and the last one committed. All of it is a cache of what the
/// database holds and is dropped (and re-read) whenever a transaction fails.
#[derive(Debug, Default)]
pub struct WriterState {
    last_id: Option<i64>,
    last_assigned: HashMap<i64, i64>,
    last_committed: HashMap<i64, i64>,
}

impl WriterState {
    /// After a failed transaction: forget everything cached.
    pub fn reset(&mut self) {
        self.last_id = None;
        self.last_assigned.clear();
        self.last_committed.clear();
    }

    /// A new row id: time-ordered and above every id already stored, so ids never repeat
    /// across restarts even if the clock steps back.
    pub fn next_id(&mut self, db: &mut dyn Db) -> OpResult<i64> {
        let last = match self.last_id {
            Some(v) => v,
            None => {
                let row = db.query_row(
                    "SELECT MAX(m) FROM (SELECT MAX(user_id) AS m FROM users UNION ALL SELECT MAX(server_id) FROM servers \
                     UNION ALL SELECT MAX(channel_id) FROM channels UNION ALL SELECT MAX(message_id) FROM messages \
                     UNION ALL SELECT MAX(file_id) FROM files) AS t",
                    &[],
                )?;
                row.and_then(|r| r.opt_int(0).ok().flatten()).unwrap_or(0)
            }
        };
        let id = (last + 1).max(crate::time::now_ms() << 10);
        self.last_id = Some(id);
        Ok(id)
    }

    /// The next delta id of a server.
    pub fn next_delta_id(&mut self, db: &mut dyn Db, server_id: i64) -> OpResult<i64> {
        let last = match self.last_assigned.get(&server_id) {
            Some(v) => *v,
            None => {
                let row = db.query_row(
                    "SELECT MAX(delta_id) FROM deltas WHERE server_id = ?",
                    &[server_id.into()],
                )?;
                let v = row.and_then(|r| r.opt_int(0).ok().flatten()).unwrap_or(0);
                self.last_committed.entry(server_id).or_insert(v);
                v
            }
        };
        self.last_assigned.insert(server_id, last + 1);
        Ok(last + 1)
    }

    /// Records a committed delta and returns the server's previous committed delta id.
    pub fn chain(&mut self, d: &Delta) -> i64 {
        let prev = self.last_committed.insert(d.server_id, d.delta_id);
        prev.unwrap_or(-1)
    }
}

pub fn run_read(db: &mut dyn Db, s: &Settings, op: Op) -> OpResult<Step> {
    match op {
        Op::Register { username, password } => accounts::register(db, username, password),
        Op::Login { username, password } => accounts::login(db, username, password),
        Op::Auth { token } => accounts::auth(db, &token),
        other => {
            let _ = s;
            Err(ApiError::internal(format!("not a read op: {other:?}")).into())
        }
    }
}

pub type Reply = (Map<String, Value>, Effect);

pub fn run_write(
    db: &mut dyn Db,
    s: &Settings,
    w: &mut WriterState,
    op: Op,
    deltas: &mut Vec<Delta>,
) -> OpResult<Reply> {
    let _ = &deltas;
    match op {
        Op::CreateUser {
            username,
            password_hash,
        } => accounts::create_user(db, s, w, username, password_hash),
        Op::CreateToken { user_id, username } => accounts::create_token(db, s, user_id, username),
        Op::Logout { token_hash } => accounts::logout(db, token_hash),
        other => Err(ApiError::internal(format!("not a write op: {other:?}")).into()),
    }
}

/// Builds a response data object from pairs.
pub fn obj<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Ids travel as strings on the wire.
pub fn sid(id: i64) -> Value {
    Value::String(id.to_string())
}

/// Parses a wire id; an id that is not ours simply matches nothing.
pub fn parse_id(s: &str) -> Option<i64> {
    s.parse::<i64>().ok().filter(|v| *v > 0)
}

pub fn val(v: impl Into<Val>) -> Val {
    v.into()
}
