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

use serde_json::{Map, Value};

use super::Server;
use crate::chat::accounts::Session;
use crate::chat::ops::Effect;
use crate::chat::ops::Op;
use crate::conn::{Chunk, Framing, Phase};
use crate::protocol::routes::{self, Route};
use crate::protocol::{self, Action, ApiError, ErrorCode};
use crate::wire::http::{self as wire, BodyKind, ChunkedDecoder, HeadError, Method, RequestHead};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How much of a request body is still to come.
#[derive(Debug)]
enum BodyLeft {
    Length(u64),
    Chunked(ChunkedDecoder),
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
    Action { action: Action, data: Map<String, Value> },
}

/// What the job in flight is for.
#[derive(Debug)]
enum Next {
    /// Its answer is the response.
    Response,
    /// It checks the token; then `Pending` runs under the session.
    Auth(Pending),
}

#[derive(Debug)]
enum HttpPhase {
    /// Between requests: waiting for (or parsing) a request head.
    Head,
    Body(Box<BodyState>),
    Waiting(Next),
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
}

impl HttpConn {
    /// `first`: the bytes that told the loop this connection speaks HTTP.
    pub fn new(first: Vec<u8>) -> HttpConn {
        HttpConn {
            inbuf: first,
            phase: HttpPhase::Head,
            keep_alive: true,
            head_only: false,
        }
    }

    /// Whether the socket must not be read: a request is being answered.
    pub fn blocks_input(&self) -> bool {
        matches!(self.phase, HttpPhase::Waiting(_) | HttpPhase::Closed)
    }

    /// Whether a request head has started arriving but is not complete (slowloris).
    pub fn head_in_progress(&self) -> bool {
        matches!(self.phase, HttpPhase::Head) && !self.inbuf.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, HttpPhase::Closed)
    }

    /// The HTTP form of a job's answer (see the module doc): empty for a successful step
    /// that is not the last, else the response, which ends the request.
    pub fn wrap_reply(&mut self, frame: &[u8]) -> Vec<u8> {
        let status = frame_status(frame);
        let last = matches!(self.phase, HttpPhase::Waiting(Next::Response));
        if status == 200 && !last {
            return Vec::new();
        }
        if !matches!(self.phase, HttpPhase::Waiting(_)) {
            return Vec::new(); // a stray answer (the request already ended): nothing to say
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

    /// An error response with the same JSON body a line client would get.
    fn respond_error(&mut self, action: Option<&str>, err: &ApiError) -> Vec<u8> {
        let frame = protocol::encode_error(action, None, err);
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
    /// Parses and runs requests until one must wait or no complete one is buffered.
    pub(super) fn http_input(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.phase != Phase::Open {
                return;
            }
            let eof = conn.read_eof;
            let Framing::Http(h) = &mut conn.framing else { return };
            match &mut h.phase {
                HttpPhase::Waiting(_) => return,
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
                    let done = match &mut b.left {
                        BodyLeft::Length(left) => {
                            let take = (*left).min(h.inbuf.len() as u64) as usize;
                            b.body.extend_from_slice(&h.inbuf[..take]);
                            h.inbuf.drain(..take);
                            *left -= take as u64;
                            *left == 0
                        }
                        BodyLeft::Chunked(dec) => {
                            let room = (max + 1).saturating_sub(b.body.len());
                            match dec.decode(&h.inbuf, &mut b.body, room) {
                                Ok((used, done)) => {
                                    h.inbuf.drain(..used);
                                    if b.body.len() > max {
                                        let out = h.respond_fatal(413, &format!("body exceeds {max} bytes"));
                                        return self.http_send(key, out);
                                    }
                                    done
                                }
                                Err(e) => {
                                    let out = h.respond_fatal(400, &e.to_string());
                                    return self.http_send(key, out);
                                }
                            }
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
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Framing::Http(h) = &mut conn.framing else { return };
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
        let route = routes::route(head.method, &head.path);
        let has_body = match head.body {
            BodyKind::None | BodyKind::Length(0) => false,
            BodyKind::Length(_) | BodyKind::Chunked => true,
        };
        if has_body && !matches!(route, Route::Api(_)) {
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
                let Some(conn) = self.conns.get_mut(key) else { return };
                let Framing::Http(h) = &mut conn.framing else { return };
                h.phase = HttpPhase::Body(Box::new(BodyState {
                    action,
                    bearer: head.bearer().map(str::to_string),
                    left,
                    body: Vec::new(),
                }));
            }
            Route::Health => {
                h.phase = HttpPhase::Waiting(Next::Response);
                self.submit_request(key, Action::Ping, None, Op::Health);
            }
            Route::Metrics => {
                let text = self.render_metrics();
                let Some(conn) = self.conns.get_mut(key) else { return };
                let Framing::Http(h) = &mut conn.framing else { return };
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
                let err = ApiError::new(ErrorCode::UnknownAction, "not available yet");
                let out = h.respond_error(None, &err);
                self.http_send(key, out);
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
            Err(err) => {
                let Some(conn) = self.conns.get_mut(key) else { return };
                let Framing::Http(h) = &mut conn.framing else { return };
                let out = h.respond_error(Some(action.name()), &err);
                return self.http_send(key, out);
            }
        };
        if action.open() {
            return self.run_action(key, action, None, data, None);
        }
        let Some(token) = b.bearer else {
            let err = ApiError::unauthenticated("send the token as Authorization: Bearer <token>");
            let Some(conn) = self.conns.get_mut(key) else { return };
            let Framing::Http(h) = &mut conn.framing else { return };
            let out = h.respond_error(Some(action.name()), &err);
            return self.http_send(key, out);
        };
        self.http_authenticate(key, token, Pending::Action { action, data });
    }

    /// Runs the token through the AUTH job; `pending` follows under its session.
    fn http_authenticate(&mut self, key: usize, token: String, pending: Pending) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Framing::Http(h) = &mut conn.framing else { return };
        h.phase = HttpPhase::Waiting(Next::Auth(pending));
        self.submit_request(key, Action::Auth, None, Op::Auth { token });
    }

    /// Effects of jobs for an HTTP connection. Sessions never stick to the connection:
    /// each request carries its own token. Returns what the generic path still handles.
    pub(super) fn http_effect(&mut self, key: usize, effect: Effect) -> Effect {
        match effect {
            Effect::Session(s) => {
                let Some(conn) = self.conns.get_mut(key) else {
                    return Effect::None;
                };
                let Framing::Http(h) = &mut conn.framing else {
                    return Effect::None;
                };
                if let HttpPhase::Waiting(Next::Auth(_)) = h.phase {
                    let HttpPhase::Waiting(Next::Auth(pending)) =
                        std::mem::replace(&mut h.phase, HttpPhase::Waiting(Next::Response))
                    else {
                        return Effect::None;
                    };
                    self.http_run_pending(key, pending, &s);
                }
                Effect::None
            }
            other => other,
        }
    }

    fn http_run_pending(&mut self, key: usize, pending: Pending, session: &Session) {
        match pending {
            Pending::Action { action, data } => self.run_action(key, action, None, data, Some(session)),
        }
    }
}
