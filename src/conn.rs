//! One client connection: its socket, its read and write buffers, its session, and the
//! order its replies must leave in.
//!
//! Nothing here decides what a frame means; the loop (`crate::server`) feeds bytes in and
//! flushes bytes out, the handlers decide. What a connection speaks ([`Framing`]) is
//! decided by its first bytes; [`Conn::push_frame`], [`Conn::push_shared`] and
//! [`Conn::wrap_reply`] put a JSON frame into that framing, so callers never care.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;

use crate::chat::accounts::Session;
use crate::chat::fanout::Sub;
use crate::config::Config;
use crate::limits::{ConnLimits, RatePolicy};
use crate::server::http::HttpConn;
use crate::server::websocket::WsConn;
use crate::wire::line::LineReader;
use crate::wire::websocket as ws;

/// Bytes waiting to be written: owned (a reply) or shared (a delta fanned out to many).
#[derive(Debug)]
pub enum Chunk {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
    /// A shared line frame without its final `\n`: the payload of a WebSocket message,
    /// so one serialised delta serves line and WebSocket receivers alike.
    SharedLine(Arc<[u8]>),
    /// A few bytes kept inline (a WebSocket frame header): no allocation per receiver.
    Inline([u8; 10], u8),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(a) => a,
            Chunk::SharedLine(a) => a.strip_suffix(b"\n").unwrap_or(a),
            Chunk::Inline(b, n) => &b[..usize::from(*n).min(b.len())],
        }
    }
}

/// What a connection speaks, chosen by its first bytes (SPEC §2).
#[derive(Debug)]
pub enum Framing {
    /// Nothing decisive has arrived yet; the first bytes wait in `Conn::reader`.
    Sniffing,
    /// One JSON frame per line.
    Line,
    /// HTTP/1.1 requests, one at a time.
    Http(Box<HttpConn>),
    /// An upgraded WebSocket: one JSON frame per text message.
    WebSocket(Box<WsConn>),
}

impl Framing {
    /// The label used in logs and /metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Framing::Sniffing => "sniffing",
            Framing::Line => "line",
            Framing::Http(_) => "http",
            Framing::WebSocket(_) => "websocket",
        }
    }
}

/// The output queue: chunks in order, an offset into the first, and a byte count that
/// the loop compares against the configured limit.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    head: usize,
    len: usize,
}

/// How a flush ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was written.
    Empty,
    /// The socket would block; WRITABLE interest will say when to go on.
    Blocked,
    /// This turn's budget ran out with the socket still writable: go on next turn.
    Budget,
}

impl OutQueue {
    pub fn push(&mut self, c: Chunk) {
        let n = c.bytes().len();
        if n > 0 {
            self.len += n;
            self.chunks.push_back(c);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frees the queue's allocation if nothing is queued (an idle connection keeps none).
    pub fn release_if_empty(&mut self) {
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            self.chunks = VecDeque::new();
            self.head = 0;
        }
    }

    /// Drops everything queued but keeps the allocation (for benchmarks that fan out
    /// without sockets).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.head = 0;
        self.len = 0;
    }

    /// Writes at most `budget` bytes with vectored writes.
    pub fn flush<W: Write>(&mut self, w: &mut W, budget: usize) -> io::Result<Flushed> {
        let mut written = 0;
        while self.len > 0 {
            if written >= budget {
                return Ok(Flushed::Budget);
            }
            let mut slices: [IoSlice<'_>; 32] = [IoSlice::new(&[]); 32];
            let mut n = 0;
            for (i, c) in self.chunks.iter().take(32).enumerate() {
                let b = c.bytes();
                slices[i] = IoSlice::new(if i == 0 { &b[self.head..] } else { b });
                n += 1;
            }
            match w.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    written += k;
                    self.consume(k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // Give the ring's memory back once drained: idle connections stay small.
        if self.chunks.capacity() > 16 {
            self.chunks = VecDeque::new();
        }
        Ok(Flushed::Empty)
    }

    fn consume(&mut self, mut k: usize) {
        self.len -= k;
        while k > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.bytes().len() - self.head;
            if k >= left {
                k -= left;
                self.head = 0;
                self.chunks.pop_front();
            } else {
                self.head += k;
                k = 0;
            }
        }
    }
}

/// Keeps replies in request order while some wait on storage: a reply that is ready
/// early is parked until every earlier one has gone out.
#[derive(Debug, Default)]
pub struct ReplyOrder {
    /// Sequence number of `parked[0]`.
    base: u64,
    parked: VecDeque<Option<Vec<u8>>>,
}

impl ReplyOrder {
    /// Reserves the slot for a reply that will come from a worker.
    pub fn reserve(&mut self) -> u64 {
        self.parked.push_back(None);
        self.base + self.parked.len() as u64 - 1
    }

    /// A reply computed right away: straight out unless earlier replies are pending.
    pub fn ready_now(&mut self, frame: Vec<u8>, out: &mut OutQueue) {
        if self.parked.is_empty() {
            out.push(Chunk::Owned(frame));
        } else {
            self.parked.push_back(Some(frame));
        }
    }

    /// Fills a reserved slot and releases every reply that is now in order.
    pub fn complete(&mut self, seq: u64, frame: Vec<u8>, out: &mut OutQueue) {
        let Some(idx) = seq.checked_sub(self.base).map(|i| i as usize) else {
            return;
        };
        if let Some(slot) = self.parked.get_mut(idx) {
            *slot = Some(frame);
        }
        while let Some(Some(_)) = self.parked.front() {
            if let Some(Some(f)) = self.parked.pop_front() {
                out.push(Chunk::Owned(f));
            }
            self.base += 1;
        }
        if self.parked.is_empty() && self.parked.capacity() > 8 {
            self.parked = VecDeque::new();
        }
    }

    /// Replies not yet sent (waiting on storage, or behind one that is).
    pub fn waiting(&self) -> usize {
        self.parked.len()
    }

    /// Frees the slots' allocation if no reply is pending (an idle connection keeps none).
    pub fn release_if_empty(&mut self) {
        if self.parked.is_empty() && self.parked.capacity() > 0 {
            self.parked = VecDeque::new();
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Open,
    /// Send what is queued, then close (after a fatal protocol error, or at shutdown).
    Closing,
    /// Output sent and our side shut down; discard input until EOF or the deadline, so the
    /// peer reads our last frame instead of a reset.
    Draining(Instant),
    /// Scheduled for the reap phase of this turn.
    Dead,
}

pub struct Conn {
    pub stream: TcpStream,
    pub generation: u64,
    pub ip: IpAddr,
    pub framing: Framing,
    /// Line-protocol input (and, before the framing is known, the first bytes).
    pub reader: LineReader,
    pub out: OutQueue,
    pub replies: ReplyOrder,
    pub session: Option<Session>,
    pub phase: Phase,
    /// WRITABLE interest is registered only while output is pending.
    pub want_write: bool,
    /// The socket may hold unread input (reading stopped early: budget or backpressure).
    pub read_pending: bool,
    /// Already on the loop's flush list for this turn.
    pub dirty: bool,
    /// A session-changing request (REGISTER, LOGIN, AUTH, LOGOUT) is in flight: later
    /// frames wait for it, so they run under the session it establishes.
    pub barrier: bool,
    /// The peer shut down its side: answer what it sent, then close.
    pub read_eof: bool,
    pub last_active: Instant,
    /// Subscriptions, one per server (see `chat::fanout`).
    pub subs: Vec<Sub>,
    /// Since when a live subscription has been held back for slow reading.
    pub lagged_since: Option<Instant>,
    /// Since when queued output has not moved (the peer stopped reading): a stalled
    /// download, WebSocket or line reader is cut after the slow-consumer timeout.
    pub stalled_since: Option<Instant>,
    /// The voice channel this connection has joined.
    pub voice: Option<i64>,
    /// When the connection was accepted (the handshake timeout counts from here).
    pub opened: Instant,
    /// A first complete frame (or HTTP request head) has arrived.
    pub greeted: bool,
    /// Since when an incomplete frame or HTTP request head has been buffered (the
    /// slowloris timeout counts from here; `None` when nothing partial is waiting).
    pub partial_since: Option<Instant>,
    /// Request-rate budgets (`limits::ConnLimits`).
    pub limits: ConnLimits,
    /// The account a LOGIN in flight names (for the failed-login throttle).
    pub login_attempt: Option<String>,
}

impl Conn {
    /// Whether buffered input must wait before being processed (and the socket not read).
    pub fn must_wait(&self, max_inflight: usize) -> bool {
        self.barrier
            || self.replies.waiting() >= max_inflight
            || matches!(&self.framing, Framing::Http(h) if h.blocks_input())
    }

    /// Appends bytes read from the socket to the buffer of the connection's framing.
    pub fn take_input(&mut self, data: &[u8]) {
        match &mut self.framing {
            Framing::Sniffing | Framing::Line => self.reader.extend(data),
            Framing::Http(h) => h.inbuf.extend_from_slice(data),
            Framing::WebSocket(w) => w.inbuf.extend_from_slice(data),
        }
    }

    /// Whether input is buffered that has not been processed yet.
    pub fn has_input(&self) -> bool {
        match &self.framing {
            Framing::Sniffing | Framing::Line => self.reader.pending() > 0,
            Framing::Http(h) => !h.inbuf.is_empty(),
            Framing::WebSocket(w) => !w.inbuf.is_empty(),
        }
    }

    /// Queues a frame the server pushes (a notice, a relayed signal). Plain HTTP has no
    /// pushes (SPEC §2): dropped there.
    pub fn push_frame(&mut self, frame: Vec<u8>) {
        crate::server::metrics::frame_out();
        match &self.framing {
            Framing::Sniffing | Framing::Line => self.out.push(Chunk::Owned(frame)),
            Framing::WebSocket(_) => self.out.push(Chunk::Owned(ws_text(&frame))),
            Framing::Http(_) => {}
        }
    }

    /// Queues a frame serialised once for many receivers (a delta): shared, never copied.
    pub fn push_shared(&mut self, frame: Arc<[u8]>) {
        crate::server::metrics::frame_out();
        match &self.framing {
            Framing::Sniffing | Framing::Line => self.out.push(Chunk::Shared(frame)),
            Framing::WebSocket(_) => {
                let len = frame.strip_suffix(b"\n").unwrap_or(&frame).len();
                let (h, n) = ws::header(ws::OP_TEXT, len);
                self.out.push(Chunk::Inline(h, n as u8));
                self.out.push(Chunk::SharedLine(frame));
            }
            Framing::Http(_) => {}
        }
    }

    /// A response frame in this connection's framing, ready for [`ReplyOrder`]. For HTTP
    /// this is where a frame becomes an HTTP response (or nothing, for an intermediate
    /// step of a multi-job request; see `server::http`).
    pub fn wrap_reply(&mut self, frame: Vec<u8>) -> Vec<u8> {
        crate::server::metrics::frame_out();
        match &mut self.framing {
            Framing::Sniffing | Framing::Line => frame,
            Framing::WebSocket(_) => ws_text(&frame),
            Framing::Http(h) => {
                let response = h.wrap_reply(&frame);
                if h.is_closed() && self.phase == Phase::Open {
                    self.phase = Phase::Closing; // after this response, as it said
                }
                response
            }
        }
    }

    /// Whether an incomplete frame or HTTP request head is buffered, waiting on the
    /// client (not on our own backpressure).
    pub fn partial_input(&self, max_inflight: usize) -> bool {
        if self.must_wait(max_inflight) {
            return false;
        }
        match &self.framing {
            Framing::Sniffing | Framing::Line => self.reader.pending() > 0,
            Framing::Http(h) => h.head_in_progress(),
            Framing::WebSocket(_) => false,
        }
    }

    /// Runs or pauses the slowloris clock of an HTTP request body (`limits::BodyClock`) and
    /// says whether the body has stalled for the handshake timeout. The clock runs only
    /// while the body is due from the client, not while we hold it back: a chunk or job
    /// waiting on a worker (`must_wait`), output over its limit, or `held` (the loop reads
    /// no one, as when it stops).
    pub fn body_stalled(&mut self, now: Instant, held: bool, cfg: &Config) -> bool {
        let due = !held && !self.must_wait(cfg.max_inflight_per_conn) && self.out.len() < cfg.max_output_bytes;
        match &mut self.framing {
            Framing::Http(h) => h.body_stalled(due, now, cfg.handshake_timeout()),
            _ => false,
        }
    }

    pub fn new(stream: TcpStream, generation: u64, ip: IpAddr, now: Instant) -> Conn {
        Conn {
            stream,
            generation,
            ip,
            framing: Framing::Sniffing,
            reader: LineReader::default(),
            out: OutQueue::default(),
            replies: ReplyOrder::default(),
            session: None,
            phase: Phase::Open,
            want_write: false,
            read_pending: false,
            dirty: false,
            barrier: false,
            read_eof: false,
            last_active: now,
            subs: Vec::new(),
            lagged_since: None,
            stalled_since: None,
            voice: None,
            opened: now,
            greeted: false,
            partial_since: None,
            limits: ConnLimits::new(&RatePolicy::default()),
            login_attempt: None,
        }
    }
}

/// A JSON line as a WebSocket text message (without its `\n`).
fn ws_text(frame: &[u8]) -> Vec<u8> {
    ws::frame(ws::OP_TEXT, frame.strip_suffix(b"\n").unwrap_or(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_queues_give_back_their_allocations_and_full_ones_keep_them() {
        let mut out = OutQueue::default();
        let mut replies = ReplyOrder::default();
        let seq = replies.reserve();
        replies.release_if_empty();
        assert_eq!(replies.waiting(), 1, "a pending reply keeps its slot");
        replies.complete(seq, b"r\n".to_vec(), &mut out);
        out.release_if_empty();
        assert_eq!(out.len(), 2, "queued output is kept");
        replies.release_if_empty();
        assert_eq!(replies.parked.capacity(), 0);
        out.consume(2);
        out.release_if_empty();
        assert_eq!(out.chunks.capacity(), 0);
        // Still usable afterwards.
        out.push(Chunk::Owned(b"x\n".to_vec()));
        assert_eq!(out.len(), 2);
        assert_eq!(replies.reserve(), seq + 1);
    }

    /// A writer that takes at most `cap` bytes per call and then would block.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        calls: usize,
        block_after: usize,
    }
    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(b)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls > self.block_after {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = (self.cap - n).min(b.len());
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.cap {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order() {
        let mut q = OutQueue::default();
        q.push(Chunk::Owned(b"hello ".to_vec()));
        q.push(Chunk::Shared(Arc::from(&b"shared "[..])));
        q.push(Chunk::Owned(b"world".to_vec()));
        let mut w = Trickle {
            got: vec![],
            cap: 4,
            calls: 0,
            block_after: 2,
        };
        assert_eq!(q.flush(&mut w, usize::MAX).unwrap(), Flushed::Blocked);
        assert_eq!(q.len(), 18 - 8);
        w.calls = 0;
        w.block_after = 100;
        assert_eq!(q.flush(&mut w, usize::MAX).unwrap(), Flushed::Empty);
        assert_eq!(w.got, b"hello shared world");
        assert!(q.is_empty());
    }

    #[test]
    fn budget_limits_one_flush() {
        let mut q = OutQueue::default();
        for _ in 0..10 {
            q.push(Chunk::Owned(vec![b'x'; 100]));
        }
        let mut w = Trickle {
            got: vec![],
            cap: 100,
            calls: 0,
            block_after: 1000,
        };
        assert_eq!(q.flush(&mut w, 250).unwrap(), Flushed::Budget);
        assert_eq!(w.got.len(), 300);
    }

    #[test]
    fn replies_leave_in_request_order() {
        let mut out = OutQueue::default();
        let mut r = ReplyOrder::default();
        r.ready_now(b"a".to_vec(), &mut out); // nothing pending: straight out
        let s1 = r.reserve();
        r.ready_now(b"c".to_vec(), &mut out); // parked behind s1
        let s2 = r.reserve();
        r.complete(s2, b"d".to_vec(), &mut out); // still behind s1
        assert_eq!(out.len(), 1);
        r.complete(s1, b"b".to_vec(), &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(r.waiting(), 0);
        let mut w = Trickle {
            got: vec![],
            cap: 100,
            calls: 0,
            block_after: 100,
        };
        out.flush(&mut w, usize::MAX).unwrap();
        assert_eq!(w.got, b"abcd");
    }
}
