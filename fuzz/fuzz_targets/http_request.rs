//! Fuzz target: the HTTP/1.1 request side of `chimed::wire::http`: `parse_head` on arbitrary
//! bytes arriving in arbitrary pieces with small limits, the `ChunkedDecoder` on arbitrary
//! input (and on bodies it should accept) in arbitrary pieces with arbitrary output budgets,
//! and `parse_range`.
//!
//! Input layout: `[mode, a, b, n, plan[0..n], payload..]`; `mode % 4` picks the check:
//! - 0 `head`: limits `max_head = 1 + a * 8` (1..=2041 bytes), `max_headers = b % 17`; the
//!   payload arrives in the plan's chunk sizes (`plan[i] % 64`, 0 = a read of nothing) and
//!   `parse_head` runs on the whole buffer after each read, as the loop does, until it decides.
//!   Checked: no panic; the verdict is the one `parse_head` gives for the whole payload (the
//!   chunking never changes it: httparse keeps no state and the result depends only on the
//!   head's bytes); `Ok(None)` only within `max_head` bytes, `TooLarge` only past them; a head
//!   never consumes more than `max_head` bytes nor more than it was given; headers within
//!   `max_headers`, names lower case, values trimmed and free of CR/LF; the body framing
//!   agrees with the headers (no Content-Length with chunked, chunked only on HTTP/1.1, one
//!   Content-Length and its value); a WebSocket key only on an HTTP/1.1 GET upgrade. The
//!   accessors (`header`, `bearer`, `query_param`, `wants_websocket`) are exercised; a
//!   chunked body after the head goes through the decoder as in mode 1.
//! - 1 `chunked`: the payload as a chunked body, decoded in the plan's pieces with per-call
//!   output budgets derived from `a` and `b` (0 included). Checked: the same output, error
//!   and consumption as one call over the whole input with an unlimited budget; each call appends
//!   at most its budget; a finished decoder consumes nothing more.
//! - 2 `chunked round trip`: the payload split by the plan into chunks, encoded with
//!   `chunk` (plus, by `a`, chunk extensions, upper-case hex, trailers) and `last_chunk`,
//!   then trailing bytes of a next request; decoded in pieces it gives back exactly the
//!   payload, finishes, and stops at the end of the body.
//! - 3 `range`: `parse_range(payload as text, len)` with `len` from the plan bytes. Checked:
//!   a range lies within the resource; an exact form (`bytes=s-e`, `bytes=s-`, `bytes=-n`)
//!   built from the plan gives the range RFC 9110 says.
#![no_main]

use chimed::wire::http::{
    chunk, last_chunk, parse_head, parse_range, percent_decode, BodyKind, ChunkError, ChunkedDecoder, HeadError,
    Limits, Method, RequestHead,
};
use libfuzzer_sys::fuzz_target;

/// Sizes of successive reads: the plan repeated until `len` bytes are used up; a plan of
/// only empty reads gets one read with everything.
fn pieces(plan: &[u8], len: usize, modulo: u8) -> Vec<usize> {
    let mut out = Vec::new();
    let mut fed = 0;
    let mut step = 0;
    let mut idle = 0;
    while fed < len {
        let mut size = if plan.is_empty() {
            len
        } else {
            (plan[step % plan.len()] % modulo) as usize
        };
        step += 1;
        if size == 0 {
            idle += 1;
            if idle > plan.len() {
                size = len - fed;
            }
        }
        let size = size.min(len - fed);
        out.push(size);
        fed += size;
    }
    out
}

/// A verdict, comparable (RequestHead has no PartialEq).
fn verdict(r: &Result<Option<(RequestHead, usize)>, HeadError>) -> String {
    format!("{r:?}")
}

fn check_head(head: &RequestHead, n: usize, given: usize, limits: &Limits) {
    assert!(n > 0 && n <= given && n <= limits.max_head, "consumed {n} of {given}");
    assert!(
        head.headers.len() <= limits.max_headers,
        "{} headers",
        head.headers.len()
    );
    assert!(head.minor_version <= 1);
    assert!(head.path == "*" || head.path.starts_with('/'), "path {:?}", head.path);
    assert!(head.path != "*" || head.method == Method::Options);
    for (name, value) in &head.headers {
        assert!(
            !name.is_empty() && !name.bytes().any(|b| b.is_ascii_uppercase()),
            "name {name:?}"
        );
        assert!(!value.contains(['\r', '\n']), "value {value:?}");
        assert_eq!(value.trim_matches([' ', '\t']), value, "untrimmed value");
    }
    let count = |n: &str| head.headers.iter().filter(|(h, _)| h == n).count();
    let (cl, te) = (count("content-length"), count("transfer-encoding"));
    match &head.body {
        BodyKind::None => assert_eq!((cl, te), (0, 0)),
        BodyKind::Length(len) => {
            assert_eq!((cl, te), (1, 0));
            assert_eq!(head.header("content-length").map(str::parse::<u64>), Some(Ok(*len)));
        }
        BodyKind::Chunked => {
            assert_eq!((cl, te), (0, 1));
            assert_eq!(head.minor_version, 1, "chunked on HTTP/1.0");
        }
    }
    if head.websocket_key.is_some() {
        assert!(head.method == Method::Get && head.minor_version == 1 && head.wants_websocket());
    }
    assert!(!head.expect_continue || head.minor_version == 1);
    if head.minor_version == 0 && head.header("connection").is_none() {
        assert!(!head.keep_alive);
    }
    // Accessors on whatever arrived.
    let _ = head.bearer();
    let _ = percent_decode(&head.path);
    for (name, _) in &head.headers {
        assert!(head.header(&name.to_ascii_uppercase()).is_some());
        let _ = head.query_param(name);
    }
    let _ = head.query_param("token");
    let _ = head.query_param("");
}

fn head_mode(a: u8, b: u8, plan: &[u8], payload: &[u8]) {
    let limits = Limits {
        max_head: 1 + a as usize * 8,
        max_headers: (b % 17) as usize,
    };
    let whole = parse_head(payload, &limits);
    let mut buf = Vec::new();
    let mut decided = None;
    for size in pieces(plan, payload.len(), 64) {
        buf.extend_from_slice(&payload[buf.len()..buf.len() + size]);
        let r = parse_head(&buf, &limits);
        match &r {
            Ok(None) => assert!(buf.len() <= limits.max_head, "undecided past max_head"),
            Err(HeadError::TooLarge) => assert!(buf.len() > limits.max_head, "TooLarge within max_head"),
            Err(e) => assert!(matches!(e.status(), 400 | 431 | 501), "{e:?}"),
            Ok(Some((head, n))) => check_head(head, *n, buf.len(), &limits),
        }
        if !matches!(r, Ok(None)) {
            decided = Some(r);
            break;
        }
    }
    let r = decided.unwrap_or_else(|| parse_head(&buf, &limits));
    assert_eq!(verdict(&r), verdict(&whole), "the chunking changed the verdict");
    if let Ok(Some((head, n))) = r {
        if head.body == BodyKind::Chunked {
            chunked_mode(a, b, plan, &payload[n..]);
        }
    }
}

/// Decodes `input` in one call with no output limit.
fn decode_whole(input: &[u8]) -> (Vec<u8>, Result<(usize, bool), ChunkError>) {
    let mut out = Vec::new();
    let r = ChunkedDecoder::default().decode(input, &mut out, usize::MAX);
    (out, r)
}

/// Decodes `input` read in the plan's pieces with per-call output budgets; returns the
/// output and either the error or (consumed, finished).
fn decode_pieces(a: u8, b: u8, plan: &[u8], input: &[u8]) -> (Vec<u8>, Result<(usize, bool), ChunkError>) {
    let budgets = [0, 1, (a % 16) as usize, b as usize, usize::MAX];
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    let (mut received, mut consumed) = (0, 0);
    let mut call = 0;
    for size in pieces(plan, input.len(), 32) {
        received += size;
        // Like the loop: decode what has arrived, at most a few calls per read.
        for _ in 0..2 {
            let budget = budgets[(call + a as usize) % budgets.len()];
            call += 1;
            let before = out.len();
            match d.decode(&input[consumed..received], &mut out, budget) {
                Ok((n, done)) => {
                    assert!(out.len() - before <= budget, "over the output budget");
                    assert!(n <= received - consumed);
                    assert_eq!(done, d.is_done());
                    consumed += n;
                    if done {
                        // Finished: nothing more is consumed.
                        assert_eq!(
                            d.decode(&input[consumed..received], &mut out, usize::MAX),
                            Ok((0, true))
                        );
                        return (out, Ok((consumed, true)));
                    }
                }
                Err(e) => return (out, Err(e)),
            }
        }
    }
    // Everything has arrived: drain with an unlimited budget.
    match d.decode(&input[consumed..], &mut out, usize::MAX) {
        Ok((n, done)) => (out, Ok((consumed + n, done))),
        Err(e) => (out, Err(e)),
    }
}

fn chunked_mode(a: u8, b: u8, plan: &[u8], input: &[u8]) {
    let (want_out, want) = decode_whole(input);
    let (got_out, got) = decode_pieces(a, b, plan, input);
    match (&want, &got) {
        (Err(_), _) | (_, Err(_)) => {
            assert_eq!(got, want, "the pieces changed the error");
            // Both emitted every data byte before the bad one.
            assert_eq!(got_out, want_out, "output before the error differs");
        }
        (Ok(w), Ok(g)) => {
            assert_eq!(g, w, "consumption differs");
            assert_eq!(got_out, want_out, "output differs");
        }
    }
}

fn round_trip_mode(a: u8, b: u8, plan: &[u8], payload: &[u8]) {
    let mut body = Vec::new();
    let mut pos = 0;
    for (i, size) in pieces(plan, payload.len(), 200).into_iter().enumerate() {
        if size == 0 {
            continue; // an empty chunk would end the body
        }
        let data = &payload[pos..pos + size];
        pos += size;
        let mut c = chunk(data);
        if a & 1 != 0 && i % 2 == 0 {
            // A chunk extension after the size: `5;name="v"\r\n`.
            let at = c.iter().position(|&x| x == b'\r').unwrap_or(0);
            c.splice(at..at, b";ext=\"v\"".iter().copied());
        }
        if a & 2 != 0 {
            // Hex digits in upper case, with leading zeros.
            let at = c.iter().position(|&x| x == b'\r').unwrap_or(0);
            let upper: Vec<u8> = c[..at].iter().map(u8::to_ascii_uppercase).collect();
            c.splice(..at, b"00".iter().copied().chain(upper));
        }
        body.extend(c);
    }
    if a & 4 != 0 {
        body.extend_from_slice(b"0\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n");
    } else {
        body.extend_from_slice(last_chunk());
    }
    let end = body.len();
    body.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
    let (whole_out, whole) = decode_whole(&body);
    assert_eq!(whole, Ok((end, true)), "whole body not accepted");
    assert_eq!(whole_out, payload);
    let (out, r) = decode_pieces(a, b, plan, &body);
    assert_eq!(r, Ok((end, true)), "body in pieces not accepted");
    assert_eq!(out, payload);
}

fn range_mode(plan: &[u8], payload: &[u8]) {
    let mut word = [0u8; 8];
    for (w, p) in word.iter_mut().zip(plan) {
        *w = *p;
    }
    let raw = u64::from_le_bytes(word);
    // Mostly small resources, sometimes anything.
    let len = if plan.len() > 8 { raw } else { raw % 4096 };
    let check = |value: &str| {
        let r = parse_range(value, len);
        if let Ok(Some((s, e))) = r {
            assert!(s <= e && e < len, "{value:?} of {len}: {s}..={e}");
        }
        r
    };
    if let Ok(text) = std::str::from_utf8(payload) {
        let _ = check(text);
    }
    // Exact forms built from the payload's first bytes.
    let num = |bytes: &[u8]| {
        bytes
            .iter()
            .fold(0u64, |n, &x| n.wrapping_mul(251).wrapping_add(u64::from(x)))
            % 5000
    };
    let (x, y) = payload.split_at(payload.len() / 2);
    let (s, e) = (num(x), num(y));
    let bounded = if s <= e {
        if s < len {
            Ok(Some((s, e.min(len - 1))))
        } else {
            Err(())
        }
    } else {
        Ok(None)
    };
    assert_eq!(check(&format!("bytes={s}-{e}")), bounded, "bytes={s}-{e} of {len}");
    assert_eq!(
        check(&format!("Bytes = {s} - {e} ")),
        bounded,
        "spaced bytes={s}-{e} of {len}"
    );
    let open = if s < len { Ok(Some((s, len - 1))) } else { Err(()) };
    assert_eq!(check(&format!("bytes={s}-")), open, "bytes={s}- of {len}");
    let suffix = if e == 0 || len == 0 {
        Err(())
    } else {
        Ok(Some((len - e.min(len), len - 1)))
    };
    assert_eq!(check(&format!("bytes=-{e}")), suffix, "bytes=-{e} of {len}");
    assert_eq!(
        check(&format!("bytes={s}-{e},0-1")),
        Ok(None),
        "several ranges are ignored"
    );
    assert_eq!(check(&format!("items={s}-{e}")), Ok(None), "other units are ignored");
}

fuzz_target!(|data: &[u8]| {
    let [mode, a, b, n, rest @ ..] = data else {
        return;
    };
    let n = (*n % 32) as usize;
    let Some(plan) = rest.get(..n) else {
        return;
    };
    let payload = &rest[n..];
    match mode % 4 {
        0 => head_mode(*a, *b, plan, payload),
        1 => chunked_mode(*a, *b, plan, payload),
        2 => round_trip_mode(*a, *b, plan, payload),
        _ => range_mode(plan, payload),
    }
});
