//! The delta log (SPEC §5), worker side: appending deltas inside the writer's
//! transaction, and reading them back for SUBSCRIBE catch-ups, SYNC and RESTORE_HISTORY.
//!
//! Delta ids come from the writer's per-server counter, so they increase in commit
//! order. Each server's log is cut into partitions of `partition_size` ids; a partition
//! is recorded in `delta_partitions` when its first delta is written. Backups stream the
//! log as NDJSON, page by page, with a header line where each partition starts.

use serde_json::{Map, Value};

use super::delta::{Delta, Published, DELTA_COLUMNS};
use super::ops::{insert_many, obj, sid, Effect, OpResult, Settings, Step, WriterState, DELTA_INSERT_COLUMNS};
use super::roles;
use crate::protocol::ApiError;
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
    insert_many(db, "deltas", DELTA_INSERT_COLUMNS, vec![row])?;
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

/// The most deltas one backup page may hold, whatever the loop asks: bounds a page's memory.
pub const MAX_BACKUP_PAGE: usize = 10_000;

/// `Op::BackupBegin`: any member may back up a server, from its start or from partition
/// `from`; `Effect::Backup` names the delta id to read after.
pub fn backup_begin(db: &mut dyn Db, user: i64, server_id: i64, from: Option<i64>) -> OpResult<Step> {
    roles::member(db, server_id, user)?;
    let after = match from {
        None => 0,
        Some(k) => {
            let row = db.query_row(
                "SELECT first_delta_id FROM delta_partitions WHERE server_id = ? AND partition_no = ?",
                &[server_id.into(), k.into()],
            )?;
            match row {
                Some(r) => r.int(0)?.saturating_sub(1),
                None => return Err(ApiError::not_found(format!("no partition {k}")).into()),
            }
        }
    };
    let data = obj([
        ("server_id", sid(server_id)),
        ("from_partition", from.into()),
        ("server_delta_id", head(db, server_id)?.into()),
    ]);
    Ok(Step::Done(data, Effect::Backup { server_id, after }))
}

/// `Op::BackupPage`: up to `limit` deltas after `after` as NDJSON, each line a delta as
/// `PUBLISH_DELTA` carries it. Before the first delta of each partition (as stored with
/// the delta, so a changed `partition_size` cannot mislabel old deltas) comes a line
/// `{"partition": K, "first_delta_id": N}`; a restore can start at any header.
pub fn backup_page(db: &mut dyn Db, server_id: i64, after: i64, limit: usize) -> OpResult<Step> {
    let limit = limit.clamp(1, MAX_BACKUP_PAGE);
    let sql = format!(
        "SELECT {DELTA_COLUMNS}, partition_no FROM deltas WHERE server_id = ? AND delta_id > ? ORDER BY delta_id LIMIT ?"
    );
    let rows = db.query(&sql, &[server_id.into(), after.into(), (limit as i64 + 1).into()])?;
    let done = rows.len() <= limit;
    // The partition of the delta just before the page: a page that starts a partition
    // starts with its header, also when the previous page ended exactly at its edge.
    let mut partition = db
        .query_row(
            "SELECT partition_no FROM deltas WHERE server_id = ? AND delta_id <= ? ORDER BY delta_id DESC LIMIT 1",
            &[server_id.into(), after.into()],
        )?
        .map(|r| r.int(0))
        .transpose()?;
    let (mut bytes, mut last, mut count) = (Vec::new(), after, 0);
    for r in rows.iter().take(limit) {
        let delta = Delta::from_row(r)?;
        let no = r.int(9)?;
        if partition != Some(no) {
            let first = db
                .query_row(
                    "SELECT first_delta_id FROM delta_partitions WHERE server_id = ? AND partition_no = ?",
                    &[server_id.into(), no.into()],
                )?
                .map(|r| r.int(0))
                .transpose()?
                .unwrap_or(delta.delta_id);
            let header = serde_json::json!({"partition": no, "first_delta_id": first});
            line(&mut bytes, &header)?;
            partition = Some(no);
        }
        line(&mut bytes, &delta)?;
        last = delta.delta_id;
        count += 1;
    }
    Ok(Step::Done(
        Map::new(),
        Effect::BackupPage {
            bytes,
            last,
            count,
            done,
        },
    ))
}

fn line(out: &mut Vec<u8>, v: &impl serde::Serialize) -> OpResult<()> {
    serde_json::to_writer(&mut *out, v).map_err(|e| ApiError::internal(format!("cannot encode a backup line: {e}")))?;
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::chat::ops::{Effect, Op};
    use crate::protocol::ErrorCode;
    use crate::testkit::Kit;

    /// One backup page: its lines parsed, `last`, `count`, `done`.
    fn page(k: &mut Kit, server_id: i64, after: i64, limit: usize) -> (Vec<Value>, i64, usize, bool) {
        match k
            .exec(Op::BackupPage {
                server_id,
                after,
                limit,
            })
            .unwrap()
        {
            (
                _,
                Effect::BackupPage {
                    bytes,
                    last,
                    count,
                    done,
                },
            ) => {
                assert!(bytes.is_empty() || bytes.ends_with(b"\n"));
                let lines = bytes
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_slice(l).unwrap())
                    .collect();
                (lines, last, count, done)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A line's shape: `P<k>@<first>` for a header, the delta id for a delta.
    fn shape(lines: &[Value]) -> Vec<String> {
        lines
            .iter()
            .map(|l| match l.get("partition") {
                Some(p) => format!("P{p}@{}", l["first_delta_id"]),
                None => l["delta_id"].to_string(),
            })
            .collect()
    }

    #[test]
    fn backup_pages_carry_partition_headers_and_resume_after_last() {
        let mut k = Kit::new("log_backup");
        k.s.partition_size = 3;
        let ann = k.user("ann");
        let bob = k.user("bob");
        let (server_id, channel) = k.server(ann); // deltas 1, 2
        for i in 0..8 {
            k.post(ann, channel, &format!("m{i}")); // deltas 3..=10
        }

        let begin = |k: &mut Kit, user, from| {
            k.exec(Op::BackupBegin {
                user,
                server_id,
                from_partition: from,
            })
        };
        let (data, effect) = begin(&mut k, ann, None).unwrap();
        assert_eq!(data["server_id"], server_id.to_string());
        assert_eq!(data["from_partition"], Value::Null);
        assert_eq!(data["server_delta_id"], 10);
        assert!(matches!(effect, Effect::Backup { server_id: s, after: 0 } if s == server_id));
        let (data, effect) = begin(&mut k, ann, Some(3)).unwrap();
        assert_eq!(data["from_partition"], 3);
        assert!(matches!(effect, Effect::Backup { after: 6, .. }));
        assert_eq!(begin(&mut k, ann, Some(9)).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(begin(&mut k, bob, None).unwrap_err().code, ErrorCode::Forbidden);
        k.join(bob, server_id); // delta 11: any member may back up
        assert!(begin(&mut k, bob, Some(1)).is_ok());

        // Pages of 4: headers wherever a partition starts, also mid-page.
        let (l, last, count, done) = page(&mut k, server_id, 0, 4);
        assert_eq!(shape(&l), ["P1@1", "1", "2", "3", "P2@4", "4"]);
        assert_eq!((last, count, done), (4, 4, false));
        let (l, last, count, done) = page(&mut k, server_id, last, 4);
        assert_eq!(shape(&l), ["5", "6", "P3@7", "7", "8"]);
        assert_eq!((last, count, done), (8, 4, false));
        let (l, last, count, done) = page(&mut k, server_id, last, 4);
        assert_eq!(shape(&l), ["9", "P4@10", "10", "11"]);
        assert_eq!((last, count, done), (11, 3, true));
        let (l, last, count, done) = page(&mut k, server_id, last, 4);
        assert_eq!((l.len(), last, count, done), (0, 11, 0, true));

        // A page that ends exactly at a partition's edge: the next starts with the header.
        let (l, last, _, done) = page(&mut k, server_id, 0, 3);
        assert_eq!(
            (shape(&l), last, done),
            (vec!["P1@1".into(), "1".into(), "2".into(), "3".into()], 3, false)
        );
        let (l, ..) = page(&mut k, server_id, 3, 3);
        assert_eq!(shape(&l), ["P2@4", "4", "5", "6"]);
        // From partition 3, as BackupBegin started it; exactly the last delta: done.
        let (l, ..) = page(&mut k, server_id, 6, 1);
        assert_eq!(shape(&l), ["P3@7", "7"]);
        let (_, _, count, done) = page(&mut k, server_id, 10, 1);
        assert_eq!((count, done), (1, true));
        // A zero limit still makes progress.
        assert_eq!(page(&mut k, server_id, 0, 0).2, 1);

        // Each delta line is the delta as PUBLISH_DELTA and SYNC carry it.
        let (l, ..) = page(&mut k, server_id, 0, 100);
        let deltas: Vec<Value> = l.into_iter().filter(|v| v.get("partition").is_none()).collect();
        let sync = k.ok(Op::Sync {
            user: ann,
            server_id,
            after: 0,
            limit: 100,
        });
        assert_eq!(Value::Array(deltas), sync["missing_deltas"]);
        assert_eq!(sync["missing_deltas"][2]["content"], json!("m0"));
    }
}
