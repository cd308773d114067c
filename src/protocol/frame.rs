//! Frames: the JSON envelope of SPEC §3, decoded from and encoded to bytes.
//!
//! Decoding is a pure function over one frame's bytes (the transport has already cut the
//! frame out of the stream). Encoding produces the canonical frame bytes: the JSON object
//! followed by `\n`, ready for the line protocol; other transports re-frame them.

use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{ApiError, ErrorCode};

/// A decoded request frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The action as sent, upper-cased (`post_message` and `POST_MESSAGE` are the same).
    pub action: String,
    /// The client's correlation id, echoed on the response. Always a JSON scalar.
    pub id: Option<Value>,
    /// The action's arguments; an empty object when absent.
    pub data: Map<String, Value>,
}

/// Why a frame could not be turned into a [`Request`]. Carries whatever could be read,
/// so the error response can still echo the action and id.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub action: Option<String>,
    pub id: Option<Value>,
    pub error: ApiError,
}

/// Decodes one frame (without its line terminator).
pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
    let fail = |action: Option<String>, id: Option<Value>, msg: &str| DecodeError {
        action,
        id,
        error: ApiError::bad_request(msg),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| fail(None, None, "frame is not valid UTF-8"))?;
    // serde_json stops at a nesting depth of 128, so a deeply nested line is an error here,
    // not a stack overflow.
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError {
        action: None,
        id: None,
        error: ApiError::bad_request(format!("invalid JSON: {e}")),
    })?;
    let Value::Object(mut obj) = value else {
        return Err(fail(None, None, "frame must be a JSON object"));
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => Some(v),
        Some(_) => {
            let action = obj.get("action").and_then(Value::as_str).map(str::to_ascii_uppercase);
            return Err(fail(action, None, "id must be a JSON scalar"));
        }
    };
    let action = match obj.remove("action") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 64 => s.to_ascii_uppercase(),
        Some(Value::String(_)) => return Err(fail(None, id, "action must be 1 to 64 characters")),
        Some(_) => return Err(fail(None, id, "action must be a string")),
        None => return Err(fail(None, id, "missing action")),
    };
    let data = match obj.remove("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(fail(Some(action), id, "data must be a JSON object")),
    };
    Ok(Request { action, id, data })
}

#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
    data: D,
}

#[derive(Serialize)]
struct Success<'a, R: Serialize> {
    status: &'static str,
    #[serde(flatten)]
    rest: &'a R,
}

#[derive(Serialize)]
struct Failure<'a> {
    status: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

/// The response action for a request action: `PING` -> `PING_RESPONSE`.
pub fn response_action(action: &str) -> String {
    format!("{action}_RESPONSE")
}

fn encode<D: Serialize>(action: &str, id: Option<&Value>, data: D) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    // Serialising maps of Values and plain structs cannot fail.
    if serde_json::to_writer(&mut out, &Envelope { action, id, data }).is_err() {
        out.clear();
        out.extend_from_slice(
            br#"{"action":"ERROR","data":{"status":"error","code":"internal","message":"encoding failed"}}"#,
        );
    }
    out.push(b'\n');
    out
}

/// A success response: `{"action": "<A>_RESPONSE", "id": .., "data": {"status": "success", ..}}`.
pub fn encode_success(action: &str, id: Option<&Value>, data: &Map<String, Value>) -> Vec<u8> {
    encode_success_with(action, id, data)
}

/// A success response whose data (after `status`) is any object-shaped value.
pub fn encode_success_with<R: Serialize>(action: &str, id: Option<&Value>, data: &R) -> Vec<u8> {
    encode(
        &response_action(action),
        id,
        Success {
            status: "success",
            rest: data,
        },
    )
}

/// An error response. Without a readable action the frame's action is `ERROR`.
pub fn encode_error(action: Option<&str>, id: Option<&Value>, err: &ApiError) -> Vec<u8> {
    let name = match action {
        Some(a) => response_action(a),
        None => "ERROR".to_string(),
    };
    let data = Failure {
        status: "error",
        code: err.code.as_str(),
        message: &err.message,
        retry_after_ms: if err.code == ErrorCode::RateLimited {
            err.retry_after_ms
        } else {
            None
        },
    };
    encode(&name, id, data)
}

/// A server push (no id): `{"action": "PUBLISH_DELTA", "data": {..}}`.
pub fn encode_push<D: Serialize>(action: &str, data: &D) -> Vec<u8> {
    encode(action, None, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(out: &[u8]) -> Value {
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out[..out.len() - 1]).unwrap()
    }

    #[test]
    fn decodes_envelope() {
        let r = decode(br#"{"action":"ping","id":7,"data":{"x":1}}"#).unwrap();
        assert_eq!(r.action, "PING");
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(r.data.get("x"), Some(&json!(1)));
        let r = decode(br#"{"action":"PING"}"#).unwrap();
        assert!(r.id.is_none() && r.data.is_empty());
    }

    #[test]
    fn rejects_bad_frames() {
        for (input, has_action) in [
            (&b"\xff\xfe"[..], false),
            (b"{not json", false),
            (b"[1,2]", false),
            (b"42", false),
            (br#"{"action":5}"#, false),
            (br#"{"id":1}"#, false),
            (br#"{"action":"X","data":[1]}"#, true),
            (br#"{"action":"X","id":{"a":1}}"#, true),
        ] {
            let e = decode(input).unwrap_err();
            assert_eq!(e.error.code, ErrorCode::BadRequest, "{input:?}");
            assert_eq!(e.action.is_some(), has_action, "{input:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = vec![b'['; 200_000];
        assert_eq!(decode(&deep).unwrap_err().error.code, ErrorCode::BadRequest);
    }

    #[test]
    fn keeps_id_when_action_unreadable() {
        let e = decode(br#"{"action":[],"id":"abc"}"#).unwrap_err();
        assert_eq!(e.id, Some(json!("abc")));
        let out = parse(&encode_error(None, e.id.as_ref(), &e.error));
        assert_eq!(
            out,
            json!({"action":"ERROR","id":"abc","data":{"status":"error","code":"bad_request","message":"action must be a string"}})
        );
    }

    #[test]
    fn encodes_success_and_errors() {
        let mut m = Map::new();
        m.insert("pong".into(), json!(true));
        let out = parse(&encode_success("PING", Some(&json!("a")), &m));
        assert_eq!(
            out,
            json!({"action":"PING_RESPONSE","id":"a","data":{"status":"success","pong":true}})
        );
        let out = parse(&encode_error(Some("POST_MESSAGE"), None, &ApiError::rate_limited(250)));
        assert_eq!(out["action"], "POST_MESSAGE_RESPONSE");
        assert_eq!(out["data"]["code"], "rate_limited");
        assert_eq!(out["data"]["retry_after_ms"], 250);
        assert!(out.get("id").is_none());
    }
}
