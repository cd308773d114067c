//! The delta log (SPEC §5), worker side: appending deltas inside the writer's
//! transaction, and reading them back for SUBSCRIBE catch-ups, SYNC and RESTORE_HISTORY.
//!
//! Delta ids come from the writer's per-server counter, so they increase in commit
//! order. Each server's log is cut into partitions of `partition_size` ids; a partition
//! is recorded in `delta_partitions` when its first delta is written.

use serde_json::{Map, Value};

use super::delta::{Delta, Published, DELTA_COLUMNS};
use super::ops::{insert_many, obj, OpResult, Settings, WriterState, DELTA_INSERT_COLUMNS};
use super::roles;
use crate::store::{Db, RowExt, Val};
use crate::time::now_ms;

/// A delta about to be appended (the writer fills in id and time).
pub struct NewDelta<'a> {
    pub server_id: i64,
    pub kind: &'a str,
    pub channel_id: Option<i64>,
    pub message_id: Option<i64>,
    pub user_id: i64,
    pub content: Option<String>,
    pub attachments: Option<String>,
}

impl<'a> NewDelta<'a> {
    pub fn new(server_id: i64, kind: &'a str, user_id: i64) -> NewDelta<'a> {
        NewDelta {
            server_id,
            kind,
            channel_id: None,
            message_id: None,
            user_id,
            content: None,
            attachments: None,
        }
    }
}

/// Assigns the delta its id and time, records its partition if it opens one, and
/// returns it with its row for the `deltas` table.
fn prepare(db: &mut dyn Db, s: &Settings, w: &mut WriterState, d: NewDelta) -> OpResult<(Delta, Vec<Val>)> {
    let delta_id = w.next_delta_id(db, d.server_id)?;
    let partition = (delta_id - 1) / s.partition_size + 1;
    let now = now_ms();
    if w.new_partition(d.server_id, partition) {
        let sql = format!(
            "{} INTO delta_partitions (server_id, partition_no, first_delta_id, created_at) VALUES (?, ?, ?, ?)",
            db.insert_ignore()
        );
        db.execute(
            &sql,
            &[d.server_id.into(), partition.into(), delta_id.into(), now.into()],
        )?;
    }
    let row = vec![
        d.server_id.into(),
        delta_id.into(),
        partition.into(),
        d.kind.into(),
        d.channel_id.into(),
        d.message_id.into(),
        d.user_id.into(),
        d.content.clone().into(),
        d.attachments.clone().into(),
        now.into(),
    ];
    let delta = Delta {
        server_id: d.server_id,
        delta_id,
        kind: d.kind.to_string(),
        channel_id: d.channel_id,
        message_id: d.message_id,
        user_id: d.user_id,
        content: d.content,
        attachments: d.attachments,
        created_at: now,
    };
    Ok((delta, row))
}

/// Appends a delta now; it is published after the batch commits.
pub fn append(db: &mut dyn Db, s: &Settings, w: &mut WriterState, out: &mut Vec<Delta>, d: NewDelta) -> OpResult<i64> {
    let (delta, row) = prepare(db, s, w, d)?;
    insert_many(db, "deltas", DELTA_INSERT_COLUMNS, &[row])?;
    let id = delta.delta_id;
    out.push(delta);
    Ok(id)
}

/// Appends a delta whose row goes out with the batch's multi-row INSERT (posts). Call it
/// last, once nothing else can fail.
pub fn stage(db: &mut dyn Db, s: &Settings, w: &mut WriterState, out: &mut Vec<Delta>, d: NewDelta) -> OpResult<i64> {
    let (delta, row) = prepare(db, s, w, d)?;
    w.pending_deltas.push(row);
    let id = delta.delta_id;
    out.push(delta);
    Ok(id)
}

/// The newest committed delta id of a server (0 for an empty log).
pub fn head(db: &mut dyn Db, server_id: i64) -> OpResult<i64> {
    let row = db.query_row(
        "SELECT MAX(delta_id) FROM deltas WHERE server_id = ?",
        &[server_id.into()],
    )?;
    Ok(row.and_then(|r| r.opt_int(0).ok().flatten()).unwrap_or(0))
}

/// Up to `limit` deltas after `after`, oldest first, and whether more follow.
pub fn after(db: &mut dyn Db, server_id: i64, after: i64, limit: usize) -> OpResult<(Vec<Delta>, bool)> {
    let sql =
        format!("SELECT {DELTA_COLUMNS} FROM deltas WHERE server_id = ? AND delta_id > ? ORDER BY delta_id LIMIT ?");
    let rows = db.query(&sql, &[server_id.into(), after.into(), (limit as i64 + 1).into()])?;
    let more = rows.len() > limit;
    let deltas = rows
        .iter()
        .take(limit)
        .map(Delta::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((deltas, more))
}

/// What the loop needs to start or continue a subscription.
#[derive(Debug, Clone)]
pub struct Page {
    pub server_id: i64,
    /// The log's head when this page was read.
    pub head: i64,
    /// The cursor the page starts after (None: a subscription from now).
    pub after: Option<i64>,
    pub deltas: Vec<Published>,
    /// The read stopped at the page limit: more committed deltas follow.
    pub has_more: bool,
}

/// SUBSCRIBE: checks membership, reads the head and the first catch-up page.
pub fn subscribe(db: &mut dyn Db, user_id: i64, server_id: i64, from: Option<i64>, page: usize) -> OpResult<Page> {
    roles::member(db, server_id, user_id)?;
    catch_up(db, server_id, from, page)
}

/// One catch-up page (also for the loop's follow-up reads, which need no new check: the
/// loop ends a subscription when the member's `member_left` delta passes through it).
pub fn catch_up(db: &mut dyn Db, server_id: i64, from: Option<i64>, page: usize) -> OpResult<Page> {
    let head = head(db, server_id)?;
    let (deltas, has_more) = match from {
        Some(c) if c < head => after(db, server_id, c, page)?,
        _ => (Vec::new(), false),
    };
    Ok(Page {
        server_id,
        head,
        after: from,
        deltas: deltas.iter().map(Published::new).collect(),
        has_more,
    })
}

/// SYNC: `{server_delta_id, missing_deltas, has_more}`.
pub fn sync(db: &mut dyn Db, user_id: i64, server_id: i64, from: i64, limit: usize) -> OpResult<Map<String, Value>> {
    roles::member(db, server_id, user_id)?;
    let head = head(db, server_id)?;
    let (deltas, more) = after(db, server_id, from, limit)?;
    Ok(obj([
        ("server_delta_id", head.into()),
        (
            "missing_deltas",
            Value::Array(deltas.iter().map(Delta::to_value).collect()),
        ),
        ("has_more", more.into()),
    ]))
}

/// RESTORE_HISTORY: a channel's deltas before `before`, newest page first, oldest first
/// within the page.
pub fn restore(
    db: &mut dyn Db,
    user_id: i64,
    channel_id: i64,
    before: Option<i64>,
    limit: usize,
) -> OpResult<Map<String, Value>> {
    roles::channel_member(db, channel_id, user_id)?;
    let sql = format!(
        "SELECT {DELTA_COLUMNS} FROM deltas WHERE channel_id = ? AND delta_id < ? ORDER BY delta_id DESC LIMIT ?"
    );
    let rows = db.query(
        &sql,
        &[
            channel_id.into(),
            before.unwrap_or(i64::MAX).into(),
            (limit as i64 + 1).into(),
        ],
    )?;
    let more = rows.len() > limit;
    let mut deltas = rows
        .iter()
        .take(limit)
        .map(Delta::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    deltas.reverse();
    Ok(obj([
        ("deltas", Value::Array(deltas.iter().map(Delta::to_value).collect())),
        ("has_more", more.into()),
    ]))
}

/// The ids of a server's partitions, for backups.
pub fn partitions(db: &mut dyn Db, server_id: i64) -> OpResult<Vec<(i64, i64)>> {
    let rows = db.query(
        "SELECT partition_no, first_delta_id FROM delta_partitions WHERE server_id = ? ORDER BY partition_no",
        &[server_id.into()],
    )?;
    rows.iter().map(|r| Ok((r.int(0)?, r.int(1)?))).collect()
}
