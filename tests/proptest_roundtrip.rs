//! Property tests for the line protocol's pure layers: `wire::line::LineReader` (framing) and
//! `protocol::frame` (decode, encode_success, encode_error).
//!
//! - A request built from an arbitrary action name, id (JSON scalar) and data object, written
//!   as a line, cut out by `LineReader` under arbitrary chunking and decoded, is the original
//!   request (action upper-cased).
//! - `encode_success` / `encode_error` give one line of valid JSON holding the same fields.
//! - `LineReader` yields the same frames, error and pending bytes however the input is
//!   chunked (`regression_cr_at_limit_split_before_lf` pins the case that once differed).
//!
//! Failing cases are saved under proptest-regressions/ (commit them). Cases per property:
//! proptest's default (256), or `PROPTEST_CASES=N`.

use chimed::protocol::{decode, encode_error, encode_success, ApiError, ErrorCode, Request};
use chimed::wire::line::{FrameError, LineReader};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

// ---------------------------------------------------------------------------------------
// Generators

/// Action names as clients send them: letters, digits and `_`, 1 to 64 bytes, any case.
fn action() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9_]{0,63}"
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9 _-]{0,12}",
        // Anything: quotes, backslashes, control characters (`\n`!), non-ASCII.
        1 => any::<String>(),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        short_float().prop_map(Value::from),
        any_float().prop_map(Value::from),
    ]
}

/// Floats as people write them: at most 13 significant digits, exponent -22..=7 (`1.5`,
/// `0.001`, `-123.456e3`). serde_json's default float parser is exact for these (written
/// back they have at most 14 digits, `.0` included: the significand stays below 2^53).
/// Longer ones come from `any_float`; without serde_json's `float_roundtrip` feature they
/// could come back one ULP off (see `regression_float_id_echo`).
fn short_float() -> impl Strategy<Value = f64> {
    (-9_999_999_999_999i64..=9_999_999_999_999, -22i32..=7).prop_map(|(m, e)| format!("{m}e{e}").parse().unwrap())
}

/// Any finite float (JSON has no NaN or infinities).
fn any_float() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |f| f.is_finite())
}

/// An id: any JSON scalar except null (null means "no id").
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        number(),
        string().prop_map(Value::String)
    ]
}

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![Just(Value::Null), scalar()];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(string(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn data() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(string(), value(), 0..6).prop_map(|m| m.into_iter().collect())
}

/// A request as the client means it (action in the case it sends it).
#[derive(Debug, Clone)]
struct Sent {
    action: String,
    id: Option<Value>,
    data: Map<String, Value>,
    /// Leave `data` out of the frame when it is empty.
    omit_empty_data: bool,
    /// End the line with `\r\n` instead of `\n`.
    crlf: bool,
    /// Blank lines (`\n` or `\r\n`) sent before the frame.
    blank_before: Vec<bool>,
}

fn sent() -> impl Strategy<Value = Sent> {
    (
        action(),
        prop::option::of(scalar()),
        data(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(any::<bool>(), 0..3),
    )
        .prop_map(|(action, id, data, omit_empty_data, crlf, blank_before)| Sent {
            action,
            id,
            data,
            omit_empty_data,
            crlf,
            blank_before,
        })
}

impl Sent {
    fn line(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for &cr in &self.blank_before {
            out.extend_from_slice(if cr { b"\r\n" } else { b"\n" });
        }
        let mut obj = Map::new();
        obj.insert("action".into(), json!(self.action));
        if let Some(id) = &self.id {
            obj.insert("id".into(), id.clone());
        }
        if !(self.omit_empty_data && self.data.is_empty()) {
            obj.insert("data".into(), Value::Object(self.data.clone()));
        }
        serde_json::to_writer(&mut out, &obj).unwrap();
        out.extend_from_slice(if self.crlf { b"\r\n" } else { b"\n" });
        out
    }

    fn expected(&self) -> Request {
        Request {
            action: self.action.to_ascii_uppercase(),
            id: self.id.clone(),
            data: self.data.clone(),
        }
    }
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

/// A frame limit and input for it: lines of lengths around the limit (so frames of exactly
/// `max` bytes and one over are common), ended by `\n`, `\r\n`, `\r` or nothing, with
/// stray bytes in between.
fn framer_case() -> impl Strategy<Value = (usize, Vec<u8>)> {
    (0usize..24).prop_flat_map(|max| {
        let piece = (
            0..=max + 2,
            prop::sample::select(vec![&b"\n"[..], b"\r\n", b"\r", b"", b"\r\r\n"]),
            prop::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(len, end, junk)| {
                let mut v = vec![b'a'; len];
                v.extend_from_slice(end);
                v.extend(junk);
                v
            });
        (Just(max), prop::collection::vec(piece, 0..12).prop_map(|p| p.concat()))
    })
}

/// Chunk sizes (cycled until the input is used up); never zero, so feeding always advances.
fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..48, 1..24)
}

/// Small chunks, so reads often end inside a line or between its `\r` and `\n`.
fn small_chunking() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..6, 1..24)
}

// ---------------------------------------------------------------------------------------
// Running the reader

/// What a reader produced: its frames, then the error or the bytes left pending.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    end: Result<usize, FrameError>,
}

/// Feeds `input` in chunks of the given sizes (cycled), draining every complete frame and
/// compacting after each read as the poll loop does; stops at the first error.
fn run(input: &[u8], sizes: &[usize], max: usize) -> Outcome {
    let mut r = LineReader::default();
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut i = 0;
    loop {
        loop {
            match r.next_frame(max) {
                Ok(Some(f)) => {
                    assert!(
                        !f.is_empty() && !f.contains(&b'\n') && f.len() <= max,
                        "bad frame {f:?}"
                    );
                    frames.push(f.to_vec());
                }
                Ok(None) => break,
                Err(e) => return Outcome { frames, end: Err(e) },
            }
        }
        r.compact();
        if fed == input.len() {
            return Outcome {
                frames,
                end: Ok(r.pending()),
            };
        }
        let n = sizes[i % sizes.len()].min(input.len() - fed);
        i += 1;
        r.extend(&input[fed..fed + n]);
        fed += n;
    }
}

fn parse_line(out: &[u8]) -> Map<String, Value> {
    assert_eq!(out.last(), Some(&b'\n'), "no terminator");
    let body = &out[..out.len() - 1];
    assert!(
        !body.contains(&b'\n'),
        "more than one line: {:?}",
        String::from_utf8_lossy(out)
    );
    match serde_json::from_slice(body).expect("valid JSON") {
        Value::Object(m) => m,
        v => panic!("not an object: {v}"),
    }
}

// ---------------------------------------------------------------------------------------
// Properties

proptest! {
    #[test]
    fn requests_survive_line_framing_and_decoding(frames in prop::collection::vec(sent(), 1..8), sizes in chunking()) {
        let input: Vec<u8> = frames.iter().flat_map(Sent::line).collect();
        let out = run(&input, &sizes, 1 << 20);
        prop_assert_eq!(out.end, Ok(0));
        prop_assert_eq!(out.frames.len(), frames.len());
        for (got, sent) in out.frames.iter().zip(&frames) {
            prop_assert_eq!(decode(got), Ok(sent.expected()));
        }
    }

    #[test]
    fn success_responses_are_one_json_line(action in action(), id in prop::option::of(scalar()), data in data()) {
        let action = action.to_ascii_uppercase();
        let v = parse_line(&encode_success(&action, id.as_ref(), &data));
        prop_assert_eq!(v.get("action"), Some(&json!(format!("{action}_RESPONSE"))));
        prop_assert_eq!(v.get("id"), id.as_ref());
        prop_assert_eq!(v.len(), 2 + usize::from(id.is_some()));
        let mut got = v["data"].as_object().expect("data object").clone();
        // `status` is flattened next to the handler's fields; handlers never send their own.
        if !data.contains_key("status") {
            prop_assert_eq!(got.remove("status"), Some(json!("success")));
            prop_assert_eq!(got, data);
        }
    }

    #[test]
    fn error_responses_are_one_json_line(
        action in prop::option::of(action()),
        id in prop::option::of(scalar()),
        code in error_code(),
        message in string(),
        retry in any::<u64>(),
    ) {
        let action = action.map(|a| a.to_ascii_uppercase());
        let err = ApiError { code, message: message.clone(), retry_after_ms: Some(retry) };
        let v = parse_line(&encode_error(action.as_deref(), id.as_ref(), &err));
        let want_action = action.map_or("ERROR".to_string(), |a| format!("{a}_RESPONSE"));
        prop_assert_eq!(v.get("action"), Some(&json!(want_action)));
        prop_assert_eq!(v.get("id"), id.as_ref());
        let mut want = json!({"status": "error", "code": code.as_str(), "message": message});
        if code == ErrorCode::RateLimited {
            want["retry_after_ms"] = json!(retry);
        }
        prop_assert_eq!(&v["data"], &want);
    }

    /// Chunking never changes what the reader yields.
    #[test]
    fn chunking_never_matters((max, input) in framer_case(), sizes in small_chunking()) {
        let whole = run(&input, &[usize::MAX], max);
        let chunked = run(&input, &sizes, max);
        prop_assert_eq!(chunked.frames, whole.frames);
        prop_assert_eq!(chunked.end, whole.end);
    }
}

proptest! {
    #[test]
    fn any_float_id_is_echoed_exactly(f in any_float()) {
        let id = Value::from(f);
        let req = decode(format!(r#"{{"action":"PING","id":{id}}}"#).as_bytes()).unwrap();
        prop_assert_eq!(req.id.as_ref(), Some(&id));
        let v = parse_line(&encode_success(&req.action, req.id.as_ref(), &Map::new()));
        prop_assert_eq!(v.get("id"), Some(&id));
    }
}

/// Found by the properties above (before their floats were restricted to `short_float`):
/// serde_json without its `float_roundtrip` feature parses some 17-significant-digit floats
/// to a neighbouring f64 (one ULP off). A client that sends `"id":-0.0012235798728736761`
/// (the shortest form of its f64, as JavaScript prints it) gets back
/// `"id":-0.001223579872873676`, a different number, so it cannot match the response.
/// Rust's `str::parse::<f64>` stands in for the client's (correct) JSON parser.
///
/// It also bites floats serde_json writes itself: `-3604376472758270.0` (16 digits plus the
/// `.0`) decodes as `-3604376472758270.5`, so a request re-encoded and decoded again changes.
#[test]
fn regression_float_id_echo() {
    for text in ["-0.0012235798728736761", "-3604376472758270.0"] {
        let client: f64 = text.parse().unwrap();
        let req = decode(format!(r#"{{"action":"PING","id":{text}}}"#).as_bytes()).unwrap();
        let out = encode_success(&req.action, req.id.as_ref(), &Map::new());
        let echoed = parse_line(&out)["id"].to_string();
        assert_eq!(echoed.parse::<f64>().unwrap(), client, "echoed {echoed} for {text}");
    }
}

/// Found by `chunking_never_matters` and the `line_reader` fuzz target: a frame of
/// exactly `max` bytes is accepted when `1234\r\n` arrives in one read, but refused as too
/// large when the read ends between the `\r` and the `\n`: the partial-line check
/// (`buf.len() - start > max`) counts the `\r`, which the complete-line check strips.
#[test]
fn regression_cr_at_limit_split_before_lf() {
    let mut r = LineReader::default();
    r.extend(b"1234\r\n");
    assert_eq!(r.next_frame(4), Ok(Some(&b"1234"[..])), "one read");

    let mut r = LineReader::default();
    r.extend(b"1234\r");
    assert_eq!(r.next_frame(4), Ok(None), "partial line of max bytes plus \\r");
    r.extend(b"\n");
    assert_eq!(r.next_frame(4), Ok(Some(&b"1234"[..])), "two reads");
}
