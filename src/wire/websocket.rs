//! The WebSocket transport (RFC 6455), server side: the handshake answer, a frame
//! [`Decoder`] for what clients send, and frame writers for what the server sends.
//!
//! Pure functions over bytes, like [`super::line`]; no sockets here. The HTTP upgrade request
//! itself is parsed by [`super::http::parse_head`] (its `websocket_key`).
//!
//! The decoder enforces the client side of the RFC: every frame masked, RSV bits 0 (no
//! extensions are negotiated), known opcodes only, control frames unfragmented and at most
//! 125 bytes, continuation frames only inside a fragmented message, 64-bit lengths with the
//! top bit clear, text valid UTF-8 (checked fragment by fragment, so a bad byte fails at
//! once), close codes from the allowed ranges. A message longer than `max_message` fails as
//! soon as a frame header announces it, before its payload is buffered.

use std::fmt;

use base64::Engine;
use sha1::{Digest, Sha1};

pub const OP_CONTINUATION: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// The most payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The complete `101 Switching Protocols` answer to a valid upgrade request.
pub fn handshake_response(client_key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(client_key)
    )
    .into_bytes()
}

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Valid UTF-8.
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Status code (if the client sent one) and reason. Answer with a close frame (echoing
    /// the code, or 1000) and close the connection; the decoder ignores anything after it.
    Close(Option<u16>, String),
}

/// Why a client's frames were refused; send `close_frame(e.close_code(), ..)` and close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// A broken rule of the protocol (close code 1002).
    Protocol(&'static str),
    /// A message over the limit (1009).
    TooBig,
    /// Text (or a close reason) that is not UTF-8 (1007).
    InvalidUtf8,
}

impl WsError {
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::TooBig => 1009,
            WsError::InvalidUtf8 => 1007,
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Protocol(m) => write!(f, "websocket protocol error: {m}"),
            WsError::TooBig => f.write_str("websocket message too big"),
            WsError::InvalidUtf8 => f.write_str("websocket text is not UTF-8"),
        }
    }
}

impl std::error::Error for WsError {}

/// A fragmented data message still arriving.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: Vec<u8>,
    /// `data[..utf8_ok]` is known valid UTF-8 (text only); the rest is at most an
    /// incomplete sequence waiting for the next fragment.
    utf8_ok: usize,
}

/// Turns the client's byte stream into messages. One decoder per connection, always fed the
/// same buffer.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Bytes at the front of the caller's buffer already decoded but not yet removed.
    skip: usize,
    partial: Option<Partial>,
    /// A close frame was returned; everything after it is discarded.
    closed: bool,
}

impl Decoder {
    /// A decoder that refuses messages (after reassembly) longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            skip: 0,
            partial: None,
            closed: false,
        }
    }

    /// Takes frames from the front of `buf`, the connection's read buffer, and returns the
    /// next complete message, or `Ok(None)` when more bytes are needed.
    ///
    /// Consumed bytes are removed from `buf`, lazily: after `Ok(None)` or an error, `buf`
    /// holds exactly the unconsumed bytes (at most the start of one frame); after
    /// `Ok(Some(_))` it may still hold, at its front, bytes of frames already decoded
    /// (removing them each time would cost quadratic time on a buffer full of tiny frames;
    /// they are removed once they are at least half of `buf`). [`Decoder::pending`] tells the
    /// unconsumed bytes. So: only append to `buf` between calls (never remove from it), and
    /// call until `Ok(None)` to have it compacted.
    ///
    /// After an error the connection is done: send a close frame with its code and close.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<Option<Message>, WsError> {
        self.skip = self.skip.min(buf.len());
        let result = self.decode(buf);
        if !matches!(result, Ok(Some(_))) || self.skip * 2 >= buf.len() {
            buf.drain(..self.skip);
            self.skip = 0;
        }
        result
    }

    /// Bytes of `buf` not yet decoded (see [`Decoder::next`]).
    pub fn pending(&self, buf: &[u8]) -> usize {
        buf.len().saturating_sub(self.skip)
    }

    /// Whether a close frame has been received.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn decode(&mut self, buf: &[u8]) -> Result<Option<Message>, WsError> {
        loop {
            if self.closed {
                self.skip = buf.len();
                return Ok(None);
            }
            let avail = &buf[self.skip..];
            let [b0, b1, ..] = *avail else {
                return Ok(None);
            };
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            if b0 & 0x70 != 0 {
                return Err(WsError::Protocol("reserved bits set"));
            }
            let control = opcode & 0x08 != 0;
            match opcode {
                OP_CONTINUATION if self.partial.is_none() => {
                    return Err(WsError::Protocol("continuation frame without a message"))
                }
                OP_TEXT | OP_BINARY if self.partial.is_some() => {
                    return Err(WsError::Protocol("new message inside a fragmented one"))
                }
                OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
                _ => return Err(WsError::Protocol("unknown opcode")),
            }
            if b1 & 0x80 == 0 {
                return Err(WsError::Protocol("client frame not masked"));
            }
            if control && !fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            let len7 = b1 & 0x7f;
            if control && usize::from(len7) > MAX_CONTROL_PAYLOAD {
                return Err(WsError::Protocol("control frame longer than 125 bytes"));
            }
            let (len, len_bytes) = match len7 {
                126 => match avail.get(2..4) {
                    Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 2),
                    _ => return Ok(None),
                },
                127 => match avail.get(2..10) {
                    Some(bytes) => {
                        let mut be = [0u8; 8];
                        be.copy_from_slice(bytes);
                        let len = u64::from_be_bytes(be);
                        if len >> 63 != 0 {
                            return Err(WsError::Protocol("frame length with the top bit set"));
                        }
                        (len, 8)
                    }
                    None => return Ok(None),
                },
                n => (u64::from(n), 0),
            };
            let so_far = self.partial.as_ref().map_or(0, |p| p.data.len());
            if !control && len > self.max_message.saturating_sub(so_far) as u64 {
                return Err(WsError::TooBig);
            }
            // Now len <= max_message (data) or <= 125 (control): it fits in usize.
            let len = usize::try_from(len).map_err(|_| WsError::TooBig)?;
            let header_len: usize = 2 + len_bytes + 4;
            let frame_len = header_len.checked_add(len).ok_or(WsError::TooBig)?;
            let Some(frame) = avail.get(..frame_len) else {
                return Ok(None);
            };
            let mut key = [0u8; 4];
            key.copy_from_slice(&frame[2 + len_bytes..header_len]);
            let masked = &frame[header_len..];
            self.skip += frame_len;

            match opcode {
                OP_PING => return Ok(Some(Message::Ping(unmask(masked, key)))),
                OP_PONG => return Ok(Some(Message::Pong(unmask(masked, key)))),
                OP_CLOSE => {
                    self.closed = true;
                    self.partial = None;
                    return parse_close(&unmask(masked, key)).map(Some);
                }
                OP_TEXT | OP_BINARY if fin => {
                    let data = unmask(masked, key);
                    if opcode == OP_TEXT {
                        if std::str::from_utf8(&data).is_err() {
                            return Err(WsError::InvalidUtf8);
                        }
                        return Ok(Some(Message::Text(data)));
                    }
                    return Ok(Some(Message::Binary(data)));
                }
                OP_TEXT | OP_BINARY => {
                    let mut p = Partial {
                        text: opcode == OP_TEXT,
                        data: unmask(masked, key),
                        utf8_ok: 0,
                    };
                    p.check_utf8(false)?;
                    self.partial = Some(p);
                }
                _ => {
                    // Continuation (its Partial exists: checked above).
                    let Some(p) = self.partial.as_mut() else {
                        return Err(WsError::Protocol("continuation frame without a message"));
                    };
                    let start = p.data.len();
                    p.data.extend_from_slice(masked);
                    unmask_in_place(&mut p.data[start..], key);
                    p.check_utf8(fin)?;
                    if fin {
                        if let Some(p) = self.partial.take() {
                            return Ok(Some(if p.text {
                                Message::Text(p.data)
                            } else {
                                Message::Binary(p.data)
                            }));
                        }
                    }
                }
            }
        }
    }
}

impl Partial {
    /// Validates the text received so far; an incomplete sequence at the end is allowed
    /// unless this was the last fragment.
    fn check_utf8(&mut self, fin: bool) -> Result<(), WsError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.utf8_ok..]) {
            Ok(_) => self.utf8_ok = self.data.len(),
            Err(e) if e.error_len().is_none() && !fin => self.utf8_ok += e.valid_up_to(),
            Err(_) => return Err(WsError::InvalidUtf8),
        }
        Ok(())
    }
}

fn unmask_in_place(data: &mut [u8], key: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

fn unmask(masked: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut data = masked.to_vec();
    unmask_in_place(&mut data, key);
    data
}

/// Whether a client may send this close code (RFC 6455 §7.4 and the IANA registry).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn parse_close(payload: &[u8]) -> Result<Message, WsError> {
    match payload {
        [] => Ok(Message::Close(None, String::new())),
        [_] => Err(WsError::Protocol("close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Message::Close(Some(code), reason.to_string()))
        }
    }
}

/// The header of an unmasked, final server frame with a payload of `len` bytes: the first
/// `.1` bytes of `.0`. Lets the loop send one shared payload to many connections.
pub fn header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | (opcode & 0x0f);
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A complete unmasked, final server frame. Control frames (close, ping, pong) must carry at
/// most 125 bytes: that is the caller's to respect (a pong echoes a ping, which the decoder
/// already bounded).
pub fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let (h, n) = header(opcode, payload.len());
    let mut out = Vec::with_capacity(n + payload.len());
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    out
}

/// A close frame with a status code and a reason, the reason cut (at a character boundary)
/// to the 123 bytes a control frame leaves for it.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: masked unless `mask` is None; `first` carries FIN, RSV and opcode.
    fn raw(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![first];
        let m = if mask.is_some() { 0x80 } else { 0 };
        let len = payload.len();
        if len < 126 {
            out.push(m | len as u8);
        } else if len <= 0xffff {
            out.push(m | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        match mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        raw(if fin { 0x80 } else { 0 } | opcode, payload, Some(KEY))
    }

    /// Every message in `input`, decoded from one buffer, stopping at the first error.
    fn decode_all(max: usize, input: &[u8]) -> (Vec<Message>, Option<WsError>) {
        let mut d = Decoder::new(max);
        let mut buf = input.to_vec();
        let mut got = Vec::new();
        loop {
            match d.next(&mut buf) {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return (got, None),
                Err(e) => return (got, Some(e)),
            }
        }
    }

    /// The same, fed one byte at a time.
    fn decode_bytewise(max: usize, input: &[u8]) -> (Vec<Message>, Option<WsError>) {
        let mut d = Decoder::new(max);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in input {
            buf.push(*b);
            loop {
                match d.next(&mut buf) {
                    Ok(Some(m)) => got.push(m),
                    Ok(None) => break,
                    Err(e) => return (got, Some(e)),
                }
            }
            assert!(buf.len() < 14 + max.min(200_000), "only a partial frame is kept");
        }
        (got, None)
    }

    /// Both ways must agree; returns the result.
    fn decode(max: usize, input: &[u8]) -> (Vec<Message>, Option<WsError>) {
        let whole = decode_all(max, input);
        assert_eq!(decode_bytewise(max, input), whole);
        whole
    }

    #[test]
    fn rfc_example_accept_key() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            handshake_response("dGhlIHNhbXBsZSBub25jZQ=="),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn rfc_example_frames() {
        // RFC 6455 §5.7: a masked "Hello", and a single-frame masked ping.
        let hello = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(decode(100, &hello), (vec![Message::Text(b"Hello".to_vec())], None));
        assert_eq!(client(true, OP_TEXT, b"Hello"), hello);
        // The unmasked server "Hello".
        assert_eq!(frame(OP_TEXT, b"Hello"), [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(frame(OP_PONG, b"Hello"), [0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }

    #[test]
    fn unmasked_client_frame_is_refused() {
        let (got, e) = decode(100, &raw(0x81, b"Hello", None));
        assert!(got.is_empty());
        assert_eq!(e, Some(WsError::Protocol("client frame not masked")));
        assert_eq!(e.map(|e| e.close_code()), Some(1002));
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let mut input = client(true, OP_TEXT, b"{\"action\":\"PING\"}");
        input.extend(client(true, OP_BINARY, &[0, 1, 2, 255]));
        input.extend(client(true, OP_PING, b"p"));
        input.extend(client(true, OP_PONG, b""));
        input.extend(client(true, OP_TEXT, b""));
        let (got, e) = decode(1 << 20, &input);
        assert_eq!(e, None);
        assert_eq!(
            got,
            vec![
                Message::Text(b"{\"action\":\"PING\"}".to_vec()),
                Message::Binary(vec![0, 1, 2, 255]),
                Message::Ping(b"p".to_vec()),
                Message::Pong(vec![]),
                Message::Text(vec![]),
            ]
        );
    }

    #[test]
    fn fragmented_text_with_interleaved_ping() {
        let mut input = client(false, OP_TEXT, b"Hel");
        input.extend(client(true, OP_PING, b"are you there"));
        input.extend(client(false, OP_CONTINUATION, b""));
        input.extend(client(false, OP_CONTINUATION, b"lo, w"));
        input.extend(client(true, OP_PONG, b"x"));
        input.extend(client(true, OP_CONTINUATION, b"orld"));
        input.extend(client(false, OP_BINARY, &[1]));
        input.extend(client(true, OP_CONTINUATION, &[2]));
        let (got, e) = decode(100, &input);
        assert_eq!(e, None);
        assert_eq!(
            got,
            vec![
                Message::Ping(b"are you there".to_vec()),
                Message::Pong(b"x".to_vec()),
                Message::Text(b"Hello, world".to_vec()),
                Message::Binary(vec![1, 2]),
            ]
        );
    }

    #[test]
    fn lengths_16_and_64_bit() {
        let medium = vec![b'm'; 300];
        let big = vec![b'b'; 70_000];
        let mut input = client(true, OP_TEXT, &medium);
        assert_eq!(input[1], 0x80 | 126);
        let big_frame = client(true, OP_BINARY, &big);
        assert_eq!(big_frame[1], 0x80 | 127);
        input.extend(&big_frame);
        let (got, e) = decode_all(100_000, &input);
        assert_eq!(e, None);
        assert_eq!(got, vec![Message::Text(medium.clone()), Message::Binary(big.clone())]);
        // Byte by byte for the 16-bit one (the 64-bit one is slow that way in debug builds).
        assert_eq!(decode(1000, &input[..308]), (vec![Message::Text(medium)], None));
        // A 16-bit length that could have been 7-bit is accepted.
        let mut odd = vec![0x81, 0x80 | 126, 0, 2];
        odd.extend_from_slice(&KEY);
        odd.extend([b'h' ^ KEY[0], b'i' ^ KEY[1]]);
        assert_eq!(decode(10, &odd), (vec![Message::Text(b"hi".to_vec())], None));
    }

    #[test]
    fn top_bit_of_64_bit_length() {
        let mut input = vec![0x82, 0x80 | 127];
        input.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        input.extend_from_slice(&KEY);
        assert_eq!(
            decode(100, &input).1,
            Some(WsError::Protocol("frame length with the top bit set"))
        );
    }

    #[test]
    fn over_max_message_fails_on_the_header() {
        // Only the header has arrived: already too big.
        let frame = client(true, OP_BINARY, &[0u8; 101]);
        let (got, e) = decode_all(100, &frame[..4]);
        assert_eq!((got, e.clone()), (vec![], Some(WsError::TooBig)));
        assert_eq!(e.map(|e| e.close_code()), Some(1009));
        assert_eq!(decode(100, &client(true, OP_TEXT, &[b'a'; 100])).1, None);
        // A huge 64-bit length.
        let mut input = vec![0x82, 0x80 | 127];
        input.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(decode(100, &input).1, Some(WsError::TooBig));
        // Fragments that add up to too much fail on the header of the one that overflows.
        let mut input = client(false, OP_TEXT, &[b'a'; 60]);
        input.extend(client(true, OP_CONTINUATION, &[b'a'; 41]));
        let (got, e) = decode_all(100, &input[..input.len() - 41]);
        assert_eq!((got, e), (vec![], Some(WsError::TooBig)));
        let mut input = client(false, OP_TEXT, &[b'a'; 60]);
        input.extend(client(true, OP_CONTINUATION, &[b'a'; 40]));
        assert_eq!(decode(100, &input), (vec![Message::Text(vec![b'a'; 100])], None));
    }

    #[test]
    fn invalid_utf8() {
        let (_, e) = decode(100, &client(true, OP_TEXT, &[b'a', 0xff, b'b']));
        assert_eq!(e, Some(WsError::InvalidUtf8));
        assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
        // Binary may hold anything.
        assert_eq!(decode(100, &client(true, OP_BINARY, &[0xff])).1, None);
        // "é" (C3 A9) split across fragments is fine...
        let mut input = client(false, OP_TEXT, &[b'x', 0xc3]);
        input.extend(client(false, OP_CONTINUATION, &[]));
        input.extend(client(true, OP_CONTINUATION, &[0xa9, b'y']));
        assert_eq!(
            decode(100, &input),
            (vec![Message::Text("x\u{e9}y".as_bytes().to_vec())], None)
        );
        // ...a sequence broken across fragments is not...
        let mut input = client(false, OP_TEXT, &[b'x', 0xc3]);
        input.extend(client(true, OP_CONTINUATION, b"y"));
        assert_eq!(decode(100, &input).1, Some(WsError::InvalidUtf8));
        // ...nor one left unfinished by the last fragment...
        let mut input = client(false, OP_TEXT, b"x");
        input.extend(client(true, OP_CONTINUATION, &[0xe2, 0x82]));
        assert_eq!(decode(100, &input).1, Some(WsError::InvalidUtf8));
        // ...and a bad byte in the first fragment fails before the message ends.
        let (got, e) = decode(100, &client(false, OP_TEXT, &[0xc0, 0x80]));
        assert_eq!((got, e), (vec![], Some(WsError::InvalidUtf8)));
    }

    #[test]
    fn control_frame_rules() {
        let (_, e) = decode(1000, &client(true, OP_PING, &[0u8; 126]));
        assert_eq!(e, Some(WsError::Protocol("control frame longer than 125 bytes")));
        assert_eq!(
            decode(1000, &client(true, OP_PING, &[7u8; 125])).0,
            vec![Message::Ping(vec![7; 125])]
        );
        let (_, e) = decode(1000, &client(false, OP_PING, b"x"));
        assert_eq!(e, Some(WsError::Protocol("fragmented control frame")));
        let (_, e) = decode(1000, &client(false, OP_CLOSE, b""));
        assert_eq!(e, Some(WsError::Protocol("fragmented control frame")));
        // Control frames may not use the extended lengths even for short payloads.
        let mut input = vec![0x89, 0x80 | 126, 0, 1];
        input.extend_from_slice(&KEY);
        input.push(0);
        assert_eq!(
            decode(1000, &input).1,
            Some(WsError::Protocol("control frame longer than 125 bytes"))
        );
    }

    #[test]
    fn continuation_rules() {
        let (_, e) = decode(100, &client(true, OP_CONTINUATION, b"x"));
        assert_eq!(e, Some(WsError::Protocol("continuation frame without a message")));
        let mut input = client(false, OP_TEXT, b"a");
        input.extend(client(true, OP_TEXT, b"b"));
        assert_eq!(
            decode(100, &input).1,
            Some(WsError::Protocol("new message inside a fragmented one"))
        );
        let mut input = client(false, OP_BINARY, b"a");
        input.extend(client(true, OP_CONTINUATION, b"b"));
        input.extend(client(true, OP_CONTINUATION, b"c"));
        let (got, e) = decode(100, &input);
        assert_eq!(got, vec![Message::Binary(b"ab".to_vec())]);
        assert_eq!(e, Some(WsError::Protocol("continuation frame without a message")));
    }

    #[test]
    fn reserved_bits_and_opcodes() {
        for first in [0xc1, 0xa1, 0x91] {
            let (_, e) = decode(100, &raw(first, b"x", Some(KEY)));
            assert_eq!(e, Some(WsError::Protocol("reserved bits set")), "{first:#x}");
        }
        for op in [3, 7, 11, 15] {
            let (_, e) = decode(100, &client(true, op, b""));
            assert_eq!(e, Some(WsError::Protocol("unknown opcode")), "{op}");
        }
    }

    #[test]
    fn close_frames() {
        let (got, e) = decode(100, &client(true, OP_CLOSE, b""));
        assert_eq!((got, e), (vec![Message::Close(None, String::new())], None));
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        // Anything after the close frame is ignored.
        let mut input = client(true, OP_CLOSE, &payload);
        input.extend(client(true, OP_TEXT, b"late"));
        input.extend_from_slice(b"garbage");
        let (got, e) = decode(100, &input);
        assert_eq!((got, e), (vec![Message::Close(Some(1000), "bye".to_string())], None));
        assert_eq!(
            decode(100, &client(true, OP_CLOSE, &4000u16.to_be_bytes())).0,
            vec![Message::Close(Some(4000), String::new())]
        );
        let (_, e) = decode(100, &client(true, OP_CLOSE, &[3]));
        assert_eq!(e, Some(WsError::Protocol("close payload of one byte")));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            let (_, e) = decode(100, &client(true, OP_CLOSE, &code.to_be_bytes()));
            assert_eq!(e, Some(WsError::Protocol("invalid close code")), "{code}");
        }
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.push(0xff);
        assert_eq!(
            decode(100, &client(true, OP_CLOSE, &payload)).1,
            Some(WsError::InvalidUtf8)
        );
        // A close in the middle of a fragmented message ends it.
        let mut input = client(false, OP_TEXT, b"a");
        input.extend(client(true, OP_CLOSE, b""));
        assert_eq!(decode(100, &input).0, vec![Message::Close(None, String::new())]);
    }

    #[test]
    fn byte_by_byte_matches_whole_on_a_long_mixed_stream() {
        let mut input = Vec::new();
        for i in 0..20u8 {
            input.extend(client(false, OP_TEXT, &[b'a' + i; 3]));
            input.extend(client(true, OP_PING, &[i]));
            input.extend(client(true, OP_CONTINUATION, "\u{e9}\u{1f600}".as_bytes()));
            input.extend(client(true, OP_BINARY, &vec![i; 130 + usize::from(i)]));
        }
        input.extend(client(true, OP_CLOSE, &1001u16.to_be_bytes()));
        let (got, e) = decode(1000, &input);
        assert_eq!(e, None);
        assert_eq!(got.len(), 61);
        assert_eq!(got[0], Message::Ping(vec![0]));
        assert_eq!(got[1], Message::Text("aaa\u{e9}\u{1f600}".to_string().into_bytes()));
        assert_eq!(got[60], Message::Close(Some(1001), String::new()));
    }

    #[test]
    fn buffer_is_compacted() {
        let mut d = Decoder::new(100);
        let mut buf = Vec::new();
        for _ in 0..1000 {
            buf.extend(client(true, OP_TEXT, b"x"));
        }
        buf.extend(&client(true, OP_TEXT, b"tail")[..5]);
        let mut n = 0;
        while let Some(m) = d.next(&mut buf).unwrap() {
            assert_eq!(m, Message::Text(b"x".to_vec()));
            assert!(d.pending(&buf) <= buf.len());
            n += 1;
        }
        assert_eq!(n, 1000);
        assert_eq!(buf.len(), 5, "only the partial frame is left");
        assert_eq!(d.pending(&buf), 5);
        buf.extend(&client(true, OP_TEXT, b"tail")[5..]);
        assert_eq!(d.next(&mut buf), Ok(Some(Message::Text(b"tail".to_vec()))));
        assert_eq!(d.next(&mut buf), Ok(None));
        assert!(buf.is_empty());
        assert!(!d.is_closed());
    }

    #[test]
    fn server_frames() {
        assert_eq!(header(OP_TEXT, 0), ([0x81, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2));
        assert_eq!(header(OP_TEXT, 125).0[..2], [0x81, 125]);
        assert_eq!(header(OP_BINARY, 126), ([0x82, 126, 0, 126, 0, 0, 0, 0, 0, 0], 4));
        assert_eq!(header(OP_TEXT, 65535).0[..4], [0x81, 126, 0xff, 0xff]);
        assert_eq!(header(OP_TEXT, 65536), ([0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0], 10));
        let payload = vec![b'z'; 70_000];
        let f = frame(OP_TEXT, &payload);
        assert_eq!(f.len(), 10 + 70_000);
        assert_eq!(&f[10..], &payload[..]);
        assert_eq!(close_frame(1000, ""), [0x88, 2, 0x03, 0xe8]);
        assert_eq!(
            close_frame(1009, "too big"),
            [&[0x88, 9, 0x03, 0xf1][..], b"too big"].concat()
        );
        // Reasons are cut to fit 125 bytes, never inside a character.
        let long = "\u{e9}".repeat(100);
        let f = close_frame(1000, &long);
        assert_eq!(f[1], 124);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
        assert_eq!(close_frame(1000, &"a".repeat(200))[1], 125);
        // Server frames are unmasked: the client decoder (which wants masks) refuses them.
        assert_eq!(
            decode(100, &frame(OP_TEXT, b"hi")).1,
            Some(WsError::Protocol("client frame not masked"))
        );
    }
}
