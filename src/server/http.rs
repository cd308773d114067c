//! HTTP/1.1 on the loop (SPEC §2, §6, §8): one request at a time per connection, parsed
//! with `wire::http`, routed with `protocol::routes`, answered through the same handlers,
//! jobs and reply queue as a line frame.
//!
//! A request moves through [`HttpPhase`]s. Input is not read while a request waits on a
//! worker (`HttpConn::blocks_input`), so pipelined requests queue in the kernel, not here.
//! A request that needs a session first runs the Bearer token through the `AUTH` job, then
//! its own; every job answer passes [`HttpConn::wrap_reply`], which turns the final one
//! into the HTTP response (status from the error code, the response frame as the JSON
//! body) and swallows the successful intermediate ones.
//!
//! Files and backups stream: an upload's body is cut into chunks of [`UPLOAD_CHUNK`]
//! bytes, each written by a worker while the next arrives (reading stops while a full chunk
//! waits, so memory per upload stays at about two chunks); a download or backup asks a
//! worker for its next piece only while the connection's output is below [`LOW_WATER`], so
//! a slow reader holds at most one piece plus the socket buffer.
//!
//! Bodies (API bodies and uploads) are under the slowloris timeout too, as progress rather
//! than total time: see [`crate::limits::BodyClock`]. The loop runs the clock only while the
//! body is due from the client ([`Conn::body_stalled`](crate::conn::Conn::body_stalled)).

use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::Server;
use crate::chat::accounts::Session;
use crate::chat::ops::Effect;
use crate::chat::ops::{parse_id, Op};
use crate::conn::{Chunk, Conn, Framing, Phase};
use crate::files::{Download, Upload, MAX_UPLOAD_BYTES};
use crate::limits::{BodyClock, Class};
use crate::protocol::routes::{self, Route};
use crate::protocol::{self, Action, ApiError, ErrorCode};
use crate::token::ConnId;
use crate::wire::http::{self as wire, BodyKind, ChunkError, ChunkedDecoder, HeadError, Method, RequestHead};
use crate::workers::{Job, Origin};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Bytes of an upload handed to a worker at a time.
pub const UPLOAD_CHUNK: usize = 1 << 20;
/// Bytes of a download read by a worker at a time.
const DOWNLOAD_CHUNK: usize = 512 * 1024;
/// A streaming response asks for its next piece while less than this is queued.
pub const LOW_WATER: usize = 512 * 1024;
/// Deltas per backup page (and the history budget each page costs).
const BACKUP_PAGE: usize = 1000;

/// How much of a request body is still to come.
#[derive(Debug)]
enum BodyLeft {
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl BodyLeft {
    /// Whether the whole body has been taken.
    fn done(&self) -> bool {
        match self {
            BodyLeft::Length(left) => *left == 0,
            BodyLeft::Chunked(dec) => dec.is_done(),
        }
    }

    /// Moves up to `room` body bytes from the front of `inbuf` to `out`; returns whether
    /// the body is complete.
    fn take(&mut self, inbuf: &mut Vec<u8>, out: &mut Vec<u8>, room: usize) -> Result<bool, ChunkError> {
        match self {
            BodyLeft::Length(left) => {
                let n = (*left).min(inbuf.len() as u64).min(room as u64) as usize;
                out.extend_from_slice(&inbuf[..n]);
                inbuf.drain(..n);
                *left -= n as u64;
                Ok(*left == 0)
            }
            BodyLeft::Chunked(dec) => {
                let (used, done) = dec.decode(inbuf, out, room)?;
                inbuf.drain(..used);
                Ok(done)
            }
        }
    }
}

/// An API request whose JSON body is arriving.
#[derive(Debug)]
struct BodyState {
    action: Action,
    bearer: Option<String>,
    left: BodyLeft,
    body: Vec<u8>,
}

/// What to run once the Bearer token has been checked.
#[derive(Debug)]
enum Pending {
    Action {
        action: Action,
        data: Map<String, Value>,
    },
    Upload {
        channel_id: i64,
        name: String,
        content_type: String,
        left: BodyLeft,
        expect_continue: bool,
    },
    Download {
        file_id: i64,
        range: Option<String>,
    },
    Backup {
        server_id: i64,
        from_partition: Option<i64>,
    },
}

/// What the job in flight is for.
#[derive(Debug)]
enum Next {
    /// Its answer is the response.
    Response,
    /// It checks the token; then `Pending` runs under the session.
    Auth(Pending),
    /// UPLOAD_BEGIN: on success the body starts streaming.
    UploadOpen { left: BodyLeft, expect_continue: bool },
    /// DOWNLOAD_OPEN: on success the head goes out and the bytes follow.
    DownloadOpen { range: Option<String> },
    /// BACKUP_BEGIN: on success the NDJSON stream starts.
    BackupOpen { user: i64 },
}

/// An upload whose body is arriving.
#[derive(Debug)]
struct UploadState {
    /// `None` while a worker has it (writing the previous chunk).
    upload: Option<Box<Upload>>,
    left: BodyLeft,
    /// Body bytes not yet handed to a worker.
    pending: Vec<u8>,
    received: u64,
}

#[derive(Debug)]
struct DownloadState {
    /// `None` while a worker reads the next piece.
    download: Option<Box<Download>>,
    next: u64,
    /// One past the last byte to send.
    end: u64,
}

#[derive(Debug)]
struct BackupState {
    server_id: i64,
    user: i64,
    after: i64,
    /// A page is being read.
    busy: bool,
    /// Out of history budget until then.
    resume_at: Option<Instant>,
}

#[derive(Debug)]
enum HttpPhase {
    /// Between requests: waiting for (or parsing) a request head.
    Head,
    Body(Box<BodyState>),
    Waiting(Next),
    Upload(Box<UploadState>),
    Download(Box<DownloadState>),
    Backup(Box<BackupState>),
    /// The last response is queued; the connection closes once it is written.
    Closed,
}

/// An HTTP connection's state.
#[derive(Debug)]
pub struct HttpConn {
    /// Bytes received and not yet parsed.
    pub inbuf: Vec<u8>,
    phase: HttpPhase,
    /// Whether the current request lets the connection stay open after its response.
    keep_alive: bool,
    /// A `HEAD` request: the response goes without its body.
    head_only: bool,
    /// The body of a response is the frame's `data` only (files, health), not the frame.
    data_only: bool,
    /// The slowloris clock of the request body being read.
    body_clock: BodyClock,
}

impl HttpConn {
    /// `first`: the bytes that told the loop this connection speaks HTTP.
    pub fn new(first: Vec<u8>) -> HttpConn {
        HttpConn {
            inbuf: first,
            phase: HttpPhase::Head,
            keep_alive: true,
            head_only: false,
            data_only: false,
            body_clock: BodyClock::default(),
        }
    }

    /// Whether the socket must not be read: a request is being answered, or an upload
    /// has a full chunk waiting for the worker.
    pub fn blocks_input(&self) -> bool {
        match &self.phase {
            HttpPhase::Waiting(_) | HttpPhase::Closed | HttpPhase::Download(_) | HttpPhase::Backup(_) => true,
            HttpPhase::Upload(u) => u.pending.len() >= UPLOAD_CHUNK,
            HttpPhase::Head | HttpPhase::Body(_) => false,
        }
    }

    /// Whether the job in flight checks the request's Bearer token.
    pub fn checking_bearer(&self) -> bool {
        matches!(self.phase, HttpPhase::Waiting(Next::Auth(_)))
    }

    /// Whether a request is in progress (between its head and the end of its response).
    pub fn mid_request(&self) -> bool {
        !matches!(self.phase, HttpPhase::Head | HttpPhase::Closed)
    }

    /// Whether a response body is being streamed (the loop pumps it after each flush).
    pub fn streaming(&self) -> bool {
        matches!(self.phase, HttpPhase::Download(_) | HttpPhase::Backup(_))
    }

    /// Whether the current request's body is still unread (an error must close).
    fn body_unread(&self) -> bool {
        matches!(
            self.phase,
            HttpPhase::Upload(_)
                | HttpPhase::Waiting(Next::UploadOpen { .. })
                | HttpPhase::Waiting(Next::Auth(Pending::Upload { .. }))
        )
    }

    /// Runs the body's slowloris clock if a request body is being read and `due` (the loop
    /// is not holding it back), else pauses it; returns whether the body has stalled for
    /// `timeout`.
    pub fn body_stalled(&mut self, due: bool, now: Instant, timeout: Duration) -> bool {
        // Only a body still arriving is due: not one that is complete (an upload waiting for
        // its last chunk's write), nor the upload phases before it (AUTH, UploadBegin).
        let arriving = match &self.phase {
            HttpPhase::Body(b) => !b.left.done(),
            HttpPhase::Upload(u) => !u.left.done(),
            _ => false,
        };
        if due && arriving {
            self.body_clock.run(now);
        } else {
            self.body_clock.pause();
        }
        self.body_clock.stalled(now, timeout)
    }

    /// Whether a request head has started arriving but is not complete (slowloris).
    pub fn head_in_progress(&self) -> bool {
        matches!(self.phase, HttpPhase::Head) && !self.inbuf.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, HttpPhase::Closed)
    }

    /// The HTTP form of a job's answer (see the module doc): empty for a successful step
    /// that is not the last, else the response, which ends the request. A failure in the
    /// middle of a streamed response can only cut the connection.
    pub fn wrap_reply(&mut self, frame: &[u8]) -> Vec<u8> {
        let status = frame_status(frame);
        match &self.phase {
            HttpPhase::Waiting(Next::Response) => {}
            HttpPhase::Waiting(_) | HttpPhase::Upload(_) if status != 200 => {}
            HttpPhase::Download(_) | HttpPhase::Backup(_) if status != 200 => {
                self.keep_alive = false;
                self.phase = HttpPhase::Closed;
                return Vec::new();
            }
            _ => return Vec::new(),
        }
        if self.body_unread() {
            self.keep_alive = false;
        }
        if self.data_only {
            if let Ok(v) = serde_json::from_slice::<Value>(frame) {
                let body = v["data"].to_string();
                return self.respond(status, "application/json", body.as_bytes(), &[]);
            }
        }
        self.respond(
            status,
            "application/json",
            frame.strip_suffix(b"\n").unwrap_or(frame),
            &[],
        )
    }

    /// A complete response; the request ends (the connection stays open if it may).
    fn respond(&mut self, status: u16, content_type: &str, body: &[u8], headers: &[(&str, &str)]) -> Vec<u8> {
        let mut all: Vec<(&str, &str)> = Vec::with_capacity(headers.len() + 1);
        if !content_type.is_empty() {
            all.push(("Content-Type", content_type));
        }
        all.extend_from_slice(headers);
        let mut out = wire::response_head(status, &all, Some(body.len() as u64), self.keep_alive);
        if !self.head_only {
            out.extend_from_slice(body);
        }
        self.phase = if self.keep_alive {
            HttpPhase::Head
        } else {
            HttpPhase::Closed
        };
        out
    }

    /// An error response with the same JSON body a line client would get (or its `data`).
    fn respond_error(&mut self, action: Option<&str>, err: &ApiError) -> Vec<u8> {
        if self.body_unread() {
            self.keep_alive = false;
        }
        let mut frame = protocol::encode_error(action, None, err);
        if self.data_only {
            if let Ok(v) = serde_json::from_slice::<Value>(&frame) {
                frame = v["data"].to_string().into_bytes();
            }
        }
        let mut headers: Vec<(&str, &str)> = Vec::new();
        let retry;
        if let Some(ms) = err.retry_after_ms {
            retry = ms.div_ceil(1000).to_string();
            headers.push(("Retry-After", &retry));
        }
        let status = wire::status_for(err.code);
        self.respond(
            status,
            "application/json",
            frame.strip_suffix(b"\n").unwrap_or(&frame),
            &headers,
        )
    }

    /// A framing error: answer and close, since the rest of the stream cannot be trusted.
    fn respond_fatal(&mut self, status: u16, message: &str) -> Vec<u8> {
        self.keep_alive = false;
        let code = match status {
            413 | 431 => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        };
        let frame = protocol::encode_error(None, None, &ApiError::new(code, message));
        self.respond(
            status,
            "application/json",
            frame.strip_suffix(b"\n").unwrap_or(&frame),
            &[],
        )
    }
}

/// The HTTP status for a response frame: 200 for success, else from its error code.
fn frame_status(frame: &[u8]) -> u16 {
    let Ok(v) = serde_json::from_slice::<Value>(frame) else {
        return 500;
    };
    let data = &v["data"];
    if data["status"] == "success" {
        return 200;
    }
    data["code"]
        .as_str()
        .and_then(ErrorCode::parse)
        .map_or(500, wire::status_for)
}

/// Actions that only make sense on a connection that receives pushes.
fn needs_push(action: Action) -> bool {
    matches!(
        action,
        Action::Subscribe | Action::Unsubscribe | Action::JoinVoice | Action::LeaveVoice
    )
}

impl Server {
    /// Parses and runs requests until one must wait or no complete one is buffered, then
    /// starts or pauses the body clock (a body may have begun, or now wait on a worker).
    pub(super) fn http_input(&mut self, key: usize) {
        self.http_advance(key);
        self.note_body(key);
    }

    fn http_advance(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.phase != Phase::Open {
                return;
            }
            let eof = conn.read_eof;
            let Framing::Http(h) = &mut conn.framing else { return };
            match &mut h.phase {
                HttpPhase::Waiting(_) | HttpPhase::Download(_) | HttpPhase::Backup(_) => return,
                HttpPhase::Upload(_) => {
                    if !self.http_upload_step(key, eof) {
                        return;
                    }
                }
                HttpPhase::Closed => {
                    conn.phase = Phase::Closing;
                    self.mark_dirty(key);
                    return;
                }
                HttpPhase::Head => {
                    if h.inbuf.is_empty() {
                        if eof {
                            conn.phase = Phase::Closing;
                            self.mark_dirty(key);
                        }
                        return;
                    }
                    let limits = wire::Limits::default();
                    match wire::parse_head(&h.inbuf, &limits) {
                        Ok(None) if eof => return self.http_close_now(key),
                        Ok(None) => return,
                        Err(e) => return self.http_head_error(key, &e),
                        Ok(Some((head, n))) => {
                            h.inbuf.drain(..n);
                            self.metrics.http_requests += 1;
                            self.http_request(key, head);
                        }
                    }
                }
                HttpPhase::Body(b) => {
                    let max = self.cfg.max_frame_bytes;
                    let room = (max + 1).saturating_sub(b.body.len());
                    let before = b.body.len();
                    let taken = b.left.take(&mut h.inbuf, &mut b.body, room);
                    h.body_clock.progress((b.body.len() - before) as u64, Instant::now());
                    let done = match taken {
                        Ok(_) if b.body.len() > max => {
                            let out = h.respond_fatal(413, &format!("body exceeds {max} bytes"));
                            return self.http_send(key, out);
                        }
                        Ok(done) => done,
                        Err(e) => {
                            let out = h.respond_fatal(400, &e.to_string());
                            return self.http_send(key, out);
                        }
                    };
                    if !done {
                        if eof {
                            return self.http_close_now(key);
                        }
                        return;
                    }
                    let HttpPhase::Body(b) = std::mem::replace(&mut h.phase, HttpPhase::Waiting(Next::Response)) else {
                        return;
                    };
                    self.http_api_call(key, *b);
                }
            }
        }
    }

    /// The HTTP state of a connection, if it is (still) an HTTP connection.
    fn http_conn(&mut self, key: usize) -> Option<&mut HttpConn> {
        match &mut self.conns.get_mut(key)?.framing {
            Framing::Http(h) => Some(h),
            _ => None,
        }
    }

    /// Queues raw response bytes (a response made outside `wrap_reply`).
    fn http_send(&mut self, key: usize, bytes: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.replies.ready_now(bytes, &mut conn.out);
        if matches!(&conn.framing, Framing::Http(h) if h.is_closed()) && conn.phase == Phase::Open {
            conn.phase = Phase::Closing;
        }
        self.mark_dirty(key);
    }

    /// The peer went away mid-request: nothing useful can be said.
    fn http_close_now(&mut self, key: usize) {
        self.close_now(key);
    }

    fn http_head_error(&mut self, key: usize, e: &HeadError) {
        let Some(h) = self.http_conn(key) else { return };
        h.head_only = false;
        let out = h.respond_fatal(e.status(), &e.to_string());
        self.http_send(key, out);
    }

    /// A request head has arrived: route it.
    fn http_request(&mut self, key: usize, head: RequestHead) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Framing::Http(h) = &mut conn.framing else { return };
        h.keep_alive = head.keep_alive;
        h.head_only = head.method == Method::Head;
        h.data_only = false;
        let route = routes::route(head.method, &head.path);
        let has_body = match head.body {
            BodyKind::None | BodyKind::Length(0) => false,
            BodyKind::Length(_) | BodyKind::Chunked => true,
        };
        if has_body && !matches!(route, Route::Api(_) | Route::Upload) {
            // No other route takes a body: answer, and close rather than read it to skip it.
            h.keep_alive = false;
            if matches!(
                route,
                Route::Health | Route::Metrics | Route::WebSocket | Route::Download(_) | Route::Backup(_)
            ) {
                let out = h.respond_fatal(400, "this request takes no body");
                return self.http_send(key, out);
            }
        }
        match route {
            Route::Api(action) => {
                let max = self.cfg.max_frame_bytes as u64;
                let left = match head.body {
                    BodyKind::Length(n) if n > max => {
                        let out = h.respond_fatal(413, &format!("body exceeds {max} bytes"));
                        return self.http_send(key, out);
                    }
                    BodyKind::None => BodyLeft::Length(0),
                    BodyKind::Length(n) => BodyLeft::Length(n),
                    BodyKind::Chunked => BodyLeft::Chunked(ChunkedDecoder::default()),
                };
                if head.expect_continue && has_body {
                    conn.out.push(Chunk::Owned(CONTINUE.to_vec()));
                    self.mark_dirty(key);
                }
                let Some(h) = self.http_conn(key) else { return };
                h.phase = HttpPhase::Body(Box::new(BodyState {
                    action,
                    bearer: head.bearer().map(str::to_string),
                    left,
                    body: Vec::new(),
                }));
            }
            Route::Health | Route::Metrics => {
                h.data_only = true;
                // A read of the connection's budget each: a health check is a storage round
                // trip, and the metrics are rendered on the loop.
                let limited = self.charge_request(key, Class::Read);
                let Some(h) = self.http_conn(key) else { return };
                if let Some(ms) = limited {
                    let out = h.respond_error(None, &ApiError::rate_limited(ms));
                    return self.http_send(key, out);
                }
                if matches!(route, Route::Health) {
                    h.phase = HttpPhase::Waiting(Next::Response);
                    return self.submit_request(key, Action::Ping, None, Op::Health);
                }
                let text = self.render_metrics();
                let Some(h) = self.http_conn(key) else { return };
                let out = h.respond(200, "text/plain; version=0.0.4", text.as_bytes(), &[]);
                self.http_send(key, out);
            }
            Route::WebSocket => match &head.websocket_key {
                Some(k) => {
                    let rest = std::mem::take(&mut h.inbuf);
                    conn.out
                        .push(Chunk::Owned(crate::wire::websocket::handshake_response(k)));
                    conn.framing =
                        Framing::WebSocket(Box::new(super::websocket::WsConn::new(rest, self.cfg.max_frame_bytes)));
                    self.metrics.websocket_upgrades += 1;
                    self.mark_dirty(key);
                    self.ws_input(key);
                }
                None if head.wants_websocket() => {
                    let out = h.respond(
                        400,
                        "text/plain",
                        b"bad WebSocket upgrade\n",
                        &[("Sec-WebSocket-Version", "13")],
                    );
                    self.http_send(key, out);
                }
                None => {
                    let out = h.respond(
                        426,
                        "text/plain",
                        b"GET /ws is a WebSocket endpoint\n",
                        &[("Upgrade", "websocket")],
                    );
                    self.http_send(key, out);
                }
            },
            Route::Upload | Route::Download(_) | Route::Backup(_) => {
                h.data_only = true;
                // One unit of the connection's request budget, like an API call (charged
                // before the token's AUTH job, so a flood of them costs no storage work).
                let class = match route {
                    Route::Upload => Class::Write,
                    _ => Class::Read,
                };
                let limited = self.charge_request(key, class);
                let Some(h) = self.http_conn(key) else { return };
                if let Some(ms) = limited {
                    h.keep_alive &= !has_body; // its body is not read: close after the answer
                    let out = h.respond_error(None, &ApiError::rate_limited(ms));
                    return self.http_send(key, out);
                }
                let Some(token) = head.bearer().map(str::to_string) else {
                    h.keep_alive &= !has_body;
                    let err = ApiError::unauthenticated("send the token as Authorization: Bearer <token>");
                    let out = h.respond_error(None, &err);
                    return self.http_send(key, out);
                };
                let pending = match route {
                    Route::Upload => {
                        let channel_id = head.query_param("channel_id").as_deref().and_then(parse_id);
                        let Some(channel_id) = channel_id else {
                            h.keep_alive &= !has_body;
                            let out = h.respond_error(None, &ApiError::bad_request("channel_id is required"));
                            return self.http_send(key, out);
                        };
                        let left = match head.body {
                            BodyKind::Length(n) if n > MAX_UPLOAD_BYTES => {
                                h.keep_alive = false;
                                let err = ApiError::new(ErrorCode::TooLarge, "files are at most 100 MiB");
                                let out = h.respond_error(None, &err);
                                return self.http_send(key, out);
                            }
                            BodyKind::None => BodyLeft::Length(0),
                            BodyKind::Length(n) => BodyLeft::Length(n),
                            BodyKind::Chunked => BodyLeft::Chunked(ChunkedDecoder::default()),
                        };
                        Pending::Upload {
                            channel_id,
                            name: head.query_param("name").unwrap_or_else(|| "file".to_string()),
                            content_type: head.header("content-type").unwrap_or_default().to_string(),
                            left,
                            expect_continue: head.expect_continue && has_body,
                        }
                    }
                    Route::Download(file_id) => Pending::Download {
                        file_id,
                        range: head.header("range").map(str::to_string),
                    },
                    Route::Backup(server_id) => {
                        let from = head.query_param("from_partition");
                        let from_partition = match from.as_deref().map(str::parse::<i64>) {
                            None => None,
                            Some(Ok(k)) if k >= 0 => Some(k),
                            Some(_) => {
                                let err = ApiError::bad_request("from_partition must be a partition number");
                                let out = h.respond_error(None, &err);
                                return self.http_send(key, out);
                            }
                        };
                        Pending::Backup {
                            server_id,
                            from_partition,
                        }
                    }
                    _ => return,
                };
                self.http_authenticate(key, token, pending);
            }
            Route::WrongMethod(allow) => {
                let err = ApiError::bad_request(format!("method not allowed here; use {allow}"));
                let frame = protocol::encode_error(None, None, &err);
                let out = h.respond(
                    405,
                    "application/json",
                    frame.strip_suffix(b"\n").unwrap_or(&frame),
                    &[("Allow", allow)],
                );
                self.http_send(key, out);
            }
            Route::NotFound => {
                let out = h.respond_error(None, &ApiError::not_found(format!("no route {}", head.path)));
                self.http_send(key, out);
            }
        }
    }

    /// An API request's body is complete: check it, then run the action (after its token).
    fn http_api_call(&mut self, key: usize, b: BodyState) {
        let action = b.action;
        let data = if b.body.iter().all(u8::is_ascii_whitespace) {
            Ok(Map::new())
        } else {
            match serde_json::from_slice::<Value>(&b.body) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err(ApiError::bad_request(
                    "the body must be a JSON object (the frame's data)",
                )),
                Err(e) => Err(ApiError::bad_request(format!("invalid JSON: {e}"))),
            }
        };
        let data = match data {
            Ok(_) if needs_push(action) => Err(ApiError::bad_request(format!(
                "{} needs pushes: use the line protocol or a WebSocket",
                action.name()
            ))),
            other => other,
        };
        let data = match data {
            Ok(d) => d,
            Err(err) => return self.http_fail(key, Some(action.name()), &err),
        };
        if action.open() {
            return self.run_action(key, action, None, data, None);
        }
        let Some(token) = b.bearer else {
            let err = ApiError::unauthenticated("send the token as Authorization: Bearer <token>");
            return self.http_fail(key, Some(action.name()), &err);
        };
        self.http_authenticate(key, token, Pending::Action { action, data });
    }

    /// Runs the token through the AUTH job; `pending` follows under its session. The check
    /// is limited as a line AUTH is (login budget, failed-login throttle of the address):
    /// refused, it is 429 at once, without a job.
    fn http_authenticate(&mut self, key: usize, token: String, pending: Pending) {
        let limited = self.check_login(key, None);
        let Some(h) = self.http_conn(key) else { return };
        h.phase = HttpPhase::Waiting(Next::Auth(pending));
        if let Some(ms) = limited {
            // Answered as its AUTH step, like a bad token; an upload's unread body closes
            // the connection after the answer (`body_unread`).
            let out = h.respond_error(Some(Action::Auth.name()), &ApiError::rate_limited(ms));
            return self.http_send(key, out);
        }
        self.submit_request(key, Action::Auth, None, Op::Auth { token });
    }

    /// Effects of jobs for an HTTP connection. Sessions never stick to the connection:
    /// each request carries its own token. Returns what the generic path still handles.
    pub(super) fn http_effect(&mut self, key: usize, effect: Effect) -> Effect {
        let Some(conn) = self.conns.get_mut(key) else {
            return effect;
        };
        let Framing::Http(h) = &mut conn.framing else {
            return effect;
        };
        match effect {
            Effect::Session(s) => {
                if let HttpPhase::Waiting(Next::Auth(_)) = h.phase {
                    let HttpPhase::Waiting(Next::Auth(pending)) =
                        std::mem::replace(&mut h.phase, HttpPhase::Waiting(Next::Response))
                    else {
                        return Effect::None;
                    };
                    self.http_run_pending(key, pending, &s);
                }
            }
            Effect::Upload(up) => {
                match std::mem::replace(&mut h.phase, HttpPhase::Closed) {
                    HttpPhase::Waiting(Next::UploadOpen { left, expect_continue }) => {
                        h.phase = HttpPhase::Upload(Box::new(UploadState {
                            upload: Some(up),
                            left,
                            pending: Vec::new(),
                            received: 0,
                        }));
                        if expect_continue {
                            conn.out.push(Chunk::Owned(CONTINUE.to_vec()));
                            self.mark_dirty(key);
                        }
                    }
                    HttpPhase::Upload(mut u) => {
                        u.upload = Some(up);
                        h.phase = HttpPhase::Upload(u);
                    }
                    other => {
                        h.phase = other;
                        self.submit_internal(Op::UploadAbort { upload: up });
                        return Effect::None;
                    }
                }
                self.http_input(key); // body bytes may already be waiting
            }
            Effect::Download(d) => {
                if let HttpPhase::Waiting(Next::DownloadOpen { range }) = &mut h.phase {
                    let range = range.take();
                    self.http_start_download(key, d, range);
                }
            }
            Effect::FileChunk { download, bytes } => {
                let HttpPhase::Download(ds) = &mut h.phase else {
                    return Effect::None;
                };
                ds.next += bytes.len() as u64;
                let (next, end) = (ds.next, ds.end);
                ds.download = Some(download);
                if bytes.is_empty() && next < end {
                    // The blob is shorter than its row says: the promised length cannot be
                    // kept, so cut the connection.
                    h.keep_alive = false;
                    h.phase = HttpPhase::Closed;
                    conn.phase = Phase::Closing;
                    self.mark_dirty(key);
                    return Effect::None;
                }
                conn.out.push(Chunk::Owned(bytes));
                self.mark_dirty(key);
                if next >= end {
                    self.http_finish(key);
                } else {
                    self.http_pump(key);
                }
            }
            Effect::Backup { server_id, after } => {
                let HttpPhase::Waiting(Next::BackupOpen { user }) = h.phase else {
                    return Effect::None;
                };
                let name = format!("attachment; filename=\"server-{server_id}.ndjson\"");
                let headers = [
                    ("Content-Type", "application/x-ndjson"),
                    ("Content-Disposition", name.as_str()),
                    ("Transfer-Encoding", "chunked"),
                ];
                conn.out
                    .push(Chunk::Owned(wire::response_head(200, &headers, None, h.keep_alive)));
                h.phase = HttpPhase::Backup(Box::new(BackupState {
                    server_id,
                    user,
                    after,
                    busy: false,
                    resume_at: None,
                }));
                self.mark_dirty(key);
                self.http_pump(key);
            }
            Effect::BackupPage { bytes, last, done, .. } => {
                let HttpPhase::Backup(b) = &mut h.phase else {
                    return Effect::None;
                };
                b.busy = false;
                b.after = b.after.max(last);
                conn.out.push(Chunk::Owned(wire::chunk(&bytes)));
                if done {
                    conn.out.push(Chunk::Owned(wire::last_chunk().to_vec()));
                }
                self.mark_dirty(key);
                if done {
                    self.http_finish(key);
                } else {
                    self.http_pump(key);
                }
            }
            other => return other,
        }
        Effect::None
    }

    fn http_run_pending(&mut self, key: usize, pending: Pending, session: &Session) {
        let user = session.user_id;
        let (next, action, op) = match pending {
            Pending::Action { action, data } => return self.run_action(key, action, None, data, Some(session)),
            Pending::Upload {
                channel_id,
                name,
                content_type,
                left,
                expect_continue,
            } => (
                Next::UploadOpen { left, expect_continue },
                Action::PostMessage,
                Op::UploadBegin {
                    user,
                    channel_id,
                    name,
                    content_type,
                },
            ),
            Pending::Download { file_id, range } => (
                Next::DownloadOpen { range },
                Action::GetMessages,
                Op::DownloadOpen { user, file_id },
            ),
            Pending::Backup {
                server_id,
                from_partition,
            } => {
                if let Err(ms) = self.charge_history(user, BACKUP_PAGE) {
                    return self.http_fail(key, None, &ApiError::rate_limited(ms));
                }
                (
                    Next::BackupOpen { user },
                    Action::RestoreHistory,
                    Op::BackupBegin {
                        user,
                        server_id,
                        from_partition,
                    },
                )
            }
        };
        let Some(h) = self.http_conn(key) else { return };
        h.phase = HttpPhase::Waiting(next);
        self.submit_request(key, action, None, op);
    }

    /// Answers the current request with an error.
    fn http_fail(&mut self, key: usize, action: Option<&str>, err: &ApiError) {
        let Some(h) = self.http_conn(key) else { return };
        let out = h.respond_error(action, err);
        self.http_send(key, out);
    }

    /// Charges the per-user history budget (RESTORE_HISTORY, backups; SPEC §5).
    pub(super) fn charge_history(&mut self, user: i64, cost: usize) -> Result<(), u64> {
        if !self.cfg.rate_limits {
            return Ok(());
        }
        let load = self.pool.in_flight() as f64 / self.cfg.job_queue as f64;
        self.history.charge(user, cost as f64, Instant::now(), load)
    }

    /// A streamed response is complete: the next request may follow (or the connection
    /// closes, if this one said so).
    fn http_finish(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Framing::Http(h) = &mut conn.framing else { return };
        if h.keep_alive {
            h.phase = HttpPhase::Head;
        } else {
            h.phase = HttpPhase::Closed;
            if conn.phase == Phase::Open {
                conn.phase = Phase::Closing;
            }
        }
        self.mark_dirty(key);
    }

    /// Moves buffered body bytes into the upload and hands full chunks to a worker.
    /// Returns whether `http_input` should go on (a chunk went out and more may fit).
    fn http_upload_step(&mut self, key: usize, eof: bool) -> bool {
        enum Do {
            Write(Box<Upload>, Vec<u8>),
            Finish(Box<Upload>),
            Fatal(u16, String, Option<Box<Upload>>),
            Gone,
            Wait,
        }
        let todo = {
            let Some(conn) = self.conns.get_mut(key) else {
                return false;
            };
            let Framing::Http(h) = &mut conn.framing else {
                return false;
            };
            let HttpPhase::Upload(u) = &mut h.phase else {
                return false;
            };
            let room = UPLOAD_CHUNK.saturating_sub(u.pending.len());
            let before = u.pending.len();
            let body_done = u
                .left
                .take(&mut h.inbuf, &mut u.pending, room)
                .map_err(|e| e.to_string());
            let got = (u.pending.len() - before) as u64;
            u.received += got;
            h.body_clock.progress(got, Instant::now());
            match body_done {
                Err(e) => Do::Fatal(400, e, u.upload.take()),
                Ok(_) if u.received > MAX_UPLOAD_BYTES => {
                    Do::Fatal(413, "files are at most 100 MiB".into(), u.upload.take())
                }
                Ok(done) => match u.upload.take() {
                    Some(up) if !u.pending.is_empty() && (u.pending.len() >= UPLOAD_CHUNK || done) => {
                        Do::Write(up, std::mem::take(&mut u.pending))
                    }
                    Some(up) if done => Do::Finish(up),
                    Some(up) => {
                        u.upload = Some(up);
                        if eof && h.inbuf.is_empty() {
                            Do::Gone
                        } else {
                            Do::Wait
                        }
                    }
                    None if !done && eof && h.inbuf.is_empty() => Do::Gone,
                    None => Do::Wait,
                },
            }
        };
        match todo {
            Do::Write(upload, bytes) => {
                self.submit_request(key, Action::PostMessage, None, Op::UploadWrite { upload, bytes });
                true
            }
            Do::Finish(upload) => {
                if let Some(h) = self.http_conn(key) {
                    h.phase = HttpPhase::Waiting(Next::Response);
                }
                self.submit_request(key, Action::PostMessage, None, Op::UploadFinish { upload });
                false
            }
            Do::Fatal(status, message, upload) => {
                if let Some(upload) = upload {
                    self.submit_internal(Op::UploadAbort { upload });
                }
                let Some(conn) = self.conns.get_mut(key) else {
                    return false;
                };
                let Framing::Http(h) = &mut conn.framing else {
                    return false;
                };
                let out = h.respond_fatal(status, &message);
                self.http_send(key, out);
                false
            }
            Do::Gone => {
                self.close_now(key); // the upload goes to `http_reap`
                false
            }
            Do::Wait => false,
        }
    }

    /// Sends the head of a download and starts its body.
    fn http_start_download(&mut self, key: usize, d: Box<Download>, range: Option<String>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Framing::Http(h) = &mut conn.framing else { return };
        let size = d.size();
        let (status, start, end, content_range) = match range.as_deref().map(|r| wire::parse_range(r, size)) {
            None | Some(Ok(None)) => (200, 0, size, None),
            Some(Ok(Some((s, e)))) => (206, s, e + 1, Some(format!("bytes {s}-{e}/{size}"))),
            Some(Err(())) => {
                let unsatisfied = format!("bytes */{size}");
                let out = h.respond(416, "", b"", &[("Content-Range", unsatisfied.as_str())]);
                return self.http_send(key, out);
            }
        };
        let disposition = content_disposition(d.name());
        let etag = format!("\"{}\"", d.sha256());
        let mut headers = vec![
            ("Content-Type", d.content_type()),
            ("Content-Disposition", disposition.as_str()),
            ("Accept-Ranges", "bytes"),
            ("ETag", etag.as_str()),
            ("Cache-Control", "private"),
        ];
        if let Some(cr) = &content_range {
            headers.push(("Content-Range", cr.as_str()));
        }
        let head = wire::response_head(status, &headers, Some(end - start), h.keep_alive);
        conn.out.push(Chunk::Owned(head));
        self.mark_dirty(key);
        let Some(h) = self.http_conn(key) else { return };
        if h.head_only || start >= end {
            return self.http_finish(key);
        }
        h.phase = HttpPhase::Download(Box::new(DownloadState {
            download: Some(d),
            next: start,
            end,
        }));
        self.http_pump(key);
    }

    /// Asks a worker for the next piece of a streamed response, if the connection has
    /// room for it and none is on its way.
    pub(super) fn http_pump(&mut self, key: usize) {
        let now = Instant::now();
        let op = {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.out.len() >= LOW_WATER || conn.phase != Phase::Open {
                return;
            }
            let generation = conn.generation;
            let Framing::Http(h) = &mut conn.framing else { return };
            match &mut h.phase {
                HttpPhase::Download(ds) => match ds.download.take() {
                    Some(download) if ds.next < ds.end => {
                        let len = (ds.end - ds.next).min(DOWNLOAD_CHUNK as u64) as usize;
                        Op::FileRead {
                            download,
                            offset: ds.next,
                            len,
                        }
                    }
                    other => {
                        ds.download = other;
                        return;
                    }
                },
                HttpPhase::Backup(b) => {
                    if b.busy || b.resume_at.is_some_and(|t| t > now) {
                        return;
                    }
                    let (user, server_id, after) = (b.user, b.server_id, b.after);
                    // The first page was charged before the head went out.
                    if after > 0 || b.resume_at.is_some() {
                        if let Err(ms) = self.charge_history(user, BACKUP_PAGE) {
                            let Some(h) = self.http_conn(key) else {
                                return;
                            };
                            if let HttpPhase::Backup(b) = &mut h.phase {
                                b.resume_at = Some(now + std::time::Duration::from_millis(ms));
                            }
                            self.backup_waits.push((key, generation));
                            return;
                        }
                    }
                    let Some(h) = self.http_conn(key) else {
                        return;
                    };
                    let HttpPhase::Backup(b) = &mut h.phase else { return };
                    b.busy = true;
                    b.resume_at = None;
                    Op::BackupPage {
                        server_id,
                        after,
                        limit: BACKUP_PAGE,
                    }
                }
                _ => return,
            }
        };
        let action = match op {
            Op::FileRead { .. } => Action::GetMessages,
            _ => Action::RestoreHistory,
        };
        self.submit_request(key, action, None, op);
    }

    /// Backups whose history budget has refilled go on.
    pub(super) fn http_resume_backups(&mut self, now: Instant) {
        for (key, generation) in std::mem::take(&mut self.backup_waits) {
            let due = self.conns.get(key).is_some_and(|c| {
                c.generation == generation
                    && matches!(&c.framing, Framing::Http(h)
                        if matches!(&h.phase, HttpPhase::Backup(b) if b.resume_at.is_some_and(|t| t <= now)))
            });
            if due {
                self.http_pump(key);
            } else if self.conns.get(key).is_some_and(|c| c.generation == generation) {
                self.backup_waits.push((key, generation));
            }
        }
    }

    /// A closed connection in the middle of an upload: its temp file is removed on a worker.
    pub(super) fn http_reap(&mut self, conn: &mut Conn) {
        if let Framing::Http(h) = &mut conn.framing {
            if let HttpPhase::Upload(u) = &mut h.phase {
                if let Some(upload) = u.upload.take() {
                    self.submit_internal(Op::UploadAbort { upload });
                }
            }
        }
    }

    /// Queues a job nobody waits for (cleanup).
    pub(super) fn submit_internal(&mut self, op: Op) {
        let origin = Origin {
            conn: ConnId {
                key: usize::MAX,
                generation: 0,
            },
            seq: None,
            action: Action::Ping,
            id: None,
            feed: None,
            submitted: Instant::now(),
        };
        let job = Job {
            origin,
            op,
            deadline: Instant::now() + self.cfg.storage_timeout(),
        };
        // A full queue drops the job here; an upload's Drop still removes its temp file.
        let _ = self.pool.submit(job);
    }
}

/// `Content-Disposition` for a stored name: a plain ASCII fallback plus the exact name
/// percent-encoded (RFC 6266, RFC 8187).
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_is_safe_and_exact() {
        assert_eq!(
            content_disposition("a b.txt"),
            "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"
        );
        let d = content_disposition("é\"\r\n.png");
        assert!(d.starts_with("attachment; filename=\"____.png\""), "{d}");
        assert!(d.ends_with("%C3%A9%22%0D%0A.png"), "{d}");
    }

    #[test]
    fn status_of_frames() {
        assert_eq!(frame_status(br#"{"action":"X","data":{"status":"success"}}"#), 200);
        assert_eq!(
            frame_status(br#"{"action":"X","data":{"status":"error","code":"forbidden"}}"#),
            403
        );
        assert_eq!(frame_status(b"nope"), 500);
    }
}
