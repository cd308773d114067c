//! The HTTP/1.1 transport: request heads in, response heads out, chunked bodies both ways.
//!
//! Pure functions over bytes, like [`super::line`]; no sockets here. The request line and
//! headers are tokenised by `httparse` (strict defaults), and everything that decides how
//! long a message is — `Content-Length`, `Transfer-Encoding`, folded or oddly spaced header
//! lines — is checked here, strictly, because a lenient reading of body framing is how
//! request smuggling starts.
//!
//! Bounds: [`parse_head`] never looks past `Limits::max_head` bytes (httparse keeps no
//! state, so a head arriving byte by byte is re-parsed on every call; the limit caps that
//! work, and httparse only runs once a blank line has arrived). [`ChunkedDecoder`] appends
//! at most `max_out` bytes per call and bounds its size lines and trailers.

use std::fmt;

use base64::Engine;

use crate::protocol::ErrorCode;

/// Size limits for a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of request line plus headers plus the blank line (default 8192).
    pub max_head: usize,
    /// Header lines (default 64).
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 8192,
            max_headers: 64,
        }
    }
}

/// The request methods chimed answers; any other method is [`HeadError::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is not `GET`.
    pub fn from_token(token: &str) -> Option<Method> {
        Some(match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// Neither `Content-Length` nor `Transfer-Encoding`: no body.
    None,
    /// `Content-Length: n` (`n` may be 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`: decode with [`ChunkedDecoder`].
    Chunked,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// The raw (not percent-decoded) path, without the query. For an absolute-form target
    /// (`http://host/p?q`) the path part (`/p`); for `OPTIONS *`, `*`.
    pub path: String,
    /// The raw query, without the `?` (empty when there is none).
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// In order of arrival; names lower-cased, values trimmed of surrounding blanks.
    pub headers: Vec<(String, String)>,
    pub body: BodyKind,
    /// HTTP/1.1: true unless `Connection: close`; HTTP/1.0: false unless `Connection: keep-alive`.
    pub keep_alive: bool,
    /// The client's `Sec-WebSocket-Key`, only for a valid upgrade request: HTTP/1.1 `GET`,
    /// `Upgrade` lists `websocket`, `Connection` lists `upgrade`, `Sec-WebSocket-Version: 13`
    /// and a key that is base64 of 16 bytes.
    pub websocket_key: Option<String>,
    /// `Expect: 100-continue` on an HTTP/1.1 request (ignored on 1.0, as RFC 9110 says).
    pub expect_continue: bool,
}

impl RequestHead {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The token of `Authorization: Bearer T` (scheme case-insensitive), if non-empty.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim_matches(|c| c == ' ' || c == '\t');
        (!token.is_empty()).then_some(token)
    }

    /// The first query parameter of that (decoded) name, percent-decoded with `+` as a space.
    /// `None` when absent or when the decoded value is not UTF-8. A `%` not followed by two
    /// hex digits is kept as it is.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if pair.is_empty() || percent_decode(k).as_deref() != Some(name) {
                return None;
            }
            percent_decode(v)
        })
    }

    /// Whether the client asked for a WebSocket upgrade at all (`Upgrade` lists `websocket`),
    /// valid or not: with `websocket_key` `None` such a request deserves a 400 (or a 426 with
    /// `Sec-WebSocket-Version: 13` when the version is the problem), not a plain page.
    pub fn wants_websocket(&self) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n == "upgrade" && has_token(v, "websocket"))
    }
}

/// Why a request head was refused. Each maps to a status ([`HeadError::status`]); after any
/// of them the connection cannot be trusted to be in step, so answer and close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// No complete head within `max_head` bytes (431).
    TooLarge,
    /// More than `max_headers` header lines (431).
    TooManyHeaders,
    /// Not a well-formed request head (400).
    Malformed(&'static str),
    /// Ambiguous body framing: CL with TE, duplicate or invalid CL, TE other than chunked,
    /// obs-fold, whitespace before a colon (400).
    BadFraming(&'static str),
    /// Well-formed but not something chimed speaks: HTTP/2, other versions, other methods (501).
    Unsupported(&'static str),
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) | HeadError::BadFraming(_) => 400,
            HeadError::Unsupported(_) => 501,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge => f.write_str("request head too large"),
            HeadError::TooManyHeaders => f.write_str("too many headers"),
            HeadError::Malformed(m) => write!(f, "malformed request: {m}"),
            HeadError::BadFraming(m) => write!(f, "bad message framing: {m}"),
            HeadError::Unsupported(m) => write!(f, "not supported: {m}"),
        }
    }
}

impl std::error::Error for HeadError {}

/// Whether `window` holds the blank line that ends a head (CRLF CRLF, or bare LFs, which
/// httparse also accepts). Empty lines before the request line are skipped, as httparse
/// skips them: they end nothing (else a head that starts with one would be re-parsed on
/// every read until it completes, the quadratic cost this check is there to avoid).
fn has_head_end(window: &[u8]) -> bool {
    let mut w = window;
    while let Some(rest) = w.strip_prefix(b"\r\n").or_else(|| w.strip_prefix(b"\n")) {
        w = rest;
    }
    w.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && matches!(&w[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// Parses the request head at the front of `buf`.
///
/// `Ok(None)`: incomplete, call again once more bytes have arrived (with the whole buffer:
/// httparse keeps no state). `Ok(Some((head, n)))`: the head took `buf[..n]`; the body (if
/// any) and pipelined requests follow. `Err(TooLarge)` once `buf` holds more than
/// `max_head` bytes without a complete head. Leading empty lines are skipped (and counted).
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let window = &buf[..buf.len().min(limits.max_head)];
    let incomplete = || {
        if buf.len() > limits.max_head {
            Err(HeadError::TooLarge)
        } else {
            Ok(None)
        }
    };
    if !has_head_end(window) {
        return incomplete();
    }
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    let consumed = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return incomplete(),
        Err(e) => return Err(map_httparse_error(e, window)),
    };
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    let method = Method::from_token(method).ok_or(HeadError::Unsupported("method"))?;
    let (path, query) = split_target(method, target)?;

    let mut headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let (mut close, mut keep_alive_token, mut upgrade_token) = (false, false, false);
    let (mut upgrade_websocket, mut ws_version_13) = (false, false);
    let mut ws_key: Option<&str> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HeadError::Malformed("header value is not UTF-8"))?
            .trim_matches(|c| c == ' ' || c == '\t');
        match name.as_str() {
            "content-length" => {
                if content_length.is_some() {
                    return Err(HeadError::BadFraming("duplicate Content-Length"));
                }
                content_length = Some(parse_content_length(value)?);
            }
            "transfer-encoding" => {
                if transfer_encoding {
                    return Err(HeadError::BadFraming("duplicate Transfer-Encoding"));
                }
                if !value.eq_ignore_ascii_case("chunked") {
                    return Err(HeadError::BadFraming("Transfer-Encoding other than chunked"));
                }
                transfer_encoding = true;
            }
            "host" => {
                hosts += 1;
                if hosts > 1 {
                    return Err(HeadError::Malformed("duplicate Host"));
                }
            }
            "connection" => {
                close |= has_token(value, "close");
                keep_alive_token |= has_token(value, "keep-alive");
                upgrade_token |= has_token(value, "upgrade");
            }
            "upgrade" => upgrade_websocket |= has_token(value, "websocket"),
            "sec-websocket-version" => ws_version_13 = value == "13",
            "sec-websocket-key" => ws_key = ws_key.or(Some(value)),
            "expect" => expect_continue |= value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
        headers.push((name, value.to_string()));
    }

    let body = match (transfer_encoding, content_length) {
        (true, Some(_)) => return Err(HeadError::BadFraming("Content-Length with Transfer-Encoding")),
        (true, None) if minor_version == 0 => return Err(HeadError::BadFraming("Transfer-Encoding in HTTP/1.0")),
        (true, None) => BodyKind::Chunked,
        (false, Some(n)) => BodyKind::Length(n),
        (false, None) => BodyKind::None,
    };
    let keep_alive = !close && (minor_version == 1 || keep_alive_token);
    let websocket_key = ws_key
        .filter(|key| {
            method == Method::Get
                && minor_version == 1
                && upgrade_websocket
                && upgrade_token
                && ws_version_13
                && base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .is_ok_and(|k| k.len() == 16)
        })
        .map(str::to_string);
    let head = RequestHead {
        method,
        path,
        query,
        minor_version,
        headers,
        body,
        keep_alive,
        websocket_key,
        expect_continue: expect_continue && minor_version == 1,
    };
    Ok(Some((head, consumed)))
}

/// Turns an httparse error into ours, telling framing attacks (obs-fold, whitespace before
/// the colon) from plain garbage: httparse reports both as an invalid header name.
fn map_httparse_error(e: httparse::Error, window: &[u8]) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::HeaderName => header_name_error(window),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Token => HeadError::Malformed("invalid method"),
        httparse::Error::Version => {
            let version = window
                .split(|&b| b == b'\n')
                .find(|line| !line.is_empty() && *line != b"\r")
                .and_then(|line| line.split(|&b| b == b' ').nth(2))
                .unwrap_or_default();
            if version.starts_with(b"HTTP/") {
                HeadError::Unsupported("HTTP version")
            } else {
                HeadError::Malformed("invalid request line")
            }
        }
        httparse::Error::Status => HeadError::Malformed("invalid request"),
    }
}

/// A header-name byte (RFC 9110 `tchar`), as httparse accepts them.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classifies httparse's `HeaderName` error by the byte it stopped at: the first header
/// line whose name does not run cleanly into a `:`. A line starting with a blank is obs-fold;
/// a blank where the name stops is whitespace before the colon; any other byte is garbage.
/// Only bytes up to that one are looked at (httparse has seen exactly those), so the
/// verdict does not depend on how much of the rest of the line has arrived (fuzz finding:
/// `Name\x04 x: y` was garbage in one read and whitespace before colon in another).
fn header_name_error(window: &[u8]) -> HeadError {
    let mut lines = window
        .split(|&b| b == b'\n')
        .skip_while(|l| l.is_empty() || *l == b"\r");
    lines.next(); // the request line
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            return HeadError::BadFraming("obsolete line folding");
        }
        match line.iter().find(|&&b| !is_tchar(b)) {
            Some(b':') => continue,
            Some(b' ' | b'\t') => return HeadError::BadFraming("whitespace before colon"),
            _ => break,
        }
    }
    HeadError::Malformed("invalid header name")
}

fn parse_content_length(value: &str) -> Result<u64, HeadError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeadError::BadFraming("invalid Content-Length"));
    }
    value
        .parse::<u64>()
        .map_err(|_| HeadError::BadFraming("invalid Content-Length"))
}

/// Splits a request target into raw path and raw query.
fn split_target(method: Method, target: &str) -> Result<(String, String), HeadError> {
    if target == "*" {
        return if method == Method::Options {
            Ok(("*".to_string(), String::new()))
        } else {
            Err(HeadError::Malformed("request target"))
        };
    }
    let origin = if target.starts_with('/') {
        target
    } else {
        // Absolute form: scheme "://" authority, then the origin form (or nothing).
        let rest = ["http://", "https://"]
            .iter()
            .find_map(|scheme| {
                let head = target.get(..scheme.len())?;
                head.eq_ignore_ascii_case(scheme).then(|| &target[scheme.len()..])
            })
            .ok_or(HeadError::Malformed("request target"))?;
        match rest.find(['/', '?']) {
            Some(i) => &rest[i..],
            None => "",
        }
    };
    let (path, query) = origin.split_once('?').unwrap_or((origin, ""));
    let path = if path.is_empty() { "/" } else { path };
    Ok((path.to_string(), query.to_string()))
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim_matches(|c| c == ' ' || c == '\t').eq_ignore_ascii_case(token))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a query component (`+` is a space); `None` if the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Longest chunk-size line (size, extensions, CRLF) the decoder accepts.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer bytes the decoder skips before giving up.
pub const MAX_TRAILERS: usize = 8192;

/// A chunked-body failure: bad syntax, or a size line, trailer section or chunk size
/// beyond all reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    Malformed(&'static str),
    TooLarge,
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::Malformed(m) => write!(f, "malformed chunked body: {m}"),
            ChunkError::TooLarge => f.write_str("chunked body: size line, chunk size or trailers too large"),
        }
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex digits of a chunk size.
    #[default]
    Size,
    /// Blanks after the size, before `;`.
    SizeBlank,
    /// Chunk extensions, up to CR.
    Ext,
    /// CR of the size line seen.
    SizeLf,
    /// Inside chunk data (`remaining` > 0).
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line or of the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Incremental decoder of a `Transfer-Encoding: chunked` body: feed it whatever bytes
/// arrived, in any pieces; it keeps only a few counters between calls.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Size being read (in `Size`), then bytes of the chunk still to come (in `Data`).
    size: u64,
    digits: usize,
    line: usize,
    trailers: usize,
}

impl ChunkedDecoder {
    /// Decodes as much of `input` as possible, appending body bytes to `out`, at most
    /// `max_out` of them in this call (the framing bytes around them are still consumed,
    /// so a call with `max_out == 0` can finish a body whose data is all out). Returns
    /// (input bytes consumed, finished). Once finished it consumes nothing more: bytes after
    /// the final CRLF belong to the next request. Extensions are ignored, trailers skipped.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>, max_out: usize) -> Result<(usize, bool), ChunkError> {
        use ChunkState::*;
        let mut i = 0;
        let mut budget = max_out;
        while i < input.len() && self.state != Done {
            let b = input[i];
            match self.state {
                Size | SizeBlank | Ext => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(ChunkError::TooLarge);
                    }
                    match (self.state, b, hex_value(b)) {
                        (Size, _, Some(d)) => {
                            self.size = self
                                .size
                                .checked_mul(16)
                                .and_then(|s| s.checked_add(u64::from(d)))
                                .ok_or(ChunkError::TooLarge)?;
                            self.digits += 1;
                        }
                        (Size, _, _) if self.digits == 0 => return Err(ChunkError::Malformed("chunk size is not hex")),
                        (Size | SizeBlank, b' ' | b'\t', _) => self.state = SizeBlank,
                        (Size | SizeBlank, b';', _) => self.state = Ext,
                        (Size | Ext, b'\r', _) => self.state = SizeLf,
                        (Ext, b'\n' | 0, _) => return Err(ChunkError::Malformed("invalid byte in chunk extension")),
                        (Ext, _, _) => {}
                        _ => return Err(ChunkError::Malformed("invalid byte after chunk size")),
                    }
                    i += 1;
                }
                SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("chunk size line not ended by CRLF"));
                    }
                    i += 1;
                    self.line = 0;
                    self.digits = 0;
                    self.state = if self.size == 0 { TrailerStart } else { Data };
                }
                Data => {
                    if budget == 0 {
                        break;
                    }
                    let avail = input.len() - i;
                    // Fits in usize: bounded by `avail`.
                    let n = (self.size.min(avail as u64) as usize).min(budget);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    budget -= n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                }
                DataCr | DataLf => {
                    let want = if self.state == DataCr { b'\r' } else { b'\n' };
                    if b != want {
                        return Err(ChunkError::Malformed("chunk data not followed by CRLF"));
                    }
                    i += 1;
                    self.state = if self.state == DataCr { DataLf } else { Size };
                }
                TrailerStart | Trailer => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(ChunkError::TooLarge);
                    }
                    self.state = match (self.state, b) {
                        (TrailerStart, b'\r') => EndLf,
                        (_, b'\r') => TrailerLf,
                        (_, b'\n' | 0) => return Err(ChunkError::Malformed("invalid byte in trailer")),
                        _ => Trailer,
                    };
                    i += 1;
                }
                TrailerLf | EndLf => {
                    self.trailers += 1;
                    if b != b'\n' {
                        return Err(ChunkError::Malformed("trailer line not ended by CRLF"));
                    }
                    i += 1;
                    self.state = if self.state == EndLf { Done } else { TrailerStart };
                }
                Done => break,
            }
        }
        Ok((i, self.state == Done))
    }

    /// Whether the terminating chunk and trailers have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// The reason phrase for a status ("" for codes chimed does not use; that is legal).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends `s` with everything that could end a header line or smuggle a new one (CR, LF,
/// other control bytes except tab) replaced by a space; header names keep token bytes only.
fn push_sanitized(out: &mut Vec<u8>, s: &str, name: bool) {
    for &b in s.as_bytes() {
        if name {
            if b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b) {
                out.push(b);
            }
        } else if b == b'\t' || !(b < 0x20 || b == 0x7f) {
            out.push(b);
        } else {
            out.push(b' ');
        }
    }
}

/// A response head: status line, the `headers` as given (CR/LF in them neutralised), then
/// `Content-Length` when given and `Connection: keep-alive|close`. For a streamed body pass
/// `None` and `("Transfer-Encoding", "chunked")`, then send [`chunk`]s and [`last_chunk`].
pub fn response_head(status: u16, headers: &[(&str, &str)], content_length: Option<u64>, keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
    for (name, value) in headers {
        push_sanitized(&mut out, name, true);
        out.extend_from_slice(b": ");
        push_sanitized(&mut out, value, false);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = content_length {
        out.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    out
}

/// A complete small response. 1xx, 204 and 304 get neither body nor Content-Length nor
/// Content-Type (they cannot have a body); an empty `content_type` is left out.
pub fn response(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    if status < 200 || status == 204 || status == 304 {
        return response_head(status, &[], None, keep_alive);
    }
    let headers: &[(&str, &str)] = if content_type.is_empty() {
        &[]
    } else {
        &[("Content-Type", content_type)]
    };
    let mut out = response_head(status, headers, Some(body.len() as u64), keep_alive);
    out.extend_from_slice(body);
    out
}

/// One chunk of a chunked response body. Empty `data` gives an empty Vec (nothing to send):
/// a zero-size chunk would end the body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(data.len() + 20);
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The end of a chunked response body (no trailers).
pub fn last_chunk() -> &'static [u8] {
    b"0\r\n\r\n"
}

/// The HTTP status for an API error code.
pub fn status_for(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::BadRequest => 400,
        ErrorCode::UnknownAction => 404,
        ErrorCode::Unauthenticated => 401,
        ErrorCode::Forbidden => 403,
        ErrorCode::NotFound => 404,
        ErrorCode::Conflict => 409,
        ErrorCode::TooLarge => 413,
        ErrorCode::RateLimited => 429,
        ErrorCode::Unavailable => 503,
        ErrorCode::Internal => 500,
    }
}

/// Digits to a number, saturating at `u64::MAX`; `None` if empty or not all digits.
fn parse_pos(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.bytes()
            .fold(0u64, |n, b| n.saturating_mul(10).saturating_add(u64::from(b - b'0'))),
    )
}

/// Parses a `Range` header value for a resource of `len` bytes.
///
/// `Ok(None)`: serve the whole resource (no range, another unit, several ranges, or
/// syntax that RFC 9110 says to ignore, e.g. `bytes=5-2`). `Ok(Some((start, end)))`:
/// serve `start..=end` (end clamped to the resource). `Err(())`: not satisfiable (416): the
/// start is at or past the end, a suffix of 0 bytes, or any range of an empty resource.
#[allow(clippy::result_unit_err)]
pub fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let value = value.trim();
    let Some((unit, set)) = value.split_once('=') else {
        return Ok(None);
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let Some(n) = parse_pos(last) else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(());
        }
        return Ok(Some((len.saturating_sub(n), len - 1)));
    }
    let Some(start) = parse_pos(first) else {
        return Ok(None);
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match parse_pos(last) {
            Some(end) if end >= start => end,
            _ => return Ok(None),
        }
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end.min(len - 1))))
}

const SNIFF_METHODS: [&[u8]; 6] = [b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS "];

/// Whether the first bytes of a connection are an HTTP request line: `Some(true)` they start
/// with one of the six methods and a space, `Some(false)` they cannot, `None` undecided
/// (empty, or a strict prefix of one of them: wait for more bytes).
pub fn sniff(first: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for m in SNIFF_METHODS {
        if first.starts_with(m) {
            return Some(true);
        }
        undecided |= m.starts_with(first);
    }
    if undecided {
        None
    } else {
        Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<(RequestHead, usize)>, HeadError> {
        parse_head(s.as_bytes(), &Limits::default())
    }

    fn head(s: &str) -> RequestHead {
        match parse(s) {
            Ok(Some((h, n))) => {
                assert_eq!(n, s.len(), "consumed the whole head");
                h
            }
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    fn err(s: &str) -> HeadError {
        match parse(s) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn complete_head() {
        let h = head("POST /api/sync/?a=1&b=x%20y HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer  tok123 \r\nContent-Length: 17\r\nX-Thing: caf\u{e9}\r\n\r\n");
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.path, "/api/sync/");
        assert_eq!(h.query, "a=1&b=x%20y");
        assert_eq!(h.minor_version, 1);
        assert_eq!(h.body, BodyKind::Length(17));
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert_eq!(h.websocket_key, None);
        assert_eq!(h.header("HOST"), Some("x"));
        assert_eq!(h.header("x-thing"), Some("caf\u{e9}"));
        assert_eq!(h.headers[0], ("host".to_string(), "x".to_string()));
        assert_eq!(h.bearer(), Some("tok123"));
        assert_eq!(h.query_param("b").as_deref(), Some("x y"));
        assert_eq!(h.query_param("a").as_deref(), Some("1"));
        assert_eq!(h.query_param("c"), None);
    }

    #[test]
    fn partial_head_at_every_length() {
        let s = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
        for n in 0..s.len() {
            assert!(matches!(parse_head(&s[..n], &Limits::default()), Ok(None)), "{n}");
        }
        assert!(matches!(parse_head(s, &Limits::default()), Ok(Some((_, n))) if n == s.len()));
    }

    #[test]
    fn pipelined_requests() {
        let first = "POST /api/a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        let second = "GET /b?x=1 HTTP/1.1\r\n\r\n";
        let buf = format!("{first}hello{second}GET /c HTTP/1.1\r\n");
        let (h, n) = parse(&buf).unwrap().unwrap();
        assert_eq!((h.path.as_str(), n), ("/api/a/", first.len()));
        assert_eq!(h.body, BodyKind::Length(5));
        let rest = &buf[n + 5..];
        let (h, n) = parse(rest).unwrap().unwrap();
        assert_eq!(
            (h.method, h.path.as_str(), h.query.as_str(), n),
            (Method::Get, "/b", "x=1", second.len())
        );
        assert!(matches!(parse(&rest[n..]), Ok(None)));
    }

    #[test]
    fn leading_empty_lines_and_bare_lf() {
        let h = head("\r\nGET / HTTP/1.1\r\n\r\n");
        assert_eq!(h.path, "/");
        let h = head("GET /x HTTP/1.1\nHost: a\n\n");
        assert_eq!(h.header("host"), Some("a"));
    }

    #[test]
    fn framing_errors() {
        let bad = |s: &str| matches!(err(s), HeadError::BadFraming(_));
        assert!(bad(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(bad(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
        ));
        assert!(bad("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nContent-Length: \r\n\r\n"));
        assert!(bad(
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"
        ));
        assert!(bad("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"));
        assert!(bad("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"));
        assert!(bad(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(bad("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert_eq!(
            err("GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n"),
            HeadError::BadFraming("obsolete line folding")
        );
        assert_eq!(
            err("GET / HTTP/1.1\r\nX-A: 1\r\n\tfolded\r\n\r\n"),
            HeadError::BadFraming("obsolete line folding")
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nContent-Length : 5\r\n\r\n"),
            HeadError::BadFraming("whitespace before colon")
        );
        assert_eq!(
            err("POST / HTTP/1.1\r\nTransfer-Encoding\t: chunked\r\n\r\n"),
            HeadError::BadFraming("whitespace before colon")
        );
        assert_eq!(
            err("GET / HTTP/1.1\r\nBad@Name: 1\r\n\r\n"),
            HeadError::Malformed("invalid header name")
        );
        assert_eq!(err("GET / HTTP/1.1\r\n\r\n".replace('/', "/ ").as_str()).status(), 400);
        assert!(err("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").status() == 400);
        for e in [
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n",
        ] {
            assert_eq!(err(e).status(), 400);
        }
    }

    /// The verdict of the loop's way of parsing: after every byte, until one is reached.
    fn parse_bytewise(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
        for n in 1..buf.len() {
            let r = parse_head(&buf[..n], &Limits::default());
            if !matches!(r, Ok(None)) {
                return r;
            }
        }
        parse_head(buf, &Limits::default())
    }

    #[test]
    fn regression_header_name_error_does_not_depend_on_the_chunking() {
        // Found by fuzz/fuzz_targets/http_request.rs: the error for a bad header name was
        // chosen by looking for a colon further on the line, so it changed with how much
        // of the line had arrived when httparse gave up.
        let cases: [(&[u8], HeadError); 5] = [
            (
                b"\n\r\nGET /x HTTP/1.1\nHos\x04\x04b HTT\x04\x04http://example.org:7700?q=1 HTTP/1.1\r\n\r\x04Dth\x00\x02S\n\n",
                HeadError::Malformed("invalid header name"),
            ),
            (
                b"GET / HTTP/1.1\r\nName\x04 x: y\r\n\r\n",
                HeadError::Malformed("invalid header name"),
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length \x04: 5\r\n\r\n",
                HeadError::BadFraming("whitespace before colon"),
            ),
            (
                b"GET / HTTP/1.1\r\nA: 1\r\nContent Length: 5\r\n\r\n",
                HeadError::BadFraming("whitespace before colon"),
            ),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", HeadError::Malformed("invalid header name")),
        ];
        for (buf, want) in cases {
            let text = String::from_utf8_lossy(buf);
            assert_eq!(parse_head(buf, &Limits::default()).unwrap_err(), want, "{text:?} whole");
            assert_eq!(parse_bytewise(buf).unwrap_err(), want, "{text:?} byte by byte");
        }
    }

    #[test]
    fn leading_empty_lines_do_not_end_a_head() {
        assert!(!has_head_end(b"\r\n\nGET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!has_head_end(b"\n\n\r\n"));
        assert!(has_head_end(b"\r\nGET / HTTP/1.1\r\n\r\n"));
        assert!(has_head_end(b"\nGET / HTTP/1.1\n\n"));
        assert!(matches!(
            parse(&format!("\r\n\n{}", "GET / HTTP/1.1\r\nHost: x\r\n")),
            Ok(None)
        ));
    }

    #[test]
    fn chunked_and_length_bodies() {
        assert_eq!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").body,
            BodyKind::Chunked
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").body,
            BodyKind::Length(0)
        );
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").body, BodyKind::None);
        assert_eq!(
            head("PUT / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n").body,
            BodyKind::Length(u64::MAX)
        );
    }

    #[test]
    fn header_values_must_be_utf8() {
        let mut buf = b"GET / HTTP/1.1\r\nX-A: ".to_vec();
        buf.extend_from_slice(&[0xff, 0xfe]);
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_head(&buf, &Limits::default()).unwrap_err(),
            HeadError::Malformed("header value is not UTF-8")
        );
        assert_eq!(
            err("GET / HTTP/1.1\r\nX-A: a\x01b\r\n\r\n"),
            HeadError::Malformed("invalid header value")
        );
    }

    #[test]
    fn size_limits() {
        let limits = Limits {
            max_head: 64,
            max_headers: 3,
        };
        // Incomplete, exactly at the limit: still waiting. One byte more: too large.
        let mut buf = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        buf.resize(64, b'a');
        assert!(matches!(parse_head(&buf, &limits), Ok(None)));
        buf.push(b'a');
        assert_eq!(parse_head(&buf, &limits).unwrap_err(), HeadError::TooLarge);
        // A complete head that ends after the limit is too large too.
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&buf, &limits).unwrap_err(), HeadError::TooLarge);
        // A head within the limit followed by lots of body is fine.
        let mut buf = b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n".to_vec();
        buf.resize(1000, b'x');
        assert!(matches!(parse_head(&buf, &limits), Ok(Some((_, 41)))));
        // Headers: 3 fine, 4 too many.
        let ok = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(parse_head(ok.as_bytes(), &limits).unwrap().unwrap().0.headers.len(), 3);
        let many = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(
            parse_head(many.as_bytes(), &limits).unwrap_err(),
            HeadError::TooManyHeaders
        );
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
        assert_eq!(HeadError::TooLarge.status(), 431);
        // Default limits: 65 headers is too many.
        let mut s = String::from("GET / HTTP/1.1\r\n");
        for i in 0..65 {
            s.push_str(&format!("X-{i}: v\r\n"));
        }
        s.push_str("\r\n");
        assert_eq!(err(&s), HeadError::TooManyHeaders);
        // A default-limit head that never ends.
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        buf.resize(8193, b'a');
        assert_eq!(parse_head(&buf, &Limits::default()).unwrap_err(), HeadError::TooLarge);
    }

    #[test]
    fn unsupported_and_malformed_request_lines() {
        let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(err(preface), HeadError::Unsupported("HTTP version"));
        assert_eq!(err(preface).status(), 501);
        assert_eq!(err("GET / HTTP/1.2\r\n\r\n"), HeadError::Unsupported("HTTP version"));
        assert_eq!(err("get / HTTP/1.1\r\n\r\n"), HeadError::Unsupported("method"));
        assert_eq!(err("PATCH / HTTP/1.1\r\n\r\n"), HeadError::Unsupported("method"));
        assert_eq!(err("GET / FOO\r\n\r\n"), HeadError::Malformed("invalid request line"));
        assert_eq!(err("GET * HTTP/1.1\r\n\r\n"), HeadError::Malformed("request target"));
        assert_eq!(err("GET foo HTTP/1.1\r\n\r\n"), HeadError::Malformed("request target"));
        assert_eq!(err("G(T / HTTP/1.1\r\n\r\n").status(), 400);
        let h = head("OPTIONS * HTTP/1.1\r\n\r\n");
        assert_eq!((h.method, h.path.as_str()), (Method::Options, "*"));
        let h = head("GET http://example.com/a/b?c=d HTTP/1.1\r\n\r\n");
        assert_eq!((h.path.as_str(), h.query.as_str()), ("/a/b", "c=d"));
        let h = head("GET HTTP://example.com HTTP/1.1\r\n\r\n");
        assert_eq!((h.path.as_str(), h.query.as_str()), ("/", ""));
        for (m, want) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
        ] {
            assert_eq!(head(&format!("{m} / HTTP/1.1\r\n\r\n")).method, want);
            assert_eq!(want.as_str(), m);
        }
    }

    #[test]
    fn keep_alive_defaults() {
        assert!(head("GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: Keep-Alive, CLOSE\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn expect_continue() {
        assert!(head("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n").expect_continue);
        assert!(!head("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").expect_continue);
        assert!(!head("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").expect_continue);
    }

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn websocket_key_only_for_a_valid_upgrade() {
        let h = head(UPGRADE);
        assert_eq!(h.websocket_key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(h.wants_websocket());
        for (from, to) in [
            ("GET", "POST"),
            ("HTTP/1.1", "HTTP/1.0"),
            ("Upgrade: WebSocket", "Upgrade: h2c"),
            ("Upgrade: WebSocket\r\n", ""),
            ("keep-alive, Upgrade", "keep-alive"),
            ("Version: 13", "Version: 8"),
            ("Sec-WebSocket-Version: 13\r\n", ""),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            ("dGhlIHNhbXBsZSBub25jZQ==", "not base64!"),
            ("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
        ] {
            let s = UPGRADE.replacen(from, to, 1);
            assert_ne!(s, UPGRADE);
            assert_eq!(head(&s).websocket_key, None, "{from} -> {to}");
        }
        assert!(!head("GET / HTTP/1.1\r\n\r\n").wants_websocket());
        let h = head(&UPGRADE.replace("Upgrade: WebSocket", "Upgrade: foo, websocket"));
        assert!(h.websocket_key.is_some());
    }

    #[test]
    fn bearer_and_query_params() {
        let h = head("GET /x?name=a+b%2Fc&empty=&flag&bad=%zz&utf=%C3%A9&n%61me=second&raw=%ff HTTP/1.1\r\nauthorization: bearer abc\r\n\r\n");
        assert_eq!(h.bearer(), Some("abc"));
        assert_eq!(h.query_param("name").as_deref(), Some("a b/c"));
        assert_eq!(h.query_param("empty").as_deref(), Some(""));
        assert_eq!(h.query_param("flag").as_deref(), Some(""));
        assert_eq!(h.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(h.query_param("utf").as_deref(), Some("\u{e9}"));
        assert_eq!(h.query_param("raw"), None);
        assert_eq!(h.query_param(""), None);
        for auth in ["Basic abc", "Bearer", "Bearer   ", "Bearerabc"] {
            let h = head(&format!("GET / HTTP/1.1\r\nAuthorization: {auth}\r\n\r\n"));
            assert_eq!(h.bearer(), None, "{auth}");
        }
        assert_eq!(head("GET / HTTP/1.1\r\n\r\n").bearer(), None);
        assert_eq!(percent_decode("%4"), Some("%4".to_string()));
        assert_eq!(percent_decode("100%"), Some("100%".to_string()));
    }

    fn decode_all(input: &[u8], max_out: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let (n, done) = d.decode(input, &mut out, max_out)?;
        Ok((out, n, done))
    }

    fn decode_bytewise(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut used = 0;
        for (i, b) in input.iter().enumerate() {
            let (n, done) = d.decode(std::slice::from_ref(b), &mut out, usize::MAX)?;
            used += n;
            if done {
                assert_eq!(used, i + 1);
                return Ok((out, used, true));
            }
            assert_eq!(n, 1);
        }
        Ok((out, used, false))
    }

    #[test]
    fn chunked_whole_and_bytewise_agree() {
        let body = b"5\r\nhello\r\n7;name=val;x\r\n, world\r\nA \t;ext\r\n0123456789\r\n000\r\nX-Trailer: 1\r\nY: 2\r\n\r\nGET /next";
        let end = body.len() - "GET /next".len();
        let whole = decode_all(body, usize::MAX).unwrap();
        assert_eq!(whole, (b"hello, world0123456789".to_vec(), end, true));
        assert_eq!(decode_bytewise(body).unwrap(), whole);
        // In two pieces at every split point.
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let (n1, done1) = d.decode(&body[..split], &mut out, usize::MAX).unwrap();
            assert_eq!(n1, split.min(end));
            let (n2, done2) = if done1 {
                (0, true)
            } else {
                d.decode(&body[split..], &mut out, usize::MAX).unwrap()
            };
            assert_eq!(
                (out.as_slice(), n1 + n2, done2),
                (whole.0.as_slice(), end, true),
                "{split}"
            );
        }
    }

    #[test]
    fn chunked_empty_body_and_finished_state() {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        assert_eq!(d.decode(b"0\r\n\r\nmore", &mut out, 10), Ok((5, true)));
        assert!(d.is_done());
        assert_eq!(d.decode(b"more", &mut out, 10), Ok((0, true)));
        assert!(out.is_empty());
        // Incomplete: everything consumed, not finished.
        assert_eq!(decode_all(b"3\r\nab", 10), Ok((b"ab".to_vec(), 5, false)));
    }

    #[test]
    fn chunked_max_out_bound() {
        let body = b"a\r\n0123456789\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut calls = 0;
        loop {
            let before = out.len();
            let (n, done) = d.decode(&body[pos..], &mut out, 4).unwrap();
            assert!(out.len() - before <= 4);
            pos += n;
            calls += 1;
            if done {
                break;
            }
            assert!(calls < 20);
        }
        assert_eq!((out.as_slice(), pos), (&b"0123456789abc"[..], body.len()));
        // max_out == 0 stops at the data but still finishes a body with no more data.
        assert_eq!(decode_all(b"3\r\nabc\r\n", 0), Ok((vec![], 3, false)));
        assert_eq!(decode_all(b"0\r\n\r\n", 0), Ok((vec![], 5, true)));
    }

    #[test]
    fn chunked_errors() {
        let malformed = |b: &[u8]| matches!(decode_all(b, usize::MAX), Err(ChunkError::Malformed(_)));
        assert!(malformed(b"g\r\n"));
        assert!(malformed(b"\r\n"));
        assert!(malformed(b";ext\r\n"));
        assert!(malformed(b"-1\r\n"));
        assert!(malformed(b" 5\r\n"));
        assert!(malformed(b"5 x\r\n"));
        assert!(malformed(b"5 \r\n"));
        assert!(malformed(b"5\n"));
        assert!(malformed(b"5\rx"));
        assert!(malformed(b"5;a\nb\r\n"));
        assert!(malformed(b"3\r\nabcd\r\n"));
        assert!(malformed(b"3\r\nabc\n"));
        assert!(malformed(b"0\r\n\n"));
        assert!(malformed(b"0\r\nX: 1\n"));
        assert!(malformed(b"0\r\n\rx"));
        assert!(malformed(b"0\r\nX: 1\rx"));
        // The same errors arrive when fed byte by byte.
        assert!(matches!(
            decode_bytewise(b"3\r\nabcd\r\n"),
            Err(ChunkError::Malformed(_))
        ));
        // 16 hex digits fit a u64; 17 significant ones do not.
        assert_eq!(
            decode_all(b"ffffffffffffffff\r\nab", 10),
            Ok((b"ab".to_vec(), 20, false))
        );
        assert_eq!(decode_all(b"10000000000000000\r\n", 10), Err(ChunkError::TooLarge));
        // Leading zeros are fine, within the line bound.
        assert_eq!(
            decode_all(b"00000000000000000001\r\na\r\n0\r\n\r\n", 10).unwrap().0,
            b"a"
        );
        let mut long = b"1;".to_vec();
        long.resize(MAX_CHUNK_LINE + 10, b'x');
        assert_eq!(decode_all(&long, 10), Err(ChunkError::TooLarge));
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILERS + 3 {
            trailers.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(decode_all(&trailers, 10), Err(ChunkError::TooLarge));
    }

    #[test]
    fn responses() {
        let r = response(200, "application/json", b"{}", true);
        assert_eq!(
            r,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
        );
        let r = response(204, "text/plain", b"ignored", false);
        assert_eq!(r, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        let r = response(404, "", b"", false);
        assert_eq!(
            r,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let h = response_head(
            200,
            &[
                ("Transfer-Encoding", "chunked"),
                ("Content-Disposition", "attachment; filename=\"a\r\nSet-Cookie: x\""),
            ],
            None,
            true,
        );
        assert_eq!(
            String::from_utf8(h).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Disposition: attachment; filename=\"a  Set-Cookie: x\"\r\nConnection: keep-alive\r\n\r\n"
        );
        let h = response_head(299, &[("Bad\r\nName", "v")], Some(0), false);
        assert_eq!(
            h,
            b"HTTP/1.1 299 \r\nBadName: v\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(chunk(b"hello world, hi!"), b"10\r\nhello world, hi!\r\n");
        assert_eq!(chunk(b""), b"");
        assert_eq!(last_chunk(), b"0\r\n\r\n");
        // What we write, our decoder reads.
        let mut body = chunk(&[7u8; 300]);
        body.extend_from_slice(&chunk(b"x"));
        body.extend_from_slice(last_chunk());
        let (out, n, done) = decode_all(&body, usize::MAX).unwrap();
        assert_eq!((out.len(), n, done), (301, body.len(), true));
        for s in [
            100, 101, 200, 201, 206, 400, 401, 403, 404, 409, 413, 416, 429, 431, 500, 501, 503,
        ] {
            assert!(!reason(s).is_empty(), "{s}");
        }
    }

    #[test]
    fn status_for_codes() {
        use ErrorCode::*;
        let want = [
            (BadRequest, 400),
            (UnknownAction, 404),
            (Unauthenticated, 401),
            (Forbidden, 403),
            (NotFound, 404),
            (Conflict, 409),
            (TooLarge, 413),
            (RateLimited, 429),
            (Unavailable, 503),
            (Internal, 500),
        ];
        for (code, status) in want {
            assert_eq!(status_for(code), status, "{code:?}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-4", 10), Ok(Some((0, 4))));
        assert_eq!(parse_range("bytes=2-", 10), Ok(Some((2, 9))));
        assert_eq!(parse_range("bytes=5-100", 10), Ok(Some((5, 9))));
        assert_eq!(parse_range("bytes=9-9", 10), Ok(Some((9, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(parse_range("bytes=-30", 10), Ok(Some((0, 9))));
        assert_eq!(parse_range("Bytes = 1-2 ", 10), Ok(Some((1, 2))));
        assert_eq!(parse_range("bytes=0-99999999999999999999999", 10), Ok(Some((0, 9))));
        // Unsatisfiable.
        assert_eq!(parse_range("bytes=10-", 10), Err(()));
        assert_eq!(parse_range("bytes=10-20", 10), Err(()));
        assert_eq!(parse_range("bytes=99999999999999999999999-", 10), Err(()));
        assert_eq!(parse_range("bytes=-0", 10), Err(()));
        assert_eq!(parse_range("bytes=0-", 0), Err(()));
        assert_eq!(parse_range("bytes=-5", 0), Err(()));
        // Ignored: serve the whole thing.
        for v in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=+1-2",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=0-1, 20-30",
        ] {
            assert_eq!(parse_range(v, 10), Ok(None), "{v:?}");
        }
    }

    #[test]
    fn sniffing() {
        for yes in [
            &b"GET "[..],
            b"GET /ws HTTP/1.1",
            b"POST /api",
            b"HEAD /",
            b"PUT ",
            b"DELETE /x",
            b"OPTIONS *",
        ] {
            assert_eq!(sniff(yes), Some(true), "{:?}", String::from_utf8_lossy(yes));
        }
        for maybe in [
            &b""[..],
            b"G",
            b"GE",
            b"GET",
            b"P",
            b"PO",
            b"PU",
            b"H",
            b"DELET",
            b"OPTIONS",
        ] {
            assert_eq!(sniff(maybe), None, "{:?}", String::from_utf8_lossy(maybe));
        }
        for no in [
            &b"{"[..],
            b"{\"action\":\"PING\"}\n",
            b"GETX",
            b"GET/",
            b"get ",
            b"PATCH ",
            b"X",
            b"\r\n",
            b"PRI ",
        ] {
            assert_eq!(sniff(no), Some(false), "{:?}", String::from_utf8_lossy(no));
        }
    }
}
