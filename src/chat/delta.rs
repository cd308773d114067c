//! Deltas: the immutable records of a server's log (SPEC §5), and their wire bytes.
//!
//! A delta is serialised exactly once, on the worker that committed or read it, into the
//! complete `PUBLISH_DELTA` frame; the loop shares those bytes (`Arc<[u8]>`) among every
//! receiver and every catch-up, and never re-encodes them.

use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use crate::protocol::encode_push;
use crate::store::{Row, RowExt, StoreError};
use crate::time::rfc3339_ms;

/// One change to a server.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub server_id: i64,
    pub delta_id: i64,
    pub kind: String,
    pub channel_id: Option<i64>,
    pub message_id: Option<i64>,
    /// The user the change is about: the author of a message, the member who joined,
    /// left or whose role changed, the actor otherwise.
    pub user_id: i64,
    pub content: Option<String>,
    /// JSON array of attachment metadata, as stored.
    pub attachments: Option<String>,
    pub created_at: i64,
}

/// The columns [`Delta::from_row`] expects, in order.
pub const DELTA_COLUMNS: &str =
    "server_id, delta_id, type, channel_id, message_id, user_id, content, attachments, created_at";

impl Delta {
    pub fn from_row(r: &Row) -> Result<Delta, StoreError> {
        Ok(Delta {
            server_id: r.int(0)?,
            delta_id: r.int(1)?,
            kind: r.text(2)?,
            channel_id: r.opt_int(3)?,
            message_id: r.opt_int(4)?,
            user_id: r.int(5)?,
            content: r.opt_text(6)?,
            attachments: r.opt_text(7)?,
            created_at: r.int(8)?,
        })
    }

    /// The delta as a JSON value (for SYNC and RESTORE_HISTORY responses).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The complete `PUBLISH_DELTA` frame.
    pub fn publish_frame(&self) -> Arc<[u8]> {
        #[derive(Serialize)]
        struct Data<'a> {
            delta: &'a Delta,
        }
        encode_push("PUBLISH_DELTA", &Data { delta: self }).into()
    }
}

impl Serialize for Delta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("server_id", &self.server_id.to_string())?;
        m.serialize_entry("delta_id", &self.delta_id)?;
        m.serialize_entry("type", &self.kind)?;
        if let Some(c) = self.channel_id {
            m.serialize_entry("channel_id", &c.to_string())?;
        }
        if let Some(id) = self.message_id {
            m.serialize_entry("message_id", &id.to_string())?;
        }
        m.serialize_entry("user_id", &self.user_id.to_string())?;
        if let Some(c) = &self.content {
            m.serialize_entry("content", c)?;
        }
        if let Some(a) = &self.attachments {
            let v: Value = serde_json::from_str(a).unwrap_or(Value::Array(Vec::new()));
            m.serialize_entry("attachments", &v)?;
        }
        m.serialize_entry("timestamp", &rfc3339_ms(self.created_at))?;
        m.end()
    }
}

/// Whom a delta cuts off once delivered: a member who left or was kicked stops
/// receiving the server's deltas; a deleted server stops everyone's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    Nobody,
    User(i64),
    Everyone,
}

/// A delta as the loop handles it: ids for routing, the shared frame bytes for sending.
#[derive(Debug, Clone)]
pub struct Published {
    pub server_id: i64,
    pub delta_id: i64,
    pub ends: Ends,
    pub frame: Arc<[u8]>,
}

impl Published {
    pub fn new(d: &Delta) -> Published {
        let ends = match d.kind.as_str() {
            "member_left" => Ends::User(d.user_id),
            "server_updated" if d.content.as_deref().is_some_and(|c| c.contains("\"deleted\":true")) => Ends::Everyone,
            _ => Ends::Nobody,
        };
        Published {
            server_id: d.server_id,
            delta_id: d.delta_id,
            ends,
            frame: d.publish_frame(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_string_ids_and_rfc3339_time() {
        let d = Delta {
            server_id: 5,
            delta_id: 9,
            kind: "message".into(),
            channel_id: Some(6),
            message_id: Some(7),
            user_id: 8,
            content: Some("hi".into()),
            attachments: None,
            created_at: 0,
        };
        let f = d.publish_frame();
        let v: Value = serde_json::from_slice(&f[..f.len() - 1]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"action":"PUBLISH_DELTA","data":{"delta":{
                "server_id":"5","delta_id":9,"type":"message","channel_id":"6","message_id":"7",
                "user_id":"8","content":"hi","timestamp":"1970-01-01T00:00:00.000Z"}}})
        );
    }
}
