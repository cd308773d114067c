//! Deltas: the immutable records of a server's log (SPEC §5), and their wire bytes.
//!
//! A delta is serialised exactly once, on the worker that committed or read it, into the
//! complete `PUBLISH_DELTA` frame; the loop shares those bytes (`Arc<[u8]>`) among every
//! receiver and every catch-up, and never re-encodes them.

use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

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

    /// The complete `PUBLISH_DELTA` frame: byte for byte what `encode_push("PUBLISH_DELTA",
    /// {"delta": self})` writes (a test holds them equal), written straight into one buffer
    /// of the right size. The writer thread builds one per committed delta, so this skips the
    /// four id `String`s, the buffer's regrowth, `format!` for the timestamp and serde's map
    /// machinery: 2 allocations instead of 9 (criterion `delta/serialise PUBLISH_DELTA frame`:
    /// 889 ns -> 282 ns).
    pub fn publish_frame(&self) -> Arc<[u8]> {
        const HEAD: &[u8] = br#"{"action":"PUBLISH_DELTA","data":{"delta":{"server_id":""#;
        let content = self.content.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(HEAD.len() + 220 + self.kind.len() + content.len() + content.len() / 8);
        out.extend_from_slice(HEAD);
        push_int(&mut out, self.server_id);
        out.extend_from_slice(br#"","delta_id":"#);
        push_int(&mut out, self.delta_id);
        out.extend_from_slice(br#","type":"#);
        push_str(&mut out, &self.kind);
        if let Some(c) = self.channel_id {
            out.extend_from_slice(br#","channel_id":""#);
            push_int(&mut out, c);
            out.push(b'"');
        }
        if let Some(m) = self.message_id {
            out.extend_from_slice(br#","message_id":""#);
            push_int(&mut out, m);
            out.push(b'"');
        }
        out.extend_from_slice(br#","user_id":""#);
        push_int(&mut out, self.user_id);
        out.push(b'"');
        if let Some(c) = &self.content {
            out.extend_from_slice(br#","content":"#);
            push_str(&mut out, c);
        }
        if let Some(a) = &self.attachments {
            out.extend_from_slice(br#","attachments":"#);
            let v: Value = serde_json::from_str(a).unwrap_or(Value::Array(Vec::new()));
            if serde_json::to_writer(&mut out, &v).is_err() {
                out.extend_from_slice(b"[]");
            }
        }
        out.extend_from_slice(br#","timestamp":""#);
        push_timestamp(&mut out, self.created_at);
        out.extend_from_slice(b"\"}}}\n");
        out.into()
    }
}

/// Appends `rfc3339_ms(ms)` without formatting machinery: the date part comes from
/// [`rfc3339_ms`] once per day (cached per thread), the time of day is written here.
fn push_timestamp(out: &mut Vec<u8>, ms: i64) {
    use std::cell::RefCell;
    thread_local! {
        /// (day number, "YYYY-MM-DDT").
        static DAY: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let day = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    DAY.with(|cell| {
        let mut c = cell.borrow_mut();
        if c.0 != day || c.1.is_empty() {
            let full = rfc3339_ms(day.saturating_mul(86_400_000));
            let date = full.find('T').map_or(full.as_str(), |t| &full[..=t]);
            *c = (day, date.to_string());
        }
        out.extend_from_slice(c.1.as_bytes());
    });
    let two = |out: &mut Vec<u8>, v: i64| out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8]);
    two(out, rem / 3600);
    out.push(b':');
    two(out, rem % 3600 / 60);
    out.push(b':');
    two(out, rem % 60);
    out.push(b'.');
    out.extend_from_slice(&[
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

/// Appends an integer in decimal, without allocating.
fn push_int(out: &mut Vec<u8>, v: i64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends a JSON string (quoted, escaped exactly as serde_json escapes it).
fn push_str(out: &mut Vec<u8>, s: &str) {
    let plain = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
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
    use crate::protocol::encode_push;

    /// The frame as serde writes it: the reference the hand-written encoder must match.
    fn serde_frame(d: &Delta) -> Vec<u8> {
        #[derive(Serialize)]
        struct Data<'a> {
            delta: &'a Delta,
        }
        encode_push("PUBLISH_DELTA", &Data { delta: d })
    }

    #[test]
    fn hand_written_frame_matches_serde_byte_for_byte() {
        let base = Delta {
            server_id: 1838509846966272,
            delta_id: 123456,
            kind: "message".into(),
            channel_id: Some(1838509846966273),
            message_id: Some(1838509846969344),
            user_id: 1838509846927360,
            content: Some("x".repeat(128)),
            attachments: None,
            created_at: 1_795_000_000_123,
        };
        let mut cases = vec![base.clone()];
        for content in [
            "",
            "quote \" backslash \\ slash / tab \t nl \n cr \r nul \u{0} bell \u{7} del \u{7f}",
            "ünïcödé ✓ 𝄞 \u{2028}\u{2029}",
        ] {
            cases.push(Delta {
                content: Some(content.into()),
                ..base.clone()
            });
        }
        cases.push(Delta {
            kind: "member_joined".into(),
            channel_id: None,
            message_id: None,
            content: None,
            delta_id: 0,
            server_id: -5,
            created_at: -1,
            ..base.clone()
        });
        cases.push(Delta {
            kind: "ty\"pe".into(),
            attachments: Some(r#"[{"file_id":"7","name":"a \"b\".png","size":12}]"#.into()),
            ..base.clone()
        });
        cases.push(Delta {
            attachments: Some("not json".into()),
            user_id: i64::MIN,
            delta_id: i64::MAX,
            ..base.clone()
        });
        for d in &cases {
            assert_eq!(
                String::from_utf8_lossy(&d.publish_frame()),
                String::from_utf8_lossy(&serde_frame(d)),
                "{d:?}"
            );
        }
    }

    #[test]
    fn timestamps_match_rfc3339_ms() {
        // Day boundaries, leap days, the epoch, negative times, and a spread of instants.
        let mut samples = vec![
            0,
            -1,
            1,
            999,
            1000,
            86_399_999,
            86_400_000,
            -86_400_000,
            951_782_400_000,
        ];
        samples.extend((0..2000).map(|i| 1_700_000_000_000 + i * 3_600_007 + i * i));
        samples.extend((0..200).map(|i| -2_000_000_000_000 + i * 86_400_000 * 37));
        for ms in samples {
            let mut out = Vec::new();
            push_timestamp(&mut out, ms);
            assert_eq!(String::from_utf8(out).unwrap(), rfc3339_ms(ms), "{ms}");
        }
    }

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
