//! WebSocket sessions on the loop: after the `GET /ws` upgrade, each text message is one
//! frame, exactly as a line is on the line protocol, and every reply and push goes out as
//! one text message (see `Conn::push_shared`: a delta's bytes are still shared).
//!
//! Pings are answered with pongs (each charged to the request budget as a PING action is;
//! over budget no pong, and a ping flooder is closed with 1008), a close is echoed and ends
//! the connection, and any protocol error closes it with the RFC's code
//! (`wire::websocket::WsError::close_code`). Every complete message counts as activity for
//! the idle timeout, pings and pongs included: they are how WebSocket clients keep a quiet
//! connection alive.

use super::Server;
use crate::conn::{Chunk, Framing, Phase};
use crate::limits;
use crate::protocol::{self, Action, ApiError};
use crate::wire::websocket::{self as ws, Decoder, Message};

/// A WebSocket connection's input side.
#[derive(Debug)]
pub struct WsConn {
    /// Bytes received and not yet decoded.
    pub inbuf: Vec<u8>,
    decoder: Decoder,
}

impl WsConn {
    /// `rest`: bytes that followed the upgrade request in the same read.
    pub fn new(rest: Vec<u8>, max_message: usize) -> WsConn {
        WsConn {
            inbuf: rest,
            decoder: Decoder::new(max_message),
        }
    }
}

impl Server {
    /// A ping: a keepalive (activity, as PING is on a line) and a request, charged as a PING
    /// action is. Within budget it gets its pong. Over it, there is nothing to answer
    /// `rate_limited` in, so it gets no pong (a client that waits for its pong backs off
    /// by itself); the rejection counts towards the flood disconnect like any other, and a
    /// flooder is closed with 1008 (policy violation).
    fn ws_ping(&mut self, key: usize, payload: &[u8]) {
        self.frame_seen(key);
        let limited = self.charge_request(key, limits::class(Action::Ping));
        let Some(conn) = self.conns.get_mut(key) else { return };
        match limited {
            None => conn.out.push(Chunk::Owned(ws::frame(ws::OP_PONG, payload))),
            // `charge_request` set it to close: say why before the connection goes.
            Some(_) if conn.phase == Phase::Closing => conn
                .out
                .push(Chunk::Owned(ws::close_frame(1008, "rate limited: too many pings"))),
            Some(_) => return,
        }
        self.mark_dirty(key);
    }

    /// Decodes and dispatches messages until none is complete or the connection must wait.
    pub(super) fn ws_input(&mut self, key: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.phase != Phase::Open || conn.must_wait(self.cfg.max_inflight_per_conn) {
                return;
            }
            let Framing::WebSocket(w) = &mut conn.framing else {
                return;
            };
            let next = w.decoder.next(&mut w.inbuf);
            match next {
                Ok(Some(Message::Text(text))) => self.dispatch(key, &text),
                Ok(Some(Message::Binary(_))) => {
                    self.counters.frames_in += 1;
                    self.frame_seen(key); // a message, if not one we take: as a bad line
                    let err = ApiError::bad_request("frames are JSON in text messages, not binary ones");
                    self.reply_now(key, protocol::encode_error(None, None, &err));
                }
                Ok(Some(Message::Ping(payload))) => self.ws_ping(key, &payload),
                // We send no pings, so a pong is unsolicited: RFC 6455 §5.5.3 makes that a
                // one-way heartbeat, and it keeps the connection alive like a ping.
                Ok(Some(Message::Pong(_))) => self.frame_seen(key),
                Ok(Some(Message::Close(code, _))) => {
                    conn.out.push(Chunk::Owned(ws::close_frame(code.unwrap_or(1000), "")));
                    conn.phase = Phase::Closing;
                    self.mark_dirty(key);
                    return;
                }
                Ok(None) => {
                    if conn.read_eof {
                        conn.phase = Phase::Closing; // peer went away without a close frame
                        self.mark_dirty(key);
                    }
                    return;
                }
                Err(e) => {
                    conn.out
                        .push(Chunk::Owned(ws::close_frame(e.close_code(), &e.to_string())));
                    conn.phase = Phase::Closing;
                    self.mark_dirty(key);
                    return;
                }
            }
        }
    }
}
