//! Fuzz target: `chimed::wire::websocket`: the client-frame `Decoder` on arbitrary bytes
//! arriving in arbitrary pieces, and the round trip of the frame writers (`header`, `frame`,
//! `close_frame`) through the decoder.
//!
//! Input layout: `[mode, a, n, plan[0..n], payload..]`; `mode % 3` picks the check:
//! - 0 `decode`: the payload as client bytes, `max_message = a * 4` (0..=1020), read in the
//!   plan's chunk sizes (`plan[i] % 64`, 0 = an empty read), draining after each read as the
//!   loop does. Checked: no panic; the same messages and error as decoding the whole payload
//!   at once; text is UTF-8; data messages within `max_message`, control payloads within 125
//!   bytes; after `Ok(None)` the buffer holds only undecoded bytes, at most one partial frame
//!   (`< 14 + max(max_message, 125)` bytes); after a close nothing more comes out.
//! - 1 `round trip`: the payload read as a script of messages (text, binary, ping, pong;
//!   data messages split into fragments with pings between them), written with `header` as a
//!   client would (masked, FIN cleared on all but the last fragment), then a close frame from
//!   `close_frame`; decoded whole and in the plan's pieces it gives back exactly the
//!   messages, then the close (or the protocol error for a close code a client may not send).
//! - 2 `header`: `header(opcode, len)` for an arbitrary length uses the shortest length form
//!   and reads back as FIN, the opcode and `len`; `frame` is that header and the payload;
//!   `close_frame` cuts its reason at a character boundary within 123 bytes.
#![no_main]

use chimed::wire::websocket::{
    close_frame, frame, header, Decoder, Message, WsError, MAX_CONTROL_PAYLOAD, OP_BINARY, OP_CLOSE, OP_CONTINUATION,
    OP_PING, OP_PONG, OP_TEXT,
};
use libfuzzer_sys::fuzz_target;

type Outcome = (Vec<Message>, Option<WsError>);

/// Sizes of successive reads (see http_request.rs): the plan repeated until `len` bytes
/// are used; a plan of only empty reads gets one read with everything.
fn pieces(plan: &[u8], len: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut fed, mut step, mut idle) = (0, 0, 0);
    while fed < len {
        let mut size = if plan.is_empty() {
            len
        } else {
            (plan[step % plan.len()] % 64) as usize
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

fn check_message(m: &Message, max_message: usize) {
    match m {
        Message::Text(t) => {
            assert!(std::str::from_utf8(t).is_ok(), "text not UTF-8");
            assert!(t.len() <= max_message, "text of {} over {max_message}", t.len());
        }
        Message::Binary(b) => assert!(b.len() <= max_message, "binary of {} over {max_message}", b.len()),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= MAX_CONTROL_PAYLOAD),
        Message::Close(code, reason) => {
            assert!(reason.len() <= MAX_CONTROL_PAYLOAD - 2);
            assert!(code.is_some() || reason.is_empty());
        }
    }
}

/// Drains `d` over `buf` until it wants more bytes; false once an error or a close ended it.
fn drain(d: &mut Decoder, buf: &mut Vec<u8>, max_message: usize, got: &mut Outcome) -> bool {
    loop {
        match d.next(buf) {
            Ok(Some(m)) => {
                check_message(&m, max_message);
                let close = matches!(m, Message::Close(..));
                got.0.push(m);
                if close {
                    assert!(d.is_closed());
                    // Whatever follows a close is discarded.
                    assert_eq!(d.next(buf), Ok(None));
                    assert!(buf.is_empty(), "bytes kept after a close");
                    return false;
                }
            }
            Ok(None) => {
                assert_eq!(d.pending(buf), buf.len(), "decoded bytes left in the buffer");
                let bound = 14 + max_message.max(MAX_CONTROL_PAYLOAD);
                assert!(buf.len() < bound, "{} bytes kept (bound {bound})", buf.len());
                return true;
            }
            Err(e) => {
                assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                got.1 = Some(e);
                return false;
            }
        }
    }
}

fn decode_whole(input: &[u8], max_message: usize) -> Outcome {
    let mut got = (Vec::new(), None);
    let mut d = Decoder::new(max_message);
    let mut buf = input.to_vec();
    drain(&mut d, &mut buf, max_message, &mut got);
    got
}

fn decode_pieces(input: &[u8], max_message: usize, plan: &[u8]) -> Outcome {
    let mut got = (Vec::new(), None);
    let mut d = Decoder::new(max_message);
    let mut buf = Vec::new();
    let mut fed = 0;
    for size in pieces(plan, input.len()) {
        buf.extend_from_slice(&input[fed..fed + size]);
        fed += size;
        if !drain(&mut d, &mut buf, max_message, &mut got) {
            break;
        }
    }
    got
}

fn decode_mode(a: u8, plan: &[u8], payload: &[u8]) {
    let max_message = a as usize * 4;
    let whole = decode_whole(payload, max_message);
    let got = decode_pieces(payload, max_message, plan);
    assert_eq!(got, whole, "the chunking changed the result");
}

/// A client frame: `header`'s server frame with FIN as given, the mask bit and the key.
fn client_frame(opcode: u8, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let (mut h, n) = header(opcode, payload.len());
    if !fin {
        h[0] &= 0x7f;
    }
    h[1] |= 0x80;
    let mut out = h[..n].to_vec();
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Reads the next `n` bytes of the script (fewer at its end).
fn take<'a>(script: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = script.split_at(n.min(script.len()));
    *script = rest;
    head
}

fn round_trip_mode(a: u8, plan: &[u8], payload: &[u8]) {
    let mut script = payload;
    let mut wire = Vec::new();
    let mut want = Vec::new();
    let mut count = 0u8;
    while let [c, len, rest @ ..] = script {
        let (c, len) = (*c, *len as usize);
        script = rest;
        count = count.wrapping_add(1);
        let key = [c, count, len as u8, a];
        match c % 4 {
            0 | 1 => {
                let text = c % 4 == 0;
                let len = if c & 0x80 != 0 { len * 16 } else { len };
                let bytes = take(&mut script, len);
                let data = if text {
                    String::from_utf8_lossy(bytes).into_owned().into_bytes()
                } else {
                    bytes.to_vec()
                };
                // Up to four fragments, cut anywhere (even inside a UTF-8 sequence).
                let fragments = ((c >> 2) & 3) as usize + 1;
                let mut cuts: Vec<usize> = (1..fragments).map(|i| data.len() * i / fragments).collect();
                cuts.push(data.len());
                let mut start = 0;
                for (i, &end) in cuts.iter().enumerate() {
                    let opcode = match (i, text) {
                        (0, true) => OP_TEXT,
                        (0, false) => OP_BINARY,
                        _ => OP_CONTINUATION,
                    };
                    let last = i + 1 == cuts.len();
                    wire.extend(client_frame(opcode, last, &data[start..end], key));
                    start = end;
                    if !last && c & 0x10 != 0 {
                        // A ping between fragments is answered before the message completes.
                        wire.extend(client_frame(OP_PING, true, &[c, i as u8], key));
                        want.push(Message::Ping(vec![c, i as u8]));
                    }
                }
                want.push(if text {
                    Message::Text(data)
                } else {
                    Message::Binary(data)
                });
            }
            kind => {
                let bytes = take(&mut script, len.min(MAX_CONTROL_PAYLOAD)).to_vec();
                let opcode = if kind == 2 { OP_PING } else { OP_PONG };
                wire.extend(client_frame(opcode, true, &bytes, key));
                want.push(if kind == 2 {
                    Message::Ping(bytes)
                } else {
                    Message::Pong(bytes)
                });
            }
        }
    }
    // Then a close, from the server's writer, masked as a client would send it.
    let code = u16::from_be_bytes([a, count]);
    let reason = String::from_utf8_lossy(script).into_owned();
    let close = close_frame(code, &reason);
    let (fin_op, len7) = (close[0], close[1]);
    assert_eq!(fin_op, 0x80 | OP_CLOSE);
    assert!(usize::from(len7) <= MAX_CONTROL_PAYLOAD && close.len() == 2 + usize::from(len7));
    let cut = std::str::from_utf8(&close[4..]).expect("close reason cut inside a character");
    wire.extend(client_frame(OP_CLOSE, true, &close[2..], [a, 1, 2, 3]));
    let mut error = None;
    if matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        want.push(Message::Close(Some(code), cut.to_string()));
    } else {
        error = Some(WsError::Protocol("invalid close code"));
    }
    // Bytes after the close are never looked at.
    wire.extend_from_slice(b"\x00\xffgarbage");

    let want = (want, error);
    let whole = decode_whole(&wire, 1 << 20);
    assert_eq!(whole, want, "decoded whole");
    assert_eq!(decode_pieces(&wire, 1 << 20, plan), want, "decoded in pieces");
}

fn header_mode(a: u8, plan: &[u8], payload: &[u8]) {
    let mut word = [0u8; 8];
    for (w, p) in word.iter_mut().zip(plan) {
        *w = *p;
    }
    let opcode = a & 0x0f;
    // Any length a 64-bit frame can carry (the top bit is reserved).
    let len = (u64::from_le_bytes(word) >> (a >> 6)) & (u64::MAX >> 1);
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    let (h, n) = header(opcode, len);
    assert_eq!(h[0], 0x80 | opcode, "FIN and opcode");
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let read = match (h[1], n) {
        (126, 4) => u64::from(u16::from_be_bytes([h[2], h[3]])),
        (127, 10) => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&h[2..10]);
            u64::from_be_bytes(be)
        }
        (l, 2) if l < 126 => u64::from(l),
        other => panic!("header {other:?} for {len}"),
    };
    assert_eq!(read, len as u64, "length read back");
    let shortest = if len < 126 {
        2
    } else if len <= 0xffff {
        4
    } else {
        10
    };
    assert_eq!(n, shortest, "length form for {len}");
    assert!(h[n..].iter().all(|&b| b == 0));

    let f = frame(opcode, payload);
    let (h, n) = header(opcode, payload.len());
    assert_eq!(&f[..n], &h[..n]);
    assert_eq!(&f[n..], payload);

    // close_frame: the longest prefix of the reason within 123 bytes, cut at a boundary.
    let reason = String::from_utf8_lossy(payload);
    let code = u16::from_be_bytes([a, plan.first().copied().unwrap_or(0)]);
    let c = close_frame(code, &reason);
    assert_eq!(c[0], 0x80 | OP_CLOSE);
    let body = &c[2..];
    assert_eq!(usize::from(c[1]), body.len());
    assert!(body.len() <= MAX_CONTROL_PAYLOAD);
    assert_eq!(&body[..2], &code.to_be_bytes());
    let cut = std::str::from_utf8(&body[2..]).expect("reason cut inside a character");
    assert!(reason.starts_with(cut));
    if cut.len() < reason.len() {
        let next = reason[cut.len()..].chars().next().map_or(0, char::len_utf8);
        assert!(cut.len() + next > MAX_CONTROL_PAYLOAD - 2, "reason cut short");
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, a, n, rest @ ..] = data else {
        return;
    };
    let n = (*n % 32) as usize;
    let Some(plan) = rest.get(..n) else {
        return;
    };
    let payload = &rest[n..];
    match mode % 3 {
        0 => decode_mode(*a, plan, payload),
        1 => round_trip_mode(*a, plan, payload),
        _ => header_mode(*a, plan, payload),
    }
});
