//! Messages: POST, EDIT, DELETE, GET_MESSAGES. Worker side.
//!
//! A POST with a `client_msg_id` is idempotent per user: the key is stored with the
//! message under a unique index, and a repeat returns the first result and writes nothing,
//! also after a restart.

use serde_json::{json, Map, Value};

use super::log::{self, NewDelta};
use super::ops::{obj, MessageIds, OpResult};
use super::roles::{self, Role};
use super::servers::Tx;
use crate::protocol::ApiError;
use crate::store::{Db, RowExt, Val};
use crate::time::rfc3339_ms;

pub struct Post {
    pub user: i64,
    pub channel_id: i64,
    pub content: String,
    pub attachments: Vec<i64>,
    pub client_msg_id: Option<String>,
}

fn post_reply(delta_id: i64, message_id: i64, server_id: i64) -> MessageIds {
    MessageIds {
        delta_id,
        message_id,
        server_id,
    }
}

/// Resolves attachment file ids to their metadata; each must belong to the same server.
fn attachment_meta(db: &mut dyn Db, server_id: i64, files: &[i64]) -> OpResult<Option<String>> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut meta = Vec::with_capacity(files.len());
    for f in files {
        let row = db.query_row(
            "SELECT file_id, name, content_type, size, sha256 FROM files WHERE file_id = ? AND server_id = ?",
            &[(*f).into(), server_id.into()],
        )?;
        let Some(r) = row else {
            return Err(ApiError::not_found(format!("no file {f} in this server")).into());
        };
        meta.push(
            json!({"file_id": r.text(0)?, "name": r.text(1)?, "content_type": r.text(2)?, "size": r.int(3)?,
                         "sha256": r.text(4)?, "download_url": format!("/api/files/download/{}", r.text(0)?)}),
        );
    }
    Ok(Some(Value::Array(meta).to_string()))
}

pub fn post(tx: &mut Tx, p: Post) -> OpResult<MessageIds> {
    if let Some(key) = &p.client_msg_id {
        if let Some((d, m, s)) = tx.w.pending_key(p.user, key) {
            return Ok(post_reply(d, m, s));
        }
        let row = tx.db.query_row(
            "SELECT delta_id, message_id, server_id FROM messages WHERE user_id = ? AND client_msg_id = ?",
            &[p.user.into(), key.as_str().into()],
        )?;
        if let Some(r) = row {
            return Ok(post_reply(r.int(0)?, r.int(1)?, r.int(2)?));
        }
    }
    let (server_id, is_text) = tx.w.text_channel(tx.db, p.channel_id)?;
    tx.w.check_member(tx.db, server_id, p.user)?;
    if !is_text {
        return Err(ApiError::bad_request("messages go to text channels").into());
    }
    let attachments = attachment_meta(tx.db, server_id, &p.attachments)?;
    let message_id = tx.id()?;
    for (i, f) in p.attachments.iter().enumerate() {
        tx.db.execute(
            "INSERT INTO attachments (message_id, file_id, position) VALUES (?, ?, ?)",
            &[message_id.into(), (*f).into(), (i as i64).into()],
        )?;
    }
    // Nothing below can be refused: the rows wait for the batch's multi-row INSERT.
    let mut d = NewDelta::new(server_id, "message", p.user);
    d.channel_id = Some(p.channel_id);
    d.message_id = Some(message_id);
    d.content = Some(p.content);
    d.attachments = attachments;
    let delta_id = log::stage(tx.db, tx.s, tx.w, tx.deltas, d)?;
    if let Some(key) = &p.client_msg_id {
        tx.w.pending_keys
            .entry(p.user)
            .or_default()
            .insert(key.clone(), (delta_id, message_id, server_id));
    }
    // The text and attachments live once, in the delta: the message row holds text only
    // once edited (see `get`), which halves the bytes a post writes.
    tx.w.pending_messages.push(vec![
        message_id.into(),
        server_id.into(),
        p.channel_id.into(),
        p.user.into(),
        "".into(),
        Val::Null,
        p.client_msg_id.into(),
        delta_id.into(),
        crate::time::now_ms().into(),
    ]);
    Ok(post_reply(delta_id, message_id, server_id))
}

/// A live message in a live channel: `(server_id, channel_id, author)`.
fn message(db: &mut dyn Db, message_id: i64) -> OpResult<(i64, i64, i64)> {
    let row = db.query_row(
        "SELECT m.server_id, m.channel_id, m.user_id FROM messages m JOIN channels c ON c.channel_id = m.channel_id \
         WHERE m.message_id = ? AND m.deleted = 0 AND c.deleted = 0",
        &[message_id.into()],
    )?;
    match row {
        Some(r) => Ok((r.int(0)?, r.int(1)?, r.int(2)?)),
        None => Err(ApiError::not_found("no such message").into()),
    }
}

pub fn edit(tx: &mut Tx, user: i64, message_id: i64, content: String) -> OpResult<MessageIds> {
    let (server_id, channel_id, author) = message(tx.db, message_id)?;
    roles::member(tx.db, server_id, user)?;
    if author != user {
        return Err(ApiError::forbidden("only the author may edit a message").into());
    }
    tx.db.execute(
        "UPDATE messages SET content = ?, edited = 1 WHERE message_id = ?",
        &[content.as_str().into(), message_id.into()],
    )?;
    let mut d = NewDelta::new(server_id, "edit", user);
    d.channel_id = Some(channel_id);
    d.message_id = Some(message_id);
    d.content = Some(content);
    let delta_id = tx.append(d)?;
    Ok(post_reply(delta_id, message_id, server_id))
}

pub fn delete(tx: &mut Tx, user: i64, message_id: i64) -> OpResult<MessageIds> {
    let (server_id, channel_id, author) = message(tx.db, message_id)?;
    let m = roles::member(tx.db, server_id, user)?;
    if author != user && m.role < Role::Moderator {
        return Err(ApiError::forbidden("only the author or a moderator may delete a message").into());
    }
    tx.db.execute(
        "UPDATE messages SET deleted = 1 WHERE message_id = ?",
        &[message_id.into()],
    )?;
    let mut d = NewDelta::new(server_id, "delete", user);
    d.channel_id = Some(channel_id);
    d.message_id = Some(message_id);
    let delta_id = tx.append(d)?;
    Ok(post_reply(delta_id, message_id, server_id))
}

/// GET_MESSAGES: the page of messages before `before` (newest page first, oldest first
/// within it), as they stand now.
pub fn get(
    db: &mut dyn Db,
    user: i64,
    channel_id: i64,
    before: Option<i64>,
    limit: usize,
) -> OpResult<Map<String, Value>> {
    roles::channel_member(db, channel_id, user)?;
    let rows = db.query(
        // An unedited message's text and attachments are its `message` delta's (`post`);
        // rows written before that change carry their own, hence the fallbacks.
        "SELECT m.message_id, m.channel_id, m.user_id, \
         COALESCE(CASE WHEN m.edited = 0 THEN d.content END, m.content), COALESCE(d.attachments, m.attachments), \
         m.created_at, m.edited FROM messages m \
         LEFT JOIN deltas d ON d.server_id = m.server_id AND d.delta_id = m.delta_id \
         WHERE m.channel_id = ? AND m.deleted = 0 AND m.message_id < ? ORDER BY m.message_id DESC LIMIT ?",
        &[
            channel_id.into(),
            before.unwrap_or(i64::MAX).into(),
            (limit as i64 + 1).into(),
        ],
    )?;
    let more = rows.len() > limit;
    let mut messages = rows
        .iter()
        .take(limit)
        .map(|r| {
            let attachments: Value = r
                .opt_text(4)?
                .and_then(|a| serde_json::from_str(&a).ok())
                .unwrap_or(Value::Array(Vec::new()));
            Ok(
                json!({"message_id": r.text(0)?, "channel_id": r.text(1)?, "user_id": r.text(2)?, "content": r.text(3)?,
                      "attachments": attachments, "timestamp": rfc3339_ms(r.int(5)?), "edited": r.int(6)? != 0}),
            )
        })
        .collect::<OpResult<Vec<_>>>()?;
    messages.reverse();
    Ok(obj([("messages", Value::Array(messages)), ("has_more", more.into())]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::chat::ops::{Effect, Op};
    use crate::protocol::ErrorCode;
    use crate::testkit::{id, Kit};

    fn record(k: &mut Kit, user: i64, server_id: i64, channel_id: i64, name: &str) -> i64 {
        let d = k.ok(Op::RecordFile {
            user,
            server_id,
            channel_id,
            name: name.into(),
            content_type: "image/png".into(),
            size: 3,
            sha256: "ab".repeat(32),
        });
        id(&d, "file_id")
    }

    #[test]
    fn attachments_resolve_recorded_files_of_the_same_server_only() {
        let mut k = Kit::new("msg_attach");
        let ann = k.user("ann");
        let bob = k.user("bob");
        let (server_id, channel) = k.server(ann);
        let (other_server, other_channel) = k.server(bob);
        let a = record(&mut k, ann, server_id, channel, "a.png");
        let b = record(&mut k, ann, server_id, channel, "b.png");
        let foreign = record(&mut k, bob, other_server, other_channel, "c.png");
        let meta = |f: i64, name: &str| {
            json!({"file_id": f.to_string(), "name": name, "content_type": "image/png", "size": 3,
                   "sha256": "ab".repeat(32), "download_url": format!("/api/files/download/{f}")})
        };

        let post = Op::PostMessage {
            user: ann,
            channel_id: channel,
            content: String::new(),
            attachments: vec![b, a],
            client_msg_id: None,
        };
        let reply = k.ok(post);
        let delta_id = reply["delta_id"].as_i64().unwrap();
        let sync = k.ok(Op::Sync {
            user: ann,
            server_id,
            after: delta_id - 1,
            limit: 10,
        });
        let delta = &sync["missing_deltas"][0];
        assert_eq!(delta["type"], "message");
        assert_eq!(delta["attachments"], json!([meta(b, "b.png"), meta(a, "a.png")]));
        let got = k.ok(Op::GetMessages {
            user: ann,
            channel_id: channel,
            before: None,
            limit: 10,
        });
        assert_eq!(got["messages"][0]["attachments"], delta["attachments"]);

        // A file of another server is refused, even mixed with a good one; nothing is written.
        let before = k.count("SELECT COUNT(*) FROM messages");
        for attachments in [vec![foreign], vec![a, foreign], vec![a + foreign]] {
            let r = k.exec(Op::PostMessage {
                user: ann,
                channel_id: channel,
                content: "see".into(),
                attachments,
                client_msg_id: None,
            });
            assert!(matches!(r, Err(ref e) if e.code == ErrorCode::NotFound), "{r:?}");
        }
        assert_eq!(k.count("SELECT COUNT(*) FROM messages"), before);
        assert_eq!(k.count("SELECT COUNT(*) FROM attachments"), 2);
        // Bob, who uploaded it, can attach it where it belongs.
        let r = k.exec(Op::PostMessage {
            user: bob,
            channel_id: other_channel,
            content: String::new(),
            attachments: vec![foreign],
            client_msg_id: None,
        });
        assert!(matches!(r, Ok((_, Effect::None))), "{r:?}");
    }

    /// A post's text is stored once, in its delta; GET_MESSAGES shows it until an edit
    /// replaces it, and the delta log keeps the original.
    #[test]
    fn get_messages_shows_posted_then_edited_text() {
        let mut k = Kit::new("msg_edit");
        let ann = k.user("ann");
        let (server_id, channel) = k.server(ann);
        let first = id(&k.post(ann, channel, "first"), "message_id");
        let second = id(&k.post(ann, channel, "second"), "message_id");
        k.ok(Op::EditMessage {
            user: ann,
            message_id: first,
            content: "first, edited".into(),
        });
        let got = k.ok(Op::GetMessages {
            user: ann,
            channel_id: channel,
            before: None,
            limit: 10,
        });
        let shown: Vec<_> = got["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    id(m.as_object().unwrap(), "message_id"),
                    m["content"].clone(),
                    m["edited"].clone(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                (first, json!("first, edited"), json!(true)),
                (second, json!("second"), json!(false))
            ]
        );
        let log = k.ok(Op::Sync {
            user: ann,
            server_id,
            after: 0,
            limit: 100,
        });
        let texts: Vec<_> = log["missing_deltas"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["type"] == "message" || d["type"] == "edit")
            .map(|d| d["content"].clone())
            .collect();
        assert_eq!(texts, vec![json!("first"), json!("second"), json!("first, edited")]);
    }
}
