//! One client thread: its own mio Poll and its share of the connections, driven through the
//! phases the main thread sets. Nothing a server sends can panic this code: bytes that do not
//! parse are counted as malformed and the connection is closed.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde::Deserialize;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::cli::{Cli, Scenario, Target};
use crate::resp::{self, Resp};
use crate::setup::World;
use crate::util::{now_ns, parse_body, write_body, Bits};

pub const PH_SETUP: u8 = 0;
pub const PH_RUN: u8 = 1;
pub const PH_STOP: u8 = 2;

/// Ids below this are handshake requests; a post's id is `POST_ID_BASE + seq`.
const POST_ID_BASE: u64 = 1000;
/// Unconsumed input a connection may hold (a line longer than this is malformed).
const MAX_INPUT: usize = 8 << 20;
const READ_CHUNK: usize = 256 * 1024;

/// Counters every thread adds to; the main thread reads them for the progress line and the
/// phase changes.
#[derive(Default)]
pub struct Shared {
    pub phase: AtomicU8,
    /// When posting must stop (ns of the shared clock), set with the RUN phase.
    pub run_deadline_ns: AtomicU64,
    pub run_start_ns: AtomicU64,
    pub opened: AtomicU64,
    pub ready: AtomicU64,
    pub subs_ready: AtomicU64,
    pub failed: AtomicU64,
    pub disconnects: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub post_errors: AtomicU64,
    pub rate_limited: AtomicU64,
    pub deliveries: AtomicU64,
    pub malformed: AtomicU64,
    pub sync_notices: AtomicU64,
    pub handshakes: AtomicU64,
    pub pubs_done: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    pub last_ack_ns: AtomicU64,
    /// The first few errors, for the user.
    pub errors: Mutex<Vec<String>>,
}

impl Shared {
    pub fn note_error(&self, e: String) {
        let mut v = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < 10 && !v.contains(&e) {
            v.push(e);
        }
    }
}

/// What a connection does.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    /// Subscribes (fanout: server 0; ingest: every server) and checks its deliveries.
    Sub,
    /// Posts `messages` to `(server, channel)`.
    Pub {
        index: usize,
        server: usize,
        channel: usize,
    },
    /// connect: subscribes (IRC: joins channel group `group`) and stays idle.
    Idle { group: usize },
    /// churn: AUTH, SUBSCRIBE with a cursor, close; then a new one.
    Churn,
}

#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Global connection number (source address, IRC nick).
    pub conn: usize,
    pub role: Role,
    pub user: usize,
}

/// Everything the threads share, read-only.
pub struct Ctx {
    pub cli: Cli,
    pub world: World,
    pub shared: Shared,
    pub publishers: usize,
    pub messages: u64,
    /// Source addresses to spread connections over (0: let the kernel choose).
    pub source_ips: usize,
    pub server_index: HashMap<String, usize>,
    /// Prefix of IRC nicks, unique per run.
    pub run_tag: String,
}

impl Ctx {
    fn servers_of_sub(&self) -> usize {
        if self.cli.scenario == Scenario::Ingest {
            self.world.server_ids.len()
        } else {
            1
        }
    }

    /// Bits per publisher in a subscriber's set: `messages` rounded up to whole words.
    pub fn stride(&self) -> usize {
        (self.messages as usize).div_ceil(64) * 64
    }

    /// Bits per subscriber: a stride per publisher.
    pub fn post_slots(&self) -> usize {
        self.publishers * self.stride()
    }

    /// A post's bit in a subscriber's set.
    fn bit(&self, publisher: u64, seq: u64) -> usize {
        publisher as usize * self.stride() + seq as usize
    }

    /// The index of a server id this run created (a short scan for the few servers of a
    /// run, the map past that).
    fn server_of(&self, id: &[u8]) -> Option<usize> {
        let ids = &self.world.server_ids;
        if ids.len() <= 16 {
            ids.iter().position(|s| s.as_bytes() == id)
        } else {
            std::str::from_utf8(id)
                .ok()
                .and_then(|s| self.server_index.get(s).copied())
        }
    }

    fn irc_channel(&self, group: usize) -> String {
        if self.cli.channel_members > 0 {
            format!("#{}{}", self.cli.channel, group)
        } else {
            format!("#{}", self.cli.channel)
        }
    }
}

/// What a subscriber saw.
pub struct SubResult {
    pub received: Bits,
    pub deliveries: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Messages that were not one of this run's posts.
    pub foreign: u64,
    pub cut_off: bool,
}

/// What a publisher did.
pub struct PubResult {
    pub index: usize,
    pub sent: u64,
    pub acked: Bits,
}

pub struct WorkerResult {
    pub subs: Vec<SubResult>,
    pub pubs: Vec<PubResult>,
    pub latency: Histogram<u64>,
    pub ack_latency: Histogram<u64>,
    pub handshake: Histogram<u64>,
}

pub fn histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour, 3 significant digits: constant bounds, which hdrhistogram accepts.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("constant histogram bounds are valid")
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum St {
    Connecting,
    Handshake,
    Ready,
}

struct SubTrack {
    received: Bits,
    /// chimed: last delta_id per server; peers: last sequence number per publisher.
    last: Vec<i64>,
    deliveries: u64,
    duplicated: u64,
    reordered: u64,
    foreign: u64,
    cut_off: bool,
}

struct PubTrack {
    index: usize,
    server: usize,
    channel: usize,
    sent: u64,
    acked: Bits,
    errors: u64,
    /// (seq, send ns) of posts not yet acknowledged, oldest first.
    outstanding: VecDeque<(u64, u64)>,
    /// IRC: posts since the last PING.
    unpinged: u64,
    done: bool,
}

struct Conn {
    stream: TcpStream,
    slot: usize,
    spec: Spec,
    st: St,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Handshake replies still awaited.
    hs_left: usize,
    started_ns: u64,
    sub: Option<Box<SubTrack>>,
    pb: Option<Box<PubTrack>>,
}

/// Counts not yet added to [`Shared`].
#[derive(Default)]
struct Local {
    opened: u64,
    ready: u64,
    subs_ready: u64,
    failed: u64,
    disconnects: u64,
    sent: u64,
    acked: u64,
    post_errors: u64,
    rate_limited: u64,
    deliveries: u64,
    malformed: u64,
    sync_notices: u64,
    handshakes: u64,
    pubs_done: u64,
    last_delivery_ns: u64,
    last_ack_ns: u64,
}

/// Why a connection is being closed.
enum Close {
    /// The peer closed it or it failed.
    Lost(String),
    /// The server sent bytes we cannot read.
    Malformed(String),
    /// churn: done with it.
    Done,
}

struct Worker {
    ctx: Arc<Ctx>,
    tid: usize,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    pending: VecDeque<Spec>,
    /// Connections that are connecting or handshaking.
    in_flight: usize,
    max_in_flight: usize,
    pubs: Vec<usize>,
    local: Local,
    subs_done: Vec<SubResult>,
    pubs_done: Vec<PubResult>,
    latency: Histogram<u64>,
    ack_latency: Histogram<u64>,
    handshake: Histogram<u64>,
    scratch: Vec<u8>,
    out: Vec<u8>,
    /// When the read being processed returned (one clock reading per read, not per line).
    read_ns: u64,
    /// churn: connections opened by this thread so far (numbers the next one).
    churn_opened: usize,
}

pub fn run(ctx: Arc<Ctx>, tid: usize, specs: Vec<Spec>) -> WorkerResult {
    let threads = ctx.cli.threads.max(1);
    let max_in_flight = ctx.cli.concurrency.div_ceil(threads).max(1);
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            ctx.shared
                .note_error(format!("thread {tid}: cannot create a poll: {e}"));
            ctx.shared.failed.fetch_add(specs.len() as u64, Ordering::Relaxed);
            return WorkerResult {
                subs: Vec::new(),
                pubs: Vec::new(),
                latency: histogram(),
                ack_latency: histogram(),
                handshake: histogram(),
            };
        }
    };
    let mut w = Worker {
        ctx,
        tid,
        poll,
        conns: Vec::new(),
        free: Vec::new(),
        pending: specs.into(),
        in_flight: 0,
        max_in_flight,
        pubs: Vec::new(),
        local: Local::default(),
        subs_done: Vec::new(),
        pubs_done: Vec::new(),
        latency: histogram(),
        ack_latency: histogram(),
        handshake: histogram(),
        scratch: vec![0; READ_CHUNK],
        out: Vec::with_capacity(4096),
        read_ns: 0,
        churn_opened: 0,
    };
    w.main_loop();
    w.finish()
}

impl Worker {
    fn main_loop(&mut self) {
        let mut events = Events::with_capacity(4096);
        let churn = self.ctx.cli.scenario == Scenario::Churn;
        let rate_mode = self.ctx.cli.rate > 0.0;
        loop {
            let phase = self.ctx.shared.phase.load(Ordering::Acquire);
            if phase == PH_STOP {
                break;
            }
            if churn {
                if phase == PH_RUN {
                    self.churn_refill();
                }
            } else {
                self.open_pending();
            }
            if phase == PH_RUN && !self.pubs.is_empty() {
                self.pump_publishers();
            }
            self.flush_counters();
            let timeout = if phase == PH_RUN && rate_mode {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(10)
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                self.ctx
                    .shared
                    .note_error(format!("thread {}: poll failed: {e}", self.tid));
                break;
            }
            for ev in events.iter() {
                self.on_event(ev.token().0);
            }
        }
        self.flush_counters();
    }

    fn flush_counters(&mut self) {
        let s = &self.ctx.shared;
        let l = std::mem::take(&mut self.local);
        for (a, v) in [
            (&s.opened, l.opened),
            (&s.ready, l.ready),
            (&s.subs_ready, l.subs_ready),
            (&s.failed, l.failed),
            (&s.disconnects, l.disconnects),
            (&s.sent, l.sent),
            (&s.acked, l.acked),
            (&s.post_errors, l.post_errors),
            (&s.rate_limited, l.rate_limited),
            (&s.deliveries, l.deliveries),
            (&s.malformed, l.malformed),
            (&s.sync_notices, l.sync_notices),
            (&s.handshakes, l.handshakes),
            (&s.pubs_done, l.pubs_done),
        ] {
            if v > 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        }
        if l.last_delivery_ns > 0 {
            s.last_delivery_ns.fetch_max(l.last_delivery_ns, Ordering::Relaxed);
        }
        if l.last_ack_ns > 0 {
            s.last_ack_ns.fetch_max(l.last_ack_ns, Ordering::Relaxed);
        }
    }

    fn finish(mut self) -> WorkerResult {
        for i in 0..self.conns.len() {
            if let Some(c) = self.conns[i].take() {
                self.retire(c);
            }
        }
        self.flush_counters();
        WorkerResult {
            subs: self.subs_done,
            pubs: self.pubs_done,
            latency: self.latency,
            ack_latency: self.ack_latency,
            handshake: self.handshake,
        }
    }

    /// Moves a connection's tracking into the results.
    fn retire(&mut self, c: Conn) {
        // A subscriber that never got subscribed counts as a failed connection, not as one
        // that lost every post.
        if let Some(s) = c.sub.filter(|_| c.st == St::Ready) {
            self.subs_done.push(SubResult {
                received: s.received,
                deliveries: s.deliveries,
                duplicated: s.duplicated,
                reordered: s.reordered,
                foreign: s.foreign,
                cut_off: s.cut_off,
            });
        }
        if let Some(p) = c.pb {
            if !p.done {
                self.local.pubs_done += 1;
            }
            self.pubs_done.push(PubResult {
                index: p.index,
                sent: p.sent,
                acked: p.acked,
            });
        }
    }

    // ---- opening ---------------------------------------------------------------------

    fn open_pending(&mut self) {
        while self.in_flight < self.max_in_flight {
            let Some(spec) = self.pending.pop_front() else {
                return;
            };
            self.open(spec);
        }
    }

    fn churn_refill(&mut self) {
        let ctx = self.ctx.clone();
        let s = &ctx.shared;
        let cap = self.ctx.cli.handshakes;
        let deadline = s.run_deadline_ns.load(Ordering::Relaxed);
        let threads = self.ctx.cli.threads.max(1);
        let mine = self.ctx.cli.connections.div_ceil(threads);
        while self.in_flight < mine {
            if now_ns() >= deadline {
                return;
            }
            if cap > 0 && s.handshakes.load(Ordering::Relaxed) + self.local.handshakes + self.in_flight as u64 >= cap {
                return;
            }
            let conn = self.tid + self.churn_opened * threads;
            self.churn_opened += 1;
            let user = conn % self.ctx.world.tokens.len().max(1);
            self.open(Spec {
                conn,
                role: Role::Churn,
                user,
            });
        }
    }

    fn source_for(&self, conn: usize) -> Option<IpAddr> {
        if self.ctx.source_ips == 0 || !self.ctx.cli.addr.is_ipv4() {
            return None;
        }
        let n = self.ctx.cli.source_first as usize + conn % self.ctx.source_ips;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n.min(254) as u8)))
    }

    fn connect_socket(&self, conn: usize) -> std::io::Result<TcpStream> {
        let addr = self.ctx.cli.addr;
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        if let Some(src) = self.source_for(conn) {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt on a socket we own with a c_int option value. Lets the kernel
            // pick the port at connect time (per 4-tuple) rather than at bind time.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(&SocketAddr::new(src, 0).into())?;
        }
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let std_stream: std::net::TcpStream = sock.into();
        let stream = TcpStream::from_std(std_stream);
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn open(&mut self, spec: Spec) {
        let mut stream = match self.connect_socket(spec.conn) {
            Ok(s) => s,
            Err(e) => {
                self.ctx.shared.note_error(format!("connect: {e}"));
                self.local.failed += 1;
                return;
            }
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE)
        {
            self.ctx.shared.note_error(format!("register: {e}"));
            self.local.failed += 1;
            self.free.push(slot);
            return;
        }
        let ctx = &self.ctx;
        let sub = match spec.role {
            Role::Sub => Some(Box::new(SubTrack {
                received: Bits::new(ctx.post_slots()),
                last: vec![
                    -1;
                    if ctx.cli.target == Target::Chimed {
                        ctx.servers_of_sub()
                    } else {
                        ctx.publishers
                    }
                ],
                deliveries: 0,
                duplicated: 0,
                reordered: 0,
                foreign: 0,
                cut_off: false,
            })),
            _ => None,
        };
        let pb = match spec.role {
            Role::Pub { index, server, channel } => {
                self.pubs.push(slot);
                Some(Box::new(PubTrack {
                    index,
                    server,
                    channel,
                    sent: 0,
                    acked: Bits::new(ctx.messages as usize),
                    errors: 0,
                    outstanding: VecDeque::with_capacity(ctx.cli.window),
                    unpinged: 0,
                    done: false,
                }))
            }
            _ => None,
        };
        self.conns[slot] = Some(Conn {
            stream,
            slot,
            spec,
            st: St::Connecting,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            hs_left: 0,
            started_ns: now_ns(),
            sub,
            pb,
        });
        self.in_flight += 1;
        self.local.opened += 1;
    }

    // ---- events ----------------------------------------------------------------------

    fn on_event(&mut self, slot: usize) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let verdict = self.drive(&mut c);
        match verdict {
            Ok(()) => {
                if let Some(s) = self.conns.get_mut(slot) {
                    *s = Some(c);
                }
            }
            Err(why) => self.close(slot, c, why),
        }
    }

    fn drive(&mut self, c: &mut Conn) -> Result<(), Close> {
        if c.st == St::Connecting {
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Err(Close::Lost(format!("connect: {e}"))),
            }
            match c.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(Close::Lost(format!("connect: {e}"))),
            }
            c.st = St::Handshake;
            self.start_handshake(c);
        }
        self.flush(c)?;
        self.read(c)?;
        self.flush(c)
    }

    fn flush(&mut self, c: &mut Conn) -> Result<(), Close> {
        while c.wpos < c.wbuf.len() {
            match c.stream.write(&c.wbuf[c.wpos..]) {
                Ok(0) => return Err(Close::Lost("write returned 0".into())),
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Close::Lost(format!("write: {e}"))),
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
        } else if c.wpos > 1 << 20 {
            c.wbuf.drain(..c.wpos);
            c.wpos = 0;
        }
        Ok(())
    }

    fn read(&mut self, c: &mut Conn) -> Result<(), Close> {
        let mut eof = false;
        // Bounded: at most 64 chunks per event; edge-triggered readiness is re-armed below.
        for _ in 0..64 {
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    self.read_ns = now_ns();
                    self.take_input(c, n)?;
                    if n < READ_CHUNK {
                        // A short read emptied the socket's receive queue; with epoll's edge
                        // triggering, bytes arriving later raise a new event, so the extra
                        // read that would only say WouldBlock is skipped (one syscall per
                        // delivery instead of two).
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(Close::Lost(format!("read: {e}"))),
            }
        }
        if eof {
            return Err(Close::Lost("the server closed the connection".into()));
        }
        // Still readable: ask mio to report it again (readiness is edge-triggered).
        let _ = self
            .poll
            .registry()
            .reregister(&mut c.stream, Token(c.slot), Interest::READABLE | Interest::WRITABLE);
        Ok(())
    }

    /// Handles `n` bytes just read into the scratch buffer. Whole lines are read from there
    /// directly; only a partial line (or anything after one) is copied into the
    /// connection's own buffer, so most bytes are never copied.
    fn take_input(&mut self, c: &mut Conn, n: usize) -> Result<(), Close> {
        let line_protocol = matches!(self.ctx.cli.target, Target::Chimed | Target::Irc);
        if !line_protocol || !c.rbuf.is_empty() {
            c.rbuf.extend_from_slice(&self.scratch[..n]);
            return self.process(c);
        }
        let buf = std::mem::take(&mut self.scratch);
        let (used, res) = self.lines(c, &buf[..n]);
        if res.is_ok() && used < n {
            c.rbuf.extend_from_slice(&buf[used..n]);
        }
        self.scratch = buf;
        res?;
        if c.rbuf.len() > MAX_INPUT {
            return Err(Close::Malformed(format!(
                "more than {MAX_INPUT} bytes without a frame end"
            )));
        }
        Ok(())
    }

    fn process(&mut self, c: &mut Conn) -> Result<(), Close> {
        let result = match self.ctx.cli.target {
            Target::Chimed | Target::Irc => self.process_lines(c),
            Target::Redis => self.process_resp(c),
        };
        if c.rbuf.len() > MAX_INPUT {
            return Err(Close::Malformed(format!(
                "more than {MAX_INPUT} bytes without a frame end"
            )));
        }
        result
    }

    fn process_lines(&mut self, c: &mut Conn) -> Result<(), Close> {
        let buf = std::mem::take(&mut c.rbuf);
        let (start, res) = self.lines(c, &buf);
        c.rbuf = buf;
        c.rbuf.drain(..start);
        res
    }

    /// Handles every whole line of `buf`; returns the bytes consumed (up to the end of the
    /// last whole line) and the first error.
    fn lines(&mut self, c: &mut Conn, buf: &[u8]) -> (usize, Result<(), Close>) {
        let mut start = 0;
        while let Some(rel) = find_byte(b'\n', &buf[start..]) {
            let mut line = &buf[start..start + rel];
            start += rel + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                continue;
            }
            let r = match self.ctx.cli.target {
                Target::Irc => self.on_irc_line(c, line),
                _ => self.on_chimed_line(c, line),
            };
            if let Err(e) = r {
                return (start, Err(e));
            }
        }
        (start, Ok(()))
    }

    fn process_resp(&mut self, c: &mut Conn) -> Result<(), Close> {
        let buf = std::mem::take(&mut c.rbuf);
        let mut start = 0;
        let mut res = Ok(());
        loop {
            match resp::parse(&buf[start..]) {
                Ok(None) => break,
                Ok(Some((v, n))) => {
                    start += n;
                    if let Err(e) = self.on_resp(c, v) {
                        res = Err(e);
                        break;
                    }
                }
                Err(_) => {
                    res = Err(Close::Malformed("bytes that are not RESP".into()));
                    break;
                }
            }
        }
        c.rbuf = buf;
        c.rbuf.drain(..start);
        res
    }

    fn close(&mut self, slot: usize, mut c: Conn, why: Close) {
        let _ = self.poll.registry().deregister(&mut c.stream);
        match &why {
            Close::Done => {
                let _ = SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
            }
            Close::Malformed(m) => {
                self.local.malformed += 1;
                self.ctx.shared.note_error(format!("malformed server output: {m}"));
            }
            Close::Lost(m) => {
                if c.st == St::Ready {
                    self.local.disconnects += 1;
                } else {
                    self.local.failed += 1;
                }
                self.ctx.shared.note_error(m.clone());
            }
        }
        if matches!(why, Close::Malformed(_)) && c.st != St::Ready {
            self.local.failed += 1;
        }
        if c.st != St::Ready {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        if c.pb.is_some() {
            self.pubs.retain(|&s| s != slot);
        }
        self.retire(c);
        self.free.push(slot);
    }

    fn became_ready(&mut self, c: &mut Conn) -> Result<(), Close> {
        if c.st == St::Ready {
            return Ok(());
        }
        c.st = St::Ready;
        self.in_flight = self.in_flight.saturating_sub(1);
        let took = now_ns().saturating_sub(c.started_ns);
        self.handshake.saturating_record(took.max(1));
        if let Role::Churn = c.spec.role {
            self.local.handshakes += 1;
            return Err(Close::Done);
        }
        self.local.ready += 1;
        if c.sub.is_some() {
            self.local.subs_ready += 1;
        }
        Ok(())
    }

    // ---- handshakes ------------------------------------------------------------------

    fn start_handshake(&mut self, c: &mut Conn) {
        let ctx = self.ctx.clone();
        match ctx.cli.target {
            Target::Chimed => {
                let token = ctx.world.tokens.get(c.spec.user).map(String::as_str).unwrap_or("");
                let mut out = Vec::with_capacity(256);
                push_json(
                    &mut out,
                    &serde_json::json!({"action": "AUTH", "id": 1, "data": {"token": token}}),
                );
                c.hs_left = 1;
                let subscribe: Vec<(usize, Option<i64>)> = match c.spec.role {
                    Role::Sub => (0..ctx.servers_of_sub()).map(|s| (s, None)).collect(),
                    Role::Idle { .. } => vec![(0, None)],
                    Role::Churn => vec![(0, Some(ctx.world.heads.first().copied().unwrap_or(0)))],
                    Role::Pub { .. } => Vec::new(),
                };
                for (k, (s, cursor)) in subscribe.into_iter().enumerate() {
                    let sid = ctx.world.server_ids.get(s).map(String::as_str).unwrap_or("");
                    let data = match cursor {
                        Some(cur) => serde_json::json!({"server_id": sid, "client_delta_id": cur}),
                        None => serde_json::json!({"server_id": sid}),
                    };
                    push_json(
                        &mut out,
                        &serde_json::json!({"action": "SUBSCRIBE", "id": 2 + k.min(900), "data": data}),
                    );
                    c.hs_left += 1;
                }
                c.wbuf.extend_from_slice(&out);
            }
            Target::Irc => {
                let nick = format!("{}{}", ctx.run_tag, base36(c.spec.conn as u64, 5));
                c.wbuf
                    .extend_from_slice(format!("NICK {nick}\r\nUSER {nick} 0 * :flood\r\n").as_bytes());
                c.hs_left = 1; // 001, then 366 after the JOIN
            }
            Target::Redis => {
                match c.spec.role {
                    Role::Pub { .. } => resp::command(&mut c.wbuf, &[b"PING"]),
                    Role::Idle { group } if ctx.cli.channel_members > 0 => {
                        let ch = format!("{}{}", ctx.cli.channel, group);
                        resp::command(&mut c.wbuf, &[b"SUBSCRIBE", ch.as_bytes()])
                    }
                    _ => resp::command(&mut c.wbuf, &[b"SUBSCRIBE", ctx.cli.channel.as_bytes()]),
                }
                c.hs_left = 1;
            }
        }
    }

    // ---- chimed ----------------------------------------------------------------------

    fn on_chimed_line(&mut self, c: &mut Conn, line: &[u8]) -> Result<(), Close> {
        // Most lines are deltas in chimed's fixed key order: read those without serde.
        if let Some(d) = fast_delta(line) {
            self.on_chimed_delta(c, &d);
            return Ok(());
        }
        let frame: InFrame = match serde_json::from_slice(line) {
            Ok(f) => f,
            Err(e) => {
                return Err(Close::Malformed(format!(
                    "{e}: {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                )))
            }
        };
        let data = frame.data.unwrap_or_default();
        if let Some(id) = frame.id {
            let ok = data.status.as_deref() == Some("success");
            if id < POST_ID_BASE {
                if c.st != St::Handshake {
                    return Ok(()); // a late answer we no longer wait for
                }
                if !ok {
                    return Err(Close::Lost(format!(
                        "{} failed: {} {}",
                        frame.action,
                        data.code.as_deref().unwrap_or("?"),
                        data.message.as_deref().unwrap_or("")
                    )));
                }
                c.hs_left = c.hs_left.saturating_sub(1);
                if c.hs_left == 0 {
                    return self.became_ready(c);
                }
                return Ok(());
            }
            let seq = id - POST_ID_BASE;
            let err = if ok {
                None
            } else {
                Some(data.code.as_deref().unwrap_or("?").to_string())
            };
            self.on_ack(c, Some(seq), err);
            return Ok(());
        }
        match frame.action.as_ref() {
            "PUBLISH_DELTA" => {
                let Some(d) = data.delta else {
                    return Err(Close::Malformed("PUBLISH_DELTA without a delta".into()));
                };
                self.on_chimed_delta(c, &d.view());
            }
            "SYNC" => {
                self.local.sync_notices += 1;
                if let Some(s) = c.sub.as_mut() {
                    s.cut_off = true;
                }
            }
            "ERROR" => {
                self.local.post_errors += 1;
                self.ctx.shared.note_error(format!(
                    "ERROR frame: {} {}",
                    data.code.as_deref().unwrap_or("?"),
                    data.message.as_deref().unwrap_or("")
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn on_chimed_delta(&mut self, c: &mut Conn, d: &DeltaView) {
        let Some(sub) = c.sub.as_mut() else {
            return;
        };
        let server = self.ctx.server_of(d.server_id);
        let Some(server) = server.filter(|&s| s < sub.last.len()) else {
            sub.foreign += 1;
            return;
        };
        let prev = sub.last[server];
        sub.last[server] = prev.max(d.delta_id);
        if d.kind != b"message" {
            if d.delta_id <= prev {
                sub.reordered += 1;
            }
            return;
        }
        let body = d.content.unwrap_or(b"");
        let Some((sent, publisher, seq)) = parse_body(body) else {
            sub.foreign += 1;
            return;
        };
        let now = self.read_ns;
        if (publisher as usize) >= self.ctx.publishers || seq >= self.ctx.messages {
            sub.foreign += 1;
            return;
        }
        let bit = self.ctx.bit(publisher, seq);
        sub.deliveries += 1;
        self.local.deliveries += 1;
        self.local.last_delivery_ns = now;
        match sub.received.set(bit) {
            Some(true) => sub.duplicated += 1,
            _ => {
                if d.delta_id <= prev {
                    sub.reordered += 1;
                }
            }
        }
        self.latency.saturating_record(now.saturating_sub(sent).max(1));
    }

    /// A delivery with a per-publisher sequence order (peers).
    fn on_peer_delivery(&mut self, c: &mut Conn, body: &[u8]) {
        let Some(sub) = c.sub.as_mut() else {
            return;
        };
        let Some((sent, publisher, seq)) = parse_body(body) else {
            sub.foreign += 1;
            return;
        };
        let now = self.read_ns;
        if (publisher as usize) >= self.ctx.publishers || seq >= self.ctx.messages {
            sub.foreign += 1;
            return;
        }
        let bit = self.ctx.bit(publisher, seq);
        sub.deliveries += 1;
        self.local.deliveries += 1;
        self.local.last_delivery_ns = now;
        let last = &mut sub.last[publisher as usize];
        let prev = *last;
        *last = prev.max(seq as i64);
        match sub.received.set(bit) {
            Some(true) => sub.duplicated += 1,
            _ => {
                if (seq as i64) <= prev {
                    sub.reordered += 1;
                }
            }
        }
        self.latency.saturating_record(now.saturating_sub(sent).max(1));
    }

    /// An answer to a post: `seq` (chimed), or the oldest outstanding (Redis: replies in order).
    fn on_ack(&mut self, c: &mut Conn, seq: Option<u64>, err: Option<String>) {
        let Some(p) = c.pb.as_mut() else {
            self.local.malformed += 1;
            return;
        };
        let pos = match seq {
            Some(s) => p.outstanding.iter().position(|&(q, _)| q == s),
            None => (!p.outstanding.is_empty()).then_some(0),
        };
        let Some(pos) = pos else {
            self.local.malformed += 1; // an answer to nothing we sent
            return;
        };
        let Some((seq, sent)) = p.outstanding.remove(pos) else {
            return;
        };
        let now = now_ns();
        match err {
            None => {
                p.acked.set(seq as usize);
                self.local.acked += 1;
                self.local.last_ack_ns = now;
                self.ack_latency.saturating_record(now.saturating_sub(sent).max(1));
            }
            Some(code) => {
                p.errors += 1;
                self.local.post_errors += 1;
                if code == "rate_limited" {
                    self.local.rate_limited += 1;
                }
                self.ctx.shared.note_error(format!("post failed: {code}"));
            }
        }
    }

    // ---- IRC -------------------------------------------------------------------------

    fn on_irc_line(&mut self, c: &mut Conn, line: &[u8]) -> Result<(), Close> {
        let msg = IrcMsg::parse(line);
        match msg.command {
            b"PING" => {
                let arg = msg.last_param().unwrap_or(b"");
                c.wbuf.extend_from_slice(b"PONG :");
                c.wbuf.extend_from_slice(arg);
                c.wbuf.extend_from_slice(b"\r\n");
            }
            b"001" if c.st == St::Handshake => {
                let chan = match c.spec.role {
                    Role::Idle { group } => self.ctx.irc_channel(group),
                    _ => format!("#{}", self.ctx.cli.channel),
                };
                c.wbuf.extend_from_slice(format!("JOIN {chan}\r\n").as_bytes());
            }
            b"366" if c.st == St::Handshake => return self.became_ready(c),
            b"PRIVMSG" => {
                let body = msg.trailing.unwrap_or(b"");
                self.on_peer_delivery(c, body);
            }
            b"PONG" => {
                let k = msg
                    .last_param()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.parse::<u64>().ok());
                if let (Some(k), Some(_)) = (k, c.pb.as_ref()) {
                    while c
                        .pb
                        .as_ref()
                        .and_then(|p| p.outstanding.front())
                        .is_some_and(|&(q, _)| q < k)
                    {
                        self.on_ack(c, None, None);
                    }
                }
            }
            b"432" | b"433" | b"436" | b"437" | b"403" | b"405" | b"471" | b"473" | b"474" | b"475"
                if c.st != St::Ready =>
            {
                return Err(Close::Lost(format!(
                    "IRC handshake refused: {}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                )));
            }
            b"404" | b"442" => {
                self.local.post_errors += 1;
                self.ctx.shared.note_error(format!(
                    "IRC post refused: {}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                ));
            }
            b"ERROR" => {
                return Err(Close::Lost(format!(
                    "IRC ERROR: {}",
                    String::from_utf8_lossy(&line[..line.len().min(200)])
                )));
            }
            _ => {}
        }
        Ok(())
    }

    // ---- Redis -----------------------------------------------------------------------

    fn on_resp(&mut self, c: &mut Conn, v: Resp<'_>) -> Result<(), Close> {
        match v {
            Resp::Array(items) => {
                let kind = match items.first() {
                    Some(Resp::Bulk(Some(k))) => *k,
                    _ => return Err(Close::Malformed("a RESP array that is not a pub/sub push".into())),
                };
                match kind {
                    b"message" => {
                        if let Some(Resp::Bulk(Some(body))) = items.get(2) {
                            self.on_peer_delivery(c, body);
                        } else {
                            return Err(Close::Malformed("a message push without a payload".into()));
                        }
                    }
                    b"subscribe" if c.st == St::Handshake => return self.became_ready(c),
                    _ => {}
                }
            }
            Resp::Simple(s) => {
                if c.st == St::Handshake && s == b"PONG" {
                    return self.became_ready(c);
                }
            }
            Resp::Int(_) => self.on_ack(c, None, None),
            Resp::Error(e) => {
                if c.st == St::Handshake {
                    return Err(Close::Lost(format!("redis: {}", String::from_utf8_lossy(e))));
                }
                self.on_ack(c, None, Some(String::from_utf8_lossy(e).into_owned()));
            }
            Resp::Bulk(_) => {}
        }
        Ok(())
    }

    // ---- posting ---------------------------------------------------------------------

    fn pump_publishers(&mut self) {
        let s = &self.ctx.shared;
        let start = s.run_start_ns.load(Ordering::Relaxed);
        let deadline = s.run_deadline_ns.load(Ordering::Relaxed);
        let now = now_ns();
        let past_deadline = now >= deadline;
        let per_pub_rate = if self.ctx.cli.rate > 0.0 {
            self.ctx.cli.rate / self.ctx.publishers.max(1) as f64
        } else {
            0.0
        };
        let slots = self.pubs.clone();
        for slot in slots {
            let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            if c.st == St::Ready {
                let allowed = if per_pub_rate > 0.0 {
                    ((now.saturating_sub(start) as f64 / 1e9) * per_pub_rate) as u64 + 1
                } else {
                    u64::MAX
                };
                let due = (per_pub_rate > 0.0).then_some((start, per_pub_rate));
                self.post_some(&mut c, allowed, past_deadline, due);
            }
            let r = self.flush(&mut c);
            match r {
                Ok(()) => {
                    if let Some(s) = self.conns.get_mut(slot) {
                        *s = Some(c);
                    }
                }
                Err(why) => self.close(slot, c, why),
            }
        }
    }

    /// Queues the posts a publisher may send now. `due`: (start ns, posts/s of this publisher)
    /// when paced; a post then carries the time it was due (see [`due_ns`]).
    fn post_some(&mut self, c: &mut Conn, allowed: u64, past_deadline: bool, due: Option<(u64, f64)>) {
        let ctx = self.ctx.clone();
        let window = ctx.cli.window;
        let Some(p) = c.pb.as_mut() else {
            return;
        };
        while !past_deadline && p.sent < ctx.messages && p.sent < allowed && p.outstanding.len() < window {
            let seq = p.sent;
            let sent_ns = match due {
                Some((start, rate)) => due_ns(start, rate, seq).min(now_ns()),
                None => now_ns(),
            };
            self.out.clear();
            write_body(&mut self.out, sent_ns, p.index as u64, seq, ctx.cli.size);
            let body = std::str::from_utf8(&self.out).unwrap_or("");
            match ctx.cli.target {
                Target::Chimed => {
                    let channel = ctx
                        .world
                        .channels
                        .get(p.server)
                        .and_then(|cs| cs.get(p.channel))
                        .map(String::as_str)
                        .unwrap_or("");
                    push_json(
                        &mut c.wbuf,
                        &serde_json::json!({"action": "POST_MESSAGE", "id": POST_ID_BASE + seq,
                            "data": {"channel_id": channel, "content": body}}),
                    );
                }
                Target::Irc => {
                    c.wbuf
                        .extend_from_slice(format!("PRIVMSG #{} :{body}\r\n", ctx.cli.channel).as_bytes());
                    p.unpinged += 1;
                }
                Target::Redis => {
                    resp::command(&mut c.wbuf, &[b"PUBLISH", ctx.cli.channel.as_bytes(), &self.out]);
                }
            }
            p.outstanding.push_back((seq, sent_ns));
            p.sent += 1;
            self.local.sent += 1;
            if ctx.cli.target == Target::Irc && (p.unpinged as usize >= window.div_ceil(2) || p.sent == ctx.messages) {
                c.wbuf.extend_from_slice(format!("PING :{}\r\n", p.sent).as_bytes());
                p.unpinged = 0;
            }
        }
        if ctx.cli.target == Target::Irc && past_deadline && p.unpinged > 0 {
            c.wbuf.extend_from_slice(format!("PING :{}\r\n", p.sent).as_bytes());
            p.unpinged = 0;
        }
        if !p.done && p.outstanding.is_empty() && (p.sent >= ctx.messages || past_deadline) {
            p.done = true;
            self.local.pubs_done += 1;
        }
    }
}

/// When post `seq` of a publisher paced at `rate` posts/s from `start` is due. Latency is
/// measured from here, so a post held back by a full window (a stalled server) counts its
/// wait: no coordinated omission.
pub fn due_ns(start: u64, rate: f64, seq: u64) -> u64 {
    start.saturating_add((seq as f64 / rate * 1e9) as u64)
}

fn push_json(out: &mut Vec<u8>, v: &serde_json::Value) {
    if serde_json::to_writer(&mut *out, v).is_ok() {
        out.push(b'\n');
    }
}

pub fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut v = vec![b'0'; width];
    for i in (0..width).rev() {
        v[i] = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(v).unwrap_or_default()
}

// ---- chimed frames, as far as the tool reads them ------------------------------------------

#[derive(Deserialize)]
struct InFrame<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default, borrow)]
    data: Option<InData<'a>>,
}

#[derive(Deserialize, Default)]
struct InData<'a> {
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    delta: Option<InDelta<'a>>,
}

#[derive(Deserialize)]
struct InDelta<'a> {
    #[serde(borrow)]
    server_id: Cow<'a, str>,
    delta_id: i64,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
}

/// What the tool needs of a delta, as raw bytes (a string without escapes is its bytes).
#[derive(Debug, PartialEq, Eq)]
struct DeltaView<'a> {
    server_id: &'a [u8],
    delta_id: i64,
    kind: &'a [u8],
    content: Option<&'a [u8]>,
}

impl InDelta<'_> {
    fn view(&self) -> DeltaView<'_> {
        DeltaView {
            server_id: self.server_id.as_bytes(),
            delta_id: self.delta_id,
            kind: self.kind.as_bytes(),
            content: self.content.as_deref().map(str::as_bytes),
        }
    }
}

/// A `PUBLISH_DELTA` line exactly as chimed writes it (`server_id`, `delta_id`, `type` first,
/// `content` without escapes); anything else is `None` and goes through serde. This runs once
/// per delivery, millions of times a second, so it scans a word at a time and never
/// validates UTF-8 (the fields it returns are compared or parsed as ASCII).
fn fast_delta(line: &[u8]) -> Option<DeltaView<'_>> {
    const PREFIX: &[u8] = br#"{"action":"PUBLISH_DELTA","data":{"delta":{"server_id":""#;
    const CONTENT: &[u8] = br#","content":""#;
    if !line.ends_with(b"}}}") {
        return None;
    }
    // Up to the closing quote of a string that has no escape in it.
    let plain = |b: &[u8]| -> Option<usize> {
        let q = find_byte(b'"', b)?;
        (find_byte(b'\\', &b[..q]).is_none()).then_some(q)
    };
    let rest = line.strip_prefix(PREFIX)?;
    let q = plain(rest)?;
    let server_id = &rest[..q];
    let rest = rest[q..].strip_prefix(br#"","delta_id":"#)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    if end == 0 || end > 18 {
        return None;
    }
    let delta_id = rest[..end].iter().fold(0i64, |v, &d| v * 10 + i64::from(d - b'0'));
    let rest = rest[end..].strip_prefix(br#","type":""#)?;
    let q = plain(rest)?;
    let kind = &rest[..q];
    let rest = &rest[q..];
    let content = match find(CONTENT, rest) {
        Some(i) => {
            let r = &rest[i + CONTENT.len()..];
            Some(&r[..plain(r)?])
        }
        None => None,
    };
    Some(DeltaView {
        server_id,
        delta_id,
        kind,
        content,
    })
}

/// The first `needle` in `hay`, a word (8 bytes) at a time: the tool's `memchr`.
fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let pattern = LO.wrapping_mul(u64::from(needle));
    let mut i = 0;
    while i + 8 <= hay.len() {
        let mut w = [0u8; 8];
        w.copy_from_slice(&hay[i..i + 8]);
        let x = u64::from_le_bytes(w) ^ pattern;
        // A zero byte in x is a match (the classic has-zero-byte test; exact for the lowest).
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    hay[i..].iter().position(|&b| b == needle).map(|p| i + p)
}

/// The first `needle` (not empty) in `hay`.
fn find(needle: &[u8], hay: &[u8]) -> Option<usize> {
    let (&first, tail) = needle.split_first()?;
    let mut from = 0;
    while let Some(p) = find_byte(first, &hay[from..]) {
        let at = from + p;
        if hay.get(at + 1..at + needle.len())? == tail {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

// ---- IRC lines -----------------------------------------------------------------------------

struct IrcMsg<'a> {
    command: &'a [u8],
    params: Vec<&'a [u8]>,
    trailing: Option<&'a [u8]>,
}

impl<'a> IrcMsg<'a> {
    fn parse(mut line: &'a [u8]) -> IrcMsg<'a> {
        if line.first() == Some(&b':') {
            line = match line.iter().position(|&b| b == b' ') {
                Some(i) => &line[i + 1..],
                None => &[],
            };
        }
        let (head, trailing) = match line.windows(2).position(|w| w == b" :") {
            Some(i) => (&line[..i], Some(&line[i + 2..])),
            None => (line, None),
        };
        let mut words = head.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let command = words.next().unwrap_or(b"");
        IrcMsg {
            command,
            params: words.collect(),
            trailing,
        }
    }

    fn last_param(&self) -> Option<&'a [u8]> {
        self.trailing.or_else(|| self.params.last().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn irc_lines() {
        let m = IrcMsg::parse(b":ann!a@h PRIVMSG #flood :hello there");
        assert_eq!(m.command, b"PRIVMSG");
        assert_eq!(m.params, vec![&b"#flood"[..]]);
        assert_eq!(m.trailing, Some(&b"hello there"[..]));
        let p = IrcMsg::parse(b"PING :irc.example");
        assert_eq!(p.command, b"PING");
        assert_eq!(p.last_param(), Some(&b"irc.example"[..]));
        let q = IrcMsg::parse(b":srv PONG srv 42");
        assert_eq!(q.last_param(), Some(&b"42"[..]));
        let e = IrcMsg::parse(b":");
        assert_eq!(e.command, b"");
    }

    #[test]
    fn chimed_frames_parse() {
        let l = br#"{"action":"PUBLISH_DELTA","data":{"delta":{"server_id":"5","delta_id":9,"type":"message","content":"a\"b","timestamp":"x"}}}"#;
        let f: InFrame = serde_json::from_slice(l).unwrap();
        let d = f.data.unwrap().delta.unwrap();
        assert_eq!(d.delta_id, 9);
        assert_eq!(d.content.as_deref(), Some("a\"b"));
        assert!(serde_json::from_slice::<InFrame>(b"[1]").is_err());
    }

    #[test]
    fn fast_path_agrees_with_serde() {
        let line = br#"{"action":"PUBLISH_DELTA","data":{"delta":{"server_id":"5","delta_id":9,"type":"message","channel_id":"6","message_id":"7","user_id":"8","content":"hello","timestamp":"1970-01-01T00:00:00.000Z"}}}"#;
        let d = fast_delta(line).unwrap();
        let f: InFrame = serde_json::from_slice(line).unwrap();
        let s = f.data.unwrap().delta.unwrap();
        assert_eq!(d, s.view());
        assert_eq!(d.content, Some(&b"hello"[..]));
        let joined = br#"{"action":"PUBLISH_DELTA","data":{"delta":{"server_id":"5","delta_id":10,"type":"member_joined","user_id":"8","timestamp":"x"}}}"#;
        assert_eq!(fast_delta(joined).unwrap().content, None);
        // Escapes, other key orders and truncated lines go through serde.
        assert!(fast_delta(br#"{"action":"PUBLISH_DELTA","data":{"delta":{"server_id":"5","delta_id":9,"type":"message","content":"a\"b"}}}"#).is_none());
        assert!(fast_delta(br#"{"action":"PUBLISH_DELTA","data":{"delta":{"delta_id":9,"server_id":"5"}}}"#).is_none());
        assert!(fast_delta(&line[..line.len() - 1]).is_none());
    }

    #[test]
    fn paced_posts_carry_their_due_time() {
        // 1,000 posts/s: post 0 is due at the start, post 250 a quarter second later.
        assert_eq!(due_ns(5, 1000.0, 0), 5);
        assert_eq!(due_ns(5, 1000.0, 250), 5 + 250_000_000);
        // The pump only sends a post once it is due: allowed = floor(elapsed * rate) + 1.
        let start = 1_000_000u64;
        let now = start + 7_300_000; // 7.3 ms in at 1,000/s: posts 0..=7 may go
        let allowed = ((now - start) as f64 / 1e9 * 1000.0) as u64 + 1;
        assert_eq!(allowed, 8);
        assert!(due_ns(start, 1000.0, allowed - 1) <= now);
        assert!(due_ns(start, 1000.0, allowed) > now);
    }

    #[test]
    fn byte_search_agrees_with_a_naive_scan() {
        // Every position of the needle, in haystacks of every length up to a few words, with
        // bytes that differ from the needle only in the high bit or by one (the has-zero-byte
        // trick's false-positive cases).
        for len in 0..40 {
            for at in 0..=len {
                let mut hay: Vec<u8> = (0..len).map(|i| [b'"' ^ 0x80, b'"' + 1, b'a', 0][i % 4]).collect();
                if at < len {
                    hay[at] = b'"';
                    if at + 3 < len {
                        hay[at + 3] = b'"';
                    }
                }
                let naive = hay.iter().position(|&b| b == b'"');
                assert_eq!(find_byte(b'"', &hay), naive, "len {len} at {at}");
            }
        }
        assert_eq!(find(b"ab", b"xaxabab"), Some(3));
        assert_eq!(find(b"ab", b"xaxa"), None);
        assert_eq!(find(b"abc", b"ab"), None);
        assert_eq!(find(b"", b"ab"), None);
    }

    #[test]
    fn nicks() {
        assert_eq!(base36(0, 5), "00000");
        assert_eq!(base36(35, 2), "0z");
    }
}
