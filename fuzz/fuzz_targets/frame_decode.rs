//! Fuzz target: `chimed::protocol::decode` on arbitrary bytes (one frame, as the line
//! framer hands it over).
//!
//! Checked: no panic (deep nesting, bad UTF-8, huge numbers, odd escapes); a decoded request
//! is well formed (action 1-64 bytes, no ASCII lower case; id a scalar); the responses the
//! server would build for it (`encode_success` with its data, `encode_error`) are one line
//! of valid JSON that parses back to the same action, id and fields; the request written
//! back as a frame decodes to the same request; a refused frame still gets an `ERROR` /
//! `<ACTION>_RESPONSE` line echoing what could be read.
#![no_main]

use chimed::protocol::{decode, encode_error, encode_success, ApiError, ErrorCode, Request};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

/// One `\n`-terminated line holding one JSON object.
fn parse_line(out: &[u8]) -> Map<String, Value> {
    assert_eq!(out.last(), Some(&b'\n'), "no line terminator");
    let body = &out[..out.len() - 1];
    assert!(!body.contains(&b'\n'), "encoded frame spans lines");
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => m,
        other => panic!(
            "encoded frame is not a JSON object: {other:?} from {:?}",
            String::from_utf8_lossy(out)
        ),
    }
}

fn check_error_line(out: &[u8], action: Option<&str>, id: Option<&Value>, err: &ApiError) {
    let v = parse_line(out);
    let want_action = action.map_or("ERROR".to_string(), |a| format!("{a}_RESPONSE"));
    assert_eq!(v.get("action"), Some(&Value::String(want_action)));
    assert_eq!(v.get("id"), id);
    let data = v.get("data").and_then(Value::as_object).expect("data object");
    assert_eq!(data.get("status"), Some(&json!("error")));
    assert_eq!(data.get("code"), Some(&json!(err.code.as_str())));
    assert_eq!(data.get("message"), Some(&json!(err.message)));
}

fn check_request(req: &Request) {
    assert!(
        !req.action.is_empty() && req.action.len() <= 64,
        "action length {}",
        req.action.len()
    );
    assert!(
        !req.action.bytes().any(|b| b.is_ascii_lowercase()),
        "action not upper-cased"
    );
    if let Some(id) = &req.id {
        assert!(
            matches!(id, Value::Bool(_) | Value::Number(_) | Value::String(_)),
            "id {id:?}"
        );
    }

    // The success response for it, with its own data as the payload.
    let v = parse_line(&encode_success(&req.action, req.id.as_ref(), &req.data));
    assert_eq!(v.get("action"), Some(&json!(format!("{}_RESPONSE", req.action))));
    assert_eq!(v.get("id"), req.id.as_ref(), "id not echoed");
    let mut data = v.get("data").and_then(Value::as_object).expect("data object").clone();
    // `status` is flattened in next to the data's own fields; a request that sends its own
    // `status` key gets two of them (the parser keeps the last), which handlers never do.
    if !req.data.contains_key("status") {
        assert_eq!(data.remove("status"), Some(json!("success")));
        assert_eq!(data, req.data, "data changed");
    }

    // An error response for it.
    let err = ApiError::rate_limited(17);
    check_error_line(
        &encode_error(Some(&req.action), req.id.as_ref(), &err),
        Some(&req.action),
        req.id.as_ref(),
        &err,
    );
    let err = ApiError::new(ErrorCode::Forbidden, "no \"quotes\"\n or newlines");
    check_error_line(
        &encode_error(Some(&req.action), req.id.as_ref(), &err),
        Some(&req.action),
        req.id.as_ref(),
        &err,
    );

    // Written back as a frame, it decodes to itself.
    let mut frame = Map::new();
    frame.insert("action".into(), json!(req.action));
    if let Some(id) = &req.id {
        frame.insert("id".into(), id.clone());
    }
    frame.insert("data".into(), Value::Object(req.data.clone()));
    let bytes = serde_json::to_vec(&frame).expect("serialise");
    assert_eq!(decode(&bytes).as_ref(), Ok(req), "re-decoded request differs");
}

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(req) => check_request(&req),
        Err(e) => {
            assert_eq!(e.error.code, ErrorCode::BadRequest);
            if let Some(id) = &e.id {
                assert!(
                    matches!(id, Value::Bool(_) | Value::Number(_) | Value::String(_)),
                    "id {id:?}"
                );
            }
            let out = encode_error(e.action.as_deref(), e.id.as_ref(), &e.error);
            check_error_line(&out, e.action.as_deref(), e.id.as_ref(), &e.error);
        }
    }
});
