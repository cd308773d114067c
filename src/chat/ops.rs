//! Storage operations: the chat rules as they run on the worker threads.
//!
//! The loop turns a request into an [`Op`] (arguments already validated); a reader runs
//! read ops, the writer runs write ops inside its group-commit transaction. Authorization
//! that depends on stored state (membership, roles) is checked here, in the same
//! transaction as the write it guards. An op returns the response data plus an
//! [`Effect`]: the change the loop must make to its own state once the answer arrives.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

use super::accounts::{self, Session};
use super::delta::Delta;
use super::log::{self, Page};
use super::roles::{self, Role};
use super::{messages, servers};
use crate::files::{self, Download, Upload};
use crate::protocol::ApiError;
use crate::store::{Db, RowExt, StoreError, Val};

/// Worker-side settings (a copy of the relevant config).
#[derive(Debug, Clone)]
pub struct Settings {
    pub storage_timeout: Duration,
    pub token_ttl_ms: i64,
    pub partition_size: i64,
    pub max_batch: usize,
    /// The content-addressed file store (`crate::files`).
    pub files_dir: PathBuf,
}

/// Every storage operation. Read ops run on readers, write ops on the writer. `user` is
/// always the caller's user id, from the connection's session.
///
/// Not `Clone`: the file ops own an open file ([`Upload`], [`Download`]) that travels
/// loop -> worker -> loop, one hop at a time. An op that fails or is dropped consumes its
/// upload (the temp file goes with it); a download just closes.
#[derive(Debug)]
pub enum Op {
    /// `GET /healthz`: one round trip to storage.
    Health,
    // accounts
    Register {
        username: String,
        password: String,
    },
    Login {
        username: String,
        password: String,
    },
    Auth {
        token: String,
    },
    CreateUser {
        username: String,
        password_hash: String,
    },
    CreateToken {
        user_id: i64,
        username: String,
    },
    Logout {
        token_hash: String,
    },
    // servers, members, channels, DMs
    CreateServer {
        user: i64,
        name: String,
        description: String,
        is_public: bool,
    },
    ListServers {
        user: i64,
    },
    DiscoverServers {
        query: String,
        after: i64,
        limit: usize,
    },
    JoinServer {
        user: i64,
        server_id: Option<i64>,
        invite_code: Option<String>,
    },
    CreateInvite {
        user: i64,
        server_id: i64,
        max_uses: Option<i64>,
        expires_in_s: Option<i64>,
    },
    LeaveServer {
        user: i64,
        server_id: i64,
    },
    ListMembers {
        user: i64,
        server_id: i64,
        after: i64,
        limit: usize,
    },
    SetRole {
        user: i64,
        server_id: i64,
        target: i64,
        role: Role,
    },
    Kick {
        user: i64,
        server_id: i64,
        target: i64,
    },
    DeleteServer {
        user: i64,
        server_id: i64,
    },
    CreateChannel {
        user: i64,
        server_id: i64,
        name: String,
        kind: String,
    },
    ListChannels {
        user: i64,
        server_id: i64,
    },
    DeleteChannel {
        user: i64,
        channel_id: i64,
    },
    OpenDm {
        user: i64,
        others: Vec<i64>,
    },
    // messages
    PostMessage {
        user: i64,
        channel_id: i64,
        content: String,
        attachments: Vec<i64>,
        client_msg_id: Option<String>,
    },
    EditMessage {
        user: i64,
        message_id: i64,
        content: String,
    },
    DeleteMessage {
        user: i64,
        message_id: i64,
    },
    GetMessages {
        user: i64,
        channel_id: i64,
        before: Option<i64>,
        limit: usize,
    },
    // the log
    Subscribe {
        user: i64,
        server_id: i64,
        after: Option<i64>,
        page: usize,
    },
    CatchUp {
        server_id: i64,
        after: i64,
        page: usize,
    },
    Sync {
        user: i64,
        server_id: i64,
        after: i64,
        limit: usize,
    },
    Restore {
        user: i64,
        channel_id: i64,
        before: Option<i64>,
        limit: usize,
    },
    // presence and calls: membership checks before the loop pushes
    Typing {
        user: i64,
        channel_id: i64,
    },
    Voice {
        user: i64,
        channel_id: i64,
        join: bool,
    },
    CallSignal {
        user: i64,
        to_user: i64,
        call_id: String,
        payload: Value,
    },
    // files (SPEC §6): every step of an upload or download is one read job
    /// Checks the caller may post in the channel and opens a temp file:
    /// `Effect::Upload`, data `{}`.
    UploadBegin {
        user: i64,
        channel_id: i64,
        name: String,
        content_type: String,
    },
    /// Appends and hashes a chunk: `Effect::Upload`, or `too_large` past
    /// [`files::MAX_UPLOAD_BYTES`].
    UploadWrite {
        upload: Box<Upload>,
        bytes: Vec<u8>,
    },
    /// Stores the blob durably and hands on to the writer ([`Op::RecordFile`]); data
    /// `{file_id, size, sha256, name, content_type, download_url}`.
    UploadFinish {
        upload: Box<Upload>,
    },
    /// Removes the temp file; data `{}`.
    UploadAbort {
        upload: Box<Upload>,
    },
    /// The write half of an upload: inserts the `files` row (made by `UploadFinish`).
    RecordFile {
        user: i64,
        server_id: i64,
        channel_id: i64,
        name: String,
        content_type: String,
        size: i64,
        sha256: String,
    },
    /// Member check and open blob: `Effect::Download`, data
    /// `{file_id, size, name, content_type, sha256}`.
    DownloadOpen {
        user: i64,
        file_id: i64,
    },
    /// Up to `len` bytes at `offset` (fewer only at the end): `Effect::FileChunk`.
    FileRead {
        download: Box<Download>,
        offset: u64,
        len: usize,
    },
    // backup (SPEC §5)
    /// Member check and starting point: `Effect::Backup`, data
    /// `{server_id, from_partition, server_delta_id}`.
    BackupBegin {
        user: i64,
        server_id: i64,
        from_partition: Option<i64>,
    },
    /// The next NDJSON page after delta `after`: `Effect::BackupPage`.
    BackupPage {
        server_id: i64,
        after: i64,
        limit: usize,
    },
}

impl Op {
    /// Runs without a savepoint and writes its rows at the end of the batch (posts).
    /// (A post with attachments writes attachment rows as it runs: it gets a savepoint.)
    pub fn is_deferred(&self) -> bool {
        matches!(self, Op::PostMessage { attachments, .. } if attachments.is_empty())
    }

    /// Changes who belongs where: the writer's membership caches are dropped after it.
    fn changes_membership(&self) -> bool {
        matches!(
            self,
            Op::JoinServer { .. }
                | Op::LeaveServer { .. }
                | Op::SetRole { .. }
                | Op::Kick { .. }
                | Op::DeleteServer { .. }
                | Op::CreateChannel { .. }
                | Op::DeleteChannel { .. }
                | Op::OpenDm { .. }
                | Op::CreateServer { .. }
        )
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::CreateUser { .. }
                | Op::CreateToken { .. }
                | Op::Logout { .. }
                | Op::CreateServer { .. }
                | Op::JoinServer { .. }
                | Op::CreateInvite { .. }
                | Op::LeaveServer { .. }
                | Op::SetRole { .. }
                | Op::Kick { .. }
                | Op::DeleteServer { .. }
                | Op::CreateChannel { .. }
                | Op::DeleteChannel { .. }
                | Op::OpenDm { .. }
                | Op::PostMessage { .. }
                | Op::EditMessage { .. }
                | Op::DeleteMessage { .. }
                | Op::RecordFile { .. }
        )
    }
}

/// What the loop must change in its state when the answer arrives.
#[derive(Debug)]
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
    /// A SUBSCRIBE was authorized: start the subscription from this page.
    Subscribed(Page),
    /// The next catch-up page of a subscription.
    CatchUp(Page),
    /// A catch-up read failed: the subscription ends with a SYNC notice.
    CatchUpFailed {
        server_id: i64,
    },
    /// Push `TYPING` to the server's subscribers.
    Typing {
        server_id: i64,
        channel_id: i64,
        user_id: i64,
    },
    /// Join or leave a voice channel, then push `VOICE_STATE`.
    Voice {
        server_id: i64,
        channel_id: i64,
        user_id: i64,
        join: bool,
    },
    /// Relay a `CALL_SIGNAL` to every connection of `to_user`.
    Signal {
        to_user: i64,
        frame: std::sync::Arc<[u8]>,
    },
    /// The upload goes on: send its next chunk with `Op::UploadWrite`, or finish or
    /// abort it. Dropping it removes the temp file.
    Upload(Box<Upload>),
    /// The blob is open: stream it with `Op::FileRead`.
    Download(Box<Download>),
    /// The next bytes of a download; fewer than asked only at the end of the file.
    FileChunk {
        download: Box<Download>,
        bytes: Vec<u8>,
    },
    /// A backup was authorized: stream it with `Op::BackupPage` from `after`.
    Backup {
        server_id: i64,
        after: i64,
    },
    /// NDJSON lines of a backup: deltas up to `last` (`count` of them, header lines not
    /// counted); `done` when no delta followed `last` at the time of the read.
    BackupPage {
        bytes: Vec<u8>,
        last: i64,
        count: usize,
        done: bool,
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

/// State the writer keeps between batches: the id generator, per server the last delta
/// id handed out and the partition last recorded, caches of live channels and
/// memberships (the writer is the only writer, so it keeps them true by dropping them
/// whenever an op changes membership), and the rows of posts waiting for the batch's
/// multi-row INSERT. All of it is dropped whenever a transaction fails; what an op cached
/// is dropped when it is rolled back to its savepoint ([`WriterState::rolled_back`]).
#[derive(Debug, Default)]
pub struct WriterState {
    last_id: Option<i64>,
    last_assigned: HashMap<i64, i64>,
    partitions: HashMap<i64, i64>,
    channels: HashMap<i64, (i64, String)>,
    members: HashMap<(i64, i64), roles::Membership>,
    /// What changed in the caches since the last [`WriterState::savepoint`].
    touched: Touched,
    /// Post rows not yet inserted: deltas and messages.
    pub(crate) pending_deltas: Vec<Vec<Val>>,
    pub(crate) pending_messages: Vec<Vec<Val>>,
    /// `client_msg_id`s of pending posts by user, with their reply ids (looked up by
    /// `&str`, no key copy; the per-user maps are kept for the next batch).
    pub(crate) pending_keys: HashMap<i64, HashMap<String, (i64, i64, i64)>>,
}

/// Cache changes since a savepoint: whether a partition was recorded, whether a channel
/// or membership was cached. Two flags rather than an undo list: rollbacks are rare, and
/// the post path only sets a flag when it fills the cache.
#[derive(Debug, Default, Clone, Copy)]
struct Touched {
    partition: bool,
    cache: bool,
}

impl WriterState {
    /// An op starts in a savepoint: its cache changes are tracked from here.
    pub fn savepoint(&mut self) {
        self.touched = Touched::default();
    }

    /// The op was rolled back to its savepoint, and with it any partition row it recorded
    /// and any row it cached: forget those caches, so the next delta of the partition
    /// records it again (`INSERT IGNORE`) and the next lookup reads storage. Ids it took
    /// stay spent (`last_id`, `last_assigned`): gaps are allowed, reuse is not.
    pub fn rolled_back(&mut self) {
        if self.touched.partition {
            self.partitions.clear();
        }
        if self.touched.cache {
            self.forget_membership();
        }
        self.touched = Touched::default();
        // The batch's pending rows were flushed before the savepoint: any now are the op's.
        self.pending_deltas.clear();
        self.pending_messages.clear();
        self.clear_pending_keys();
    }

    /// After a failed transaction: forget everything cached.
    pub fn reset(&mut self) {
        self.last_id = None;
        self.last_assigned.clear();
        self.partitions.clear();
        self.forget_membership();
        self.pending_deltas.clear();
        self.pending_messages.clear();
        self.pending_keys.clear();
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
                row.and_then(|r| r.opt_int(0).ok().flatten()).unwrap_or(0)
            }
        };
        self.last_assigned.insert(server_id, last + 1);
        Ok(last + 1)
    }

    pub fn forget_membership(&mut self) {
        self.channels.clear();
        self.members.clear();
    }

    /// A live channel `(server_id, type)`, from the cache or storage.
    pub fn channel(&mut self, db: &mut dyn Db, channel_id: i64) -> OpResult<(i64, String)> {
        if let Some(c) = self.channels.get(&channel_id) {
            return Ok(c.clone());
        }
        let c = roles::channel(db, channel_id)?;
        self.touched.cache = true;
        self.channels.insert(channel_id, c.clone());
        Ok(c)
    }

    /// Whether a live channel is a text channel, and its server (no copy of the cached row).
    pub fn text_channel(&mut self, db: &mut dyn Db, channel_id: i64) -> OpResult<(i64, bool)> {
        if let Some((server_id, kind)) = self.channels.get(&channel_id) {
            return Ok((*server_id, kind == "text"));
        }
        let (server_id, kind) = self.channel(db, channel_id)?;
        Ok((server_id, kind == "text"))
    }

    /// Checks the caller is a member of a live server, from the cache or storage (no copy).
    pub fn check_member(&mut self, db: &mut dyn Db, server_id: i64, user_id: i64) -> OpResult<()> {
        if !self.members.contains_key(&(server_id, user_id)) {
            self.member(db, server_id, user_id)?;
        }
        Ok(())
    }

    /// The caller's membership of a live server, from the cache or storage.
    pub fn member(&mut self, db: &mut dyn Db, server_id: i64, user_id: i64) -> OpResult<roles::Membership> {
        if let Some(m) = self.members.get(&(server_id, user_id)) {
            return Ok(m.clone());
        }
        let m = roles::member(db, server_id, user_id)?;
        self.touched.cache = true;
        self.members.insert((server_id, user_id), m.clone());
        Ok(m)
    }

    /// Inserts the pending post rows, a few hundred per statement.
    pub fn flush_rows(&mut self, db: &mut dyn Db) -> Result<(), StoreError> {
        if !self.pending_deltas.is_empty() {
            let rows = std::mem::take(&mut self.pending_deltas);
            insert_many(db, "deltas", DELTA_INSERT_COLUMNS, rows)?;
        }
        if !self.pending_messages.is_empty() {
            let rows = std::mem::take(&mut self.pending_messages);
            insert_many(db, "messages", MESSAGE_INSERT_COLUMNS, rows)?;
        }
        self.clear_pending_keys();
        Ok(())
    }

    fn clear_pending_keys(&mut self) {
        if self.pending_keys.len() > 4096 {
            self.pending_keys.clear();
        } else {
            self.pending_keys.values_mut().for_each(HashMap::clear);
        }
    }

    /// The reply ids of a pending post of `user` with this `client_msg_id`.
    pub(crate) fn pending_key(&self, user: i64, key: &str) -> Option<(i64, i64, i64)> {
        self.pending_keys.get(&user).and_then(|m| m.get(key)).copied()
    }

    /// Whether `partition` of `server_id` still has to be recorded; remembers it.
    pub fn new_partition(&mut self, server_id: i64, partition: i64) -> bool {
        let new = self.partitions.insert(server_id, partition) != Some(partition);
        self.touched.partition |= new;
        new
    }
}

fn done(data: Map<String, Value>) -> OpResult<Step> {
    Ok(Step::Done(data, Effect::None))
}

pub fn run_read(db: &mut dyn Db, s: &Settings, op: Op) -> OpResult<Step> {
    match op {
        Op::Health => {
            db.query_row("SELECT 1", &[])?;
            done(obj([("storage", "up".into())]))
        }
        Op::Register { username, password } => accounts::register(db, username, password),
        Op::Login { username, password } => accounts::login(db, username, password),
        Op::Auth { token } => accounts::auth(db, &token),
        Op::ListServers { user } => done(servers::list_servers(db, user)?),
        Op::DiscoverServers { query, after, limit } => done(servers::discover(db, &query, after, limit)?),
        Op::ListMembers {
            user,
            server_id,
            after,
            limit,
        } => done(servers::list_members(db, user, server_id, after, limit)?),
        Op::ListChannels { user, server_id } => done(servers::list_channels(db, user, server_id)?),
        Op::GetMessages {
            user,
            channel_id,
            before,
            limit,
        } => done(messages::get(db, user, channel_id, before, limit)?),
        Op::Subscribe {
            user,
            server_id,
            after,
            page,
        } => {
            let p = log::subscribe(db, user, server_id, after, page)?;
            Ok(Step::Done(Map::new(), Effect::Subscribed(p)))
        }
        Op::CatchUp { server_id, after, page } => match log::catch_up(db, server_id, Some(after), page) {
            Ok(p) => Ok(Step::Done(Map::new(), Effect::CatchUp(p))),
            Err(_) => Ok(Step::Done(Map::new(), Effect::CatchUpFailed { server_id })),
        },
        Op::Sync {
            user,
            server_id,
            after,
            limit,
        } => done(log::sync(db, user, server_id, after, limit)?),
        Op::Restore {
            user,
            channel_id,
            before,
            limit,
        } => done(log::restore(db, user, channel_id, before, limit)?),
        Op::Typing { user, channel_id } => {
            let (m, kind) = roles::channel_member(db, channel_id, user)?;
            if kind != "text" {
                return Err(ApiError::bad_request("not a text channel").into());
            }
            Ok(Step::Done(
                Map::new(),
                Effect::Typing {
                    server_id: m.server_id,
                    channel_id,
                    user_id: user,
                },
            ))
        }
        Op::Voice { user, channel_id, join } => {
            let (m, kind) = roles::channel_member(db, channel_id, user)?;
            if kind != "voice" {
                return Err(ApiError::bad_request("not a voice channel").into());
            }
            Ok(Step::Done(
                Map::new(),
                Effect::Voice {
                    server_id: m.server_id,
                    channel_id,
                    user_id: user,
                    join,
                },
            ))
        }
        Op::CallSignal {
            user,
            to_user,
            call_id,
            payload,
        } => {
            let shared = db.query_row(
                "SELECT 1 FROM server_users a JOIN server_users b ON a.server_id = b.server_id \
                 JOIN servers s ON s.server_id = a.server_id WHERE a.user_id = ? AND b.user_id = ? AND s.deleted = 0 LIMIT 1",
                &[user.into(), to_user.into()],
            )?;
            if shared.is_none() || user == to_user {
                return Err(ApiError::forbidden("you can only signal users you share a server or DM with").into());
            }
            let data = serde_json::json!({"from_user_id": sid(user), "call_id": call_id, "payload": payload});
            let frame = crate::protocol::encode_push("CALL_SIGNAL", &data).into();
            Ok(Step::Done(Map::new(), Effect::Signal { to_user, frame }))
        }
        Op::UploadBegin {
            user,
            channel_id,
            name,
            content_type,
        } => files::begin(db, s, user, channel_id, name, content_type),
        Op::UploadWrite { upload, bytes } => files::write(upload, &bytes),
        Op::UploadFinish { upload } => files::finish(s, upload),
        Op::UploadAbort { upload } => {
            drop(upload);
            done(Map::new())
        }
        Op::DownloadOpen { user, file_id } => files::open(db, s, user, file_id),
        Op::FileRead { download, offset, len } => files::read(download, offset, len),
        Op::BackupBegin {
            user,
            server_id,
            from_partition,
        } => log::backup_begin(db, user, server_id, from_partition),
        Op::BackupPage {
            server_id,
            after,
            limit,
        } => log::backup_page(db, server_id, after, limit),
        other => Err(ApiError::internal(format!("not a read op: {other:?}")).into()),
    }
}

/// What a committed write answers: a success response's data object, or the ids of a
/// posted, edited or deleted message. Those are the hot path: the finisher writes them
/// straight into the frame, so the writer builds no map per post.
#[derive(Debug)]
pub enum Answer {
    Data(Map<String, Value>),
    Message(MessageIds),
}

impl Answer {
    /// The data object, whichever form it came in (tests, the generic path).
    pub fn into_map(self) -> Map<String, Value> {
        match self {
            Answer::Data(m) => m,
            Answer::Message(ids) => obj([
                ("delta_id", ids.delta_id.into()),
                ("message_id", sid(ids.message_id)),
                ("server_id", sid(ids.server_id)),
            ]),
        }
    }
}

impl From<Map<String, Value>> for Answer {
    fn from(m: Map<String, Value>) -> Answer {
        Answer::Data(m)
    }
}

/// `{delta_id, message_id, server_id}` of POST/EDIT/DELETE_MESSAGE. Serialises exactly as
/// [`Answer::into_map`] does (same keys, same order, ids as strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageIds {
    pub delta_id: i64,
    pub message_id: i64,
    pub server_id: i64,
}

impl serde::Serialize for MessageIds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        /// An id written as a JSON string without an intermediate `String`.
        struct Id(i64);
        impl serde::Serialize for Id {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }
        let mut st = s.serialize_struct("MessageIds", 3)?;
        st.serialize_field("delta_id", &self.delta_id)?;
        st.serialize_field("message_id", &Id(self.message_id))?;
        st.serialize_field("server_id", &Id(self.server_id))?;
        st.end()
    }
}

pub type Reply = (Answer, Effect);

pub const DELTA_INSERT_COLUMNS: &[&str] = &[
    "server_id",
    "delta_id",
    "partition_no",
    "type",
    "channel_id",
    "message_id",
    "user_id",
    "content",
    "attachments",
    "created_at",
];

pub const MESSAGE_INSERT_COLUMNS: &[&str] = &[
    "message_id",
    "server_id",
    "channel_id",
    "user_id",
    "content",
    "attachments",
    "client_msg_id",
    "delta_id",
    "created_at",
];

/// Multi-row INSERTs in chunks of 256, 64, 16, 4 and 1 rows: few round trips, and only
/// five statement shapes per table for the prepared-statement caches.
pub fn insert_many(db: &mut dyn Db, table: &str, columns: &[&str], rows: Vec<Vec<Val>>) -> Result<(), StoreError> {
    let mut rows = rows.into_iter();
    let mut rest = rows.len();
    let mut params: Vec<Val> = Vec::new();
    while rest > 0 {
        let n = [256, 64, 16, 4, 1].into_iter().find(|n| *n <= rest).unwrap_or(1);
        let one = format!("({})", vec!["?"; columns.len()].join(", "));
        let sql = format!(
            "{} INTO {table} ({}) VALUES {}",
            db.insert_all_or_rollback(),
            columns.join(", "),
            vec![one; n].join(", ")
        );
        // The rows' values move into the parameters: no copy of any text.
        params.clear();
        params.reserve(n * columns.len());
        for r in rows.by_ref().take(n) {
            params.extend(r);
        }
        db.execute(&sql, &params)?;
        rest -= n;
    }
    Ok(())
}

pub fn run_write(
    db: &mut dyn Db,
    s: &Settings,
    w: &mut WriterState,
    op: Op,
    deltas: &mut Vec<Delta>,
) -> OpResult<Reply> {
    if op.changes_membership() {
        w.forget_membership();
    }
    let mut tx = servers::Tx { db, s, w, deltas };
    let data = match op {
        Op::CreateUser {
            username,
            password_hash,
        } => return accounts::create_user(tx.db, s, tx.w, username, password_hash),
        Op::CreateToken { user_id, username } => return accounts::create_token(tx.db, s, user_id, username),
        Op::Logout { token_hash } => return accounts::logout(tx.db, token_hash),
        Op::CreateServer {
            user,
            name,
            description,
            is_public,
        } => servers::create_server(&mut tx, user, &name, &description, is_public)?,
        Op::JoinServer {
            user,
            server_id,
            invite_code,
        } => servers::join(&mut tx, user, server_id, invite_code.as_deref())?,
        Op::CreateInvite {
            user,
            server_id,
            max_uses,
            expires_in_s,
        } => servers::create_invite(&mut tx, user, server_id, max_uses, expires_in_s)?,
        Op::LeaveServer { user, server_id } => servers::leave(&mut tx, user, server_id)?,
        Op::SetRole {
            user,
            server_id,
            target,
            role,
        } => servers::set_role(&mut tx, user, server_id, target, role)?,
        Op::Kick {
            user,
            server_id,
            target,
        } => servers::kick(&mut tx, user, server_id, target)?,
        Op::DeleteServer { user, server_id } => servers::delete_server(&mut tx, user, server_id)?,
        Op::CreateChannel {
            user,
            server_id,
            name,
            kind,
        } => servers::create_channel(&mut tx, user, server_id, &name, &kind)?,
        Op::DeleteChannel { user, channel_id } => servers::delete_channel(&mut tx, user, channel_id)?,
        Op::OpenDm { user, others } => servers::open_dm(&mut tx, user, &others)?,
        Op::PostMessage {
            user,
            channel_id,
            content,
            attachments,
            client_msg_id,
        } => {
            let post = messages::Post {
                user,
                channel_id,
                content,
                attachments,
                client_msg_id,
            };
            return Ok((Answer::Message(messages::post(&mut tx, post)?), Effect::None));
        }
        Op::EditMessage {
            user,
            message_id,
            content,
        } => {
            return Ok((
                Answer::Message(messages::edit(&mut tx, user, message_id, content)?),
                Effect::None,
            ))
        }
        Op::DeleteMessage { user, message_id } => {
            return Ok((
                Answer::Message(messages::delete(&mut tx, user, message_id)?),
                Effect::None,
            ))
        }
        Op::RecordFile {
            user,
            server_id,
            channel_id,
            name,
            content_type,
            size,
            sha256,
        } => files::record(
            tx.db,
            tx.w,
            files::NewFile {
                user,
                server_id,
                channel_id,
                name,
                content_type,
                size,
                sha256,
            },
        )?,
        other => return Err(ApiError::internal(format!("not a write op: {other:?}")).into()),
    };
    Ok((data.into(), Effect::None))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_success, encode_success_with};

    #[test]
    fn message_ids_encode_like_their_map() {
        let ids = MessageIds {
            delta_id: 42,
            message_id: 1_838_526_488_243_200,
            server_id: i64::MAX,
        };
        let id = Value::from("c-1");
        let direct = encode_success_with("POST_MESSAGE", Some(&id), &ids);
        let via_map = encode_success("POST_MESSAGE", Some(&id), &Answer::Message(ids).into_map());
        assert_eq!(String::from_utf8_lossy(&direct), String::from_utf8_lossy(&via_map));
        assert!(direct.starts_with(br#"{"action":"POST_MESSAGE_RESPONSE","id":"c-1","data":{"status":"success","delta_id":42,"message_id":"1838526488243200""#));
    }
}
