//! The poll loop: one thread, every client socket.
//!
//! Each turn, after Redis' `ae.c`: poll (timeout = the next deadline) -> handle socket
//! events (accept, read and dispatch frames) -> continue reads that stopped early ->
//! drain worker completions (bounded) -> flush output (bounded per connection) -> reap
//! closed connections -> timers. Handlers compute; this module does all the I/O.
//!
//! Backpressure: a connection's input is not read while it has too many replies waiting
//! on storage or too much output queued, so each connection's memory stays bounded by
//! the configured limits no matter what the client sends.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::chat::budget::Budget;
use crate::chat::delta::Ends;
use crate::chat::fanout::{Feeds, Fetch};
use crate::chat::handlers::{self, Outcome};
use crate::chat::ops::{obj, sid, Effect, Op, Settings};
use crate::chat::voice::Rooms;
use crate::config::{Args, Config};
use crate::conn::{Conn, Flushed, Framing, Phase};
use crate::limits::{self, Admission, ConnLimits, LoginPolicy, LoginThrottle, RatePolicy, Refusal, Verdict};
use crate::protocol::{self, Action, ApiError, ErrorCode};
use crate::token::{ConnId, LISTENER, SIGNALS, WAKER};
use crate::wire::line::FrameError;
use crate::workers::{Done, Job, Origin, Pool};

pub mod http;
pub(crate) mod metrics;
pub mod websocket;

/// Bytes read from one connection per turn before others get their go.
const READ_BUDGET: usize = 256 * 1024;
/// Bytes written to one connection per turn (Redis' NET_MAX_WRITES_PER_EVENT).
const WRITE_BUDGET: usize = 256 * 1024;
/// Worker completions handled per turn; the rest wait for the next turn.
const COMPLETIONS_PER_TURN: usize = 8192;
/// Listen backlog asked for (the kernel caps it at net.core.somaxconn). mio's own bind asks
/// for 128, like std: a burst of connects past that while the loop is busy overflows the
/// accept queue, and each dropped SYN costs its client a 1 s retransmit.
const LISTEN_BACKLOG: i32 = 4096;
/// How long a closing connection may take to read our last frame.
const LINGER: Duration = Duration::from_secs(2);
/// How long to stop accepting after EMFILE, so a full fd table does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the timers walk the connection table.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How long a connection sends nothing before the sweep frees its empty queues.
const RELEASE_IDLE_AFTER: Duration = Duration::from_secs(1);
/// Connections refused (accepted only for their error frame) per accept event before
/// accepting pauses for [`ACCEPT_BACKOFF`] (or until a slot frees): a connect storm
/// against a full server costs bounded work per turn.
const REFUSE_BURST: usize = 256;
/// How long a shutdown waits for in-flight work before closing anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Counters for logs and /metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: u64,
    /// Refused at accept: the global limit.
    pub refused_global: u64,
    /// Refused at accept: the per-address limit.
    pub refused_per_ip: u64,
    /// accept() failing for lack of file descriptors (accepting paused).
    pub accept_emfile: u64,
    pub frames_in: u64,
    /// Requests answered `rate_limited` by the per-connection budgets.
    pub rate_limited: u64,
    /// LOGIN/AUTH attempts refused by the failed-login throttle.
    pub login_throttled: u64,
    /// Connections closed for flooding (`Verdict::Disconnect`).
    pub flood_disconnects: u64,
    pub idle_timeouts: u64,
    /// Connections closed for sending nothing, or not completing a frame or HTTP head
    /// (slowloris), within `handshake_timeout_s`.
    pub handshake_timeouts: u64,
    /// HTTP connections closed for a request body that stalled (less than
    /// `limits::BODY_MIN_PROGRESS` bytes within `handshake_timeout_s`).
    pub body_timeouts: u64,
}

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    signals: Signals,
    conns: Slab<Conn>,
    generation: u64,
    pool: Pool,
    cfg: Config,
    max_conns: usize,
    scratch: Vec<u8>,
    /// Connections with output to flush this turn.
    dirty: Vec<usize>,
    /// Connections to close at the end of this turn.
    reap: Vec<usize>,
    /// Connections whose socket may hold input we have not read yet.
    pending_reads: Vec<usize>,
    accept_paused_until: Option<Instant>,
    /// Accepting paused until a connection closes (global limit, or EMFILE).
    accept_blocked: bool,
    /// The listener reported readiness this turn: accept after the reap phase, so a
    /// connection whose close arrived in the same batch has freed its admission slot.
    accept_ready: bool,
    admission: Admission,
    rate_policy: RatePolicy,
    throttle: LoginThrottle,
    /// Where SIGHUP re-reads the limits from (the flags and `--config` given at start).
    reload_args: Option<Args>,
    next_sweep: Instant,
    /// The time this loop turn started: what per-request bookkeeping (activity, request
    /// budgets, job deadlines) reads instead of the clock, a few `clock_gettime`s fewer
    /// per request.
    now: Instant,
    stopping: Option<Instant>,
    feeds: Feeds,
    rooms: Rooms,
    /// Per-user budget for reading history back (RESTORE_HISTORY).
    history: Budget,
    /// Connections that got output from fan-out this turn (marked dirty in one pass).
    touched: Vec<usize>,
    fetches: Vec<Fetch>,
    pub counters: Counters,
    metrics: metrics::Metrics,
    /// HTTP backups waiting for their history budget to refill: (key, generation).
    backup_waits: Vec<(usize, u64)>,
}

/// Why the server could not start.
#[derive(Debug)]
pub enum StartError {
    Bind(String, io::Error),
    Io(io::Error),
    Storage(crate::store::StoreError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(a, e) => write!(f, "cannot listen on {a}: {e}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Storage(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> StartError {
        StartError::Io(e)
    }
}

fn is_emfile(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

impl Server {
    /// Binds the listener, opens storage connections and starts the workers.
    pub fn bind(cfg: Config, max_conns: usize) -> Result<Server, StartError> {
        let addr: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|e| StartError::Bind(cfg.listen.clone(), io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let poll = Poll::new()?;
        let mut listener = bind_listener(addr).map_err(|e| StartError::Bind(cfg.listen.clone(), e))?;
        let local_addr = listener.local_addr()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let settings = Settings {
            storage_timeout: cfg.storage_timeout(),
            token_ttl_ms: (cfg.token_ttl_s as i64).saturating_mul(1000),
            partition_size: cfg.partition_size as i64,
            max_batch: cfg.max_batch,
            files_dir: cfg.files_dir.clone(),
        };
        let pool = Pool::start(
            &cfg.db,
            cfg.workers,
            cfg.job_queue,
            settings,
            cfg.file_gc(),
            waker,
            Duration::from_millis(cfg.test_storage_delay_ms),
        )
        .map_err(StartError::Storage)?;
        let delta_tail = cfg.delta_tail;
        let history = Budget::new(cfg.history_rate, cfg.history_burst);
        let admission = Admission::from_config(&cfg, max_conns);
        let rate_policy = RatePolicy::from_config(&cfg);
        let throttle = LoginThrottle::new(LoginPolicy::from_config(&cfg));
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            signals,
            conns: Slab::with_capacity(1024),
            generation: 0,
            pool,
            cfg,
            max_conns,
            scratch: vec![0; 64 * 1024],
            dirty: Vec::new(),
            reap: Vec::new(),
            pending_reads: Vec::new(),
            accept_paused_until: None,
            accept_blocked: false,
            accept_ready: false,
            admission,
            rate_policy,
            throttle,
            reload_args: None,
            next_sweep: Instant::now(),
            now: Instant::now(),
            stopping: None,
            feeds: Feeds::new(delta_tail),
            rooms: Rooms::default(),
            history,
            touched: Vec::new(),
            fetches: Vec::new(),
            counters: Counters::default(),
            metrics: metrics::Metrics::default(),
            backup_waits: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Lets SIGHUP reload the limits: `args` (with its `--config`) is read again then.
    pub fn reload_from(&mut self, args: Args) {
        self.reload_args = Some(args);
    }

    /// Runs until SIGTERM/SIGINT, then drains and returns.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        info!(
            "chimed ready, listening on {} (storage {}, max {} connections)",
            self.local_addr,
            redact(&self.cfg.db),
            self.max_conns
        );
        loop {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    // Accepted after the reap below, not here: see `accept_ready`.
                    LISTENER => self.accept_ready = true,
                    WAKER => {} // completions are drained below, every turn
                    SIGNALS => self.on_signal(),
                    Token(key) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(key);
                        }
                        if ev.is_writable() || ev.is_write_closed() {
                            self.mark_dirty(key);
                        }
                    }
                }
            }
            self.continue_reads();
            self.drain_completions();
            self.flush();
            self.fetch_pages();
            self.reap_closed();
            if std::mem::take(&mut self.accept_ready) {
                self.accept();
            }
            self.timers();
            if self.finished_stopping() {
                break;
            }
        }
        self.shutdown();
        Ok(())
    }

    fn next_timeout(&self) -> Option<Duration> {
        if !self.pending_reads.is_empty() || !self.dirty.is_empty() || !self.pool.done_rx.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut t = Duration::from_secs(1);
        if let Some(until) = self.accept_paused_until {
            t = t.min(until.saturating_duration_since(Instant::now()));
        }
        if self.stopping.is_some() {
            t = t.min(Duration::from_millis(10));
        }
        Some(t)
    }

    // ---- accept -------------------------------------------------------------------

    /// Accepts what the listener has. Called after the turn's reap phase (and when a
    /// pause ends), never while events are still being handled: a peer that closes and
    /// at once reconnects delivers its EOF and the new connection in one batch, and the
    /// closed connection's admission slot is released only by `reap_closed`. Accepting
    /// first refused such a reconnect at the per-address (or global) limit although the
    /// server had already seen the close. Accepting pauses (the listener's readiness is left
    /// pending; mio is edge-triggered, so nothing spins) after [`REFUSE_BURST`] refusals
    /// in one go or on EMFILE: until [`ACCEPT_BACKOFF`] passes or a connection closes,
    /// whichever is first (`reap_closed` and `timers` call this again).
    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        let mut refused = 0;
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => {
                    if !self.admit(stream, addr) {
                        refused += 1;
                        if refused >= REFUSE_BURST {
                            self.pause_accepting();
                            return;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_emfile(&e) => {
                    self.counters.accept_emfile += 1;
                    warn!(
                        "accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?} or until a connection closes ({} open)",
                        self.conns.len()
                    );
                    self.pause_accepting();
                    return;
                }
                Err(e) => debug!("accept: {e}"),
            }
        }
    }

    fn pause_accepting(&mut self) {
        self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
        self.accept_blocked = true;
    }

    /// A connection closed: if accepting was paused, go on now.
    fn resume_accepting(&mut self) {
        if self.accept_blocked && self.stopping.is_none() {
            self.accept_blocked = false;
            self.accept_paused_until = None;
            self.accept();
        }
    }

    /// Admission control, then registration. Returns false if the connection was refused
    /// (it got one `unavailable` error frame and was closed).
    fn admit(&mut self, mut stream: TcpStream, addr: SocketAddr) -> bool {
        if let Err(refusal) = self.admission.try_admit(addr.ip()) {
            match refusal {
                Refusal::Global => self.counters.refused_global += 1,
                Refusal::PerIp => self.counters.refused_per_ip += 1,
            }
            debug!("refused {addr}: {}", refusal.message());
            let frame = protocol::encode_error(None, None, &ApiError::unavailable(refusal.message()));
            // Best effort: a fresh socket's send buffer takes one short frame.
            let _ = io::Write::write(&mut stream, &frame);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            return false;
        }
        let _ = stream.set_nodelay(true);
        self.generation += 1;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            warn!("register {addr}: {e}");
            self.admission.release(addr.ip());
            return true;
        }
        let mut conn = Conn::new(stream, self.generation, addr.ip(), Instant::now());
        conn.limits = ConnLimits::new(&self.rate_policy);
        entry.insert(conn);
        self.counters.accepted += 1;
        true
    }

    // ---- read and dispatch ---------------------------------------------------------

    /// Reads what the socket has (up to the turn's budget) and dispatches whole frames.
    fn read(&mut self, key: usize) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            match conn.phase {
                Phase::Closing | Phase::Dead => return,
                Phase::Draining(_) => return self.discard_input(key),
                Phase::Open => {}
            }
            if conn.must_wait(self.cfg.max_inflight_per_conn)
                || conn.out.len() >= self.cfg.max_output_bytes
                || self.stopping.is_some()
            {
                conn.read_pending = true; // resumed when replies or output drain
                return;
            }
            if budget == 0 {
                self.defer_read(key);
                return;
            }
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    // Half-close: answer everything it sent, then close.
                    conn.read_eof = true;
                    conn.read_pending = false;
                    self.process_input(key);
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    conn.take_input(&self.scratch[..n]);
                    self.process_input(key);
                    self.note_partial(key);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.read_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("read: {e}");
                    self.close_now(key);
                    return;
                }
            }
        }
    }

    /// Starts (or stops) the slowloris clock: an incomplete frame or HTTP head buffered.
    fn note_partial(&mut self, key: usize) {
        let max_inflight = self.cfg.max_inflight_per_conn;
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.partial_input(max_inflight) {
                conn.partial_since.get_or_insert_with(Instant::now);
            } else {
                conn.partial_since = None;
            }
        }
    }

    /// Starts or pauses an HTTP request body's slowloris clock after its request moved on
    /// (`sweep_timeouts` does it too, and cuts the stalled ones).
    fn note_body(&mut self, key: usize) {
        let held = self.stopping.is_some();
        if let Some(conn) = self.conns.get_mut(key) {
            conn.body_stalled(Instant::now(), held, &self.cfg);
        }
    }

    fn defer_read(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.read_pending = true;
            self.pending_reads.push(key);
        }
    }

    /// Processes buffered input in the connection's framing; the first bytes choose it.
    fn process_input(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.framing, Framing::Sniffing) {
            match crate::wire::http::sniff(conn.reader.peek()) {
                Some(true) => {
                    let first = conn.reader.take_all();
                    conn.framing = Framing::Http(Box::new(http::HttpConn::new(first)));
                }
                Some(false) => conn.framing = Framing::Line,
                None if conn.read_eof => conn.framing = Framing::Line,
                None => return,
            }
        }
        match conn.framing {
            Framing::Sniffing => {}
            Framing::Line => self.dispatch_lines(key),
            Framing::Http(_) => {
                // A complete request head counts as a frame (idle and handshake timeouts).
                let before = self.metrics.http_requests;
                self.http_input(key);
                if self.metrics.http_requests != before {
                    self.frame_seen(key);
                }
            }
            Framing::WebSocket(_) => self.ws_input(key),
        }
    }

    /// Dispatches buffered lines until none is complete or the connection must wait.
    fn dispatch_lines(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut reader = std::mem::take(&mut conn.reader);
        let max = self.cfg.max_frame_bytes;
        loop {
            let Some(conn) = self.conns.get(key) else {
                return;
            };
            if conn.phase != Phase::Open || conn.must_wait(self.cfg.max_inflight_per_conn) {
                break;
            }
            match reader.next_frame(max) {
                Ok(Some(frame)) => self.dispatch(key, frame),
                Ok(None) => break,
                Err(FrameError::TooLarge) => {
                    let err = ApiError::new(ErrorCode::TooLarge, format!("frame exceeds {max} bytes"));
                    self.reply_now(key, protocol::encode_error(None, None, &err));
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.phase = Phase::Closing;
                    }
                    reader = Default::default();
                    break;
                }
            }
        }
        reader.compact();
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.reader = reader;
        // After EOF, once every frame has been dispatched: close when the answers are out.
        if conn.read_eof && conn.phase == Phase::Open && !conn.must_wait(self.cfg.max_inflight_per_conn) {
            conn.phase = Phase::Closing;
            self.mark_dirty(key);
        }
    }

    /// One frame (a line or a WebSocket text message): decode it and run its action under
    /// the connection's session.
    fn dispatch(&mut self, key: usize, frame: &[u8]) {
        self.counters.frames_in += 1;
        self.frame_seen(key);
        let req = match protocol::decode(frame) {
            Ok(r) => r,
            Err(e) => return self.refuse_frame(key, e.action.as_deref(), e.id.as_ref(), e.error),
        };
        let Some(action) = Action::from_name(&req.action) else {
            let err = ApiError::new(ErrorCode::UnknownAction, format!("unknown action {}", req.action));
            return self.refuse_frame(key, Some(&req.action), req.id.as_ref(), err);
        };
        self.run_action(key, action, req.id, req.data, None);
    }

    /// Answers a frame that names no action we run (unreadable, or unknown). It costs a
    /// read of the request budget like any request, so a stream of garbage is rate
    /// limited and its sender cut off as a flooder, not answered without end.
    fn refuse_frame(&mut self, key: usize, action: Option<&str>, id: Option<&serde_json::Value>, err: ApiError) {
        let err = match self.charge_request(key, limits::Class::Read) {
            Some(ms) => ApiError::rate_limited(ms),
            None => err,
        };
        self.reply_now(key, protocol::encode_error(action, id, &err));
    }

    /// A complete frame arrived: the connection is not idle, and past its handshake.
    fn frame_seen(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.last_active = self.now;
            conn.greeted = true;
        }
    }

    /// The per-connection request budget and, for LOGIN and AUTH, the failed-login
    /// throttle. `Some(error frame)` if the request must not run; a flooder is also set
    /// to close once that frame is written.
    fn check_limits(
        &mut self,
        key: usize,
        action: Action,
        id: Option<&serde_json::Value>,
        data: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<Vec<u8>> {
        let limited = match action {
            Action::Login => {
                let account = data.get("username").and_then(|v| v.as_str()).map(str::to_owned);
                self.check_login(key, account)
            }
            Action::Auth => self.check_login(key, None),
            _ => self.charge_request(key, limits::class(action)),
        };
        let ms = limited?;
        Some(protocol::encode_error(
            Some(action.name()),
            id,
            &ApiError::rate_limited(ms),
        ))
    }

    /// A credential check about to be queued (LOGIN, AUTH, an HTTP Bearer token): charges
    /// the login budget, then asks the failed-login throttle (after the charge, so a
    /// throttled client still spends its budget and a flood of them is cut off).
    /// `Some(retry_after_ms)` if it must not run, and then no storage job is queued.
    pub(super) fn check_login(&mut self, key: usize, account: Option<String>) -> Option<u64> {
        if let Some(ms) = self.charge_request(key, limits::Class::Login) {
            return Some(ms);
        }
        let conn = self.conns.get_mut(key)?;
        if let Err(ms) = self.throttle.check(conn.ip, account.as_deref(), self.now) {
            self.counters.login_throttled += 1;
            return Some(ms);
        }
        conn.login_attempt = account;
        None
    }

    /// Charges one request of `class` to the connection's request budget (an action, or an
    /// HTTP file request). `Some(retry_after_ms)` if it must not run: answer `rate_limited`;
    /// a flooder is also set to close once that answer is written.
    pub(super) fn charge_request(&mut self, key: usize, class: limits::Class) -> Option<u64> {
        let conn = self.conns.get_mut(key)?;
        let retry_after_ms = match conn.limits.check(class, self.now) {
            Verdict::Allow => return None,
            Verdict::Reject { retry_after_ms } => retry_after_ms,
            Verdict::Disconnect => {
                self.counters.flood_disconnects += 1;
                info!(
                    "closing {} for flooding ({} requests rejected)",
                    conn.ip,
                    conn.limits.rejected()
                );
                conn.phase = Phase::Closing;
                limits::RETRY_NEVER_MS.min(self.rate_policy.flood_window.as_millis() as u64)
            }
        };
        self.counters.rate_limited += 1;
        Some(retry_after_ms)
    }

    /// A LOGIN or AUTH came back: tell the failed-login throttle. Only a credential
    /// failure (`unauthenticated`) counts, not storage trouble or a malformed request.
    fn record_login(&mut self, key: usize, effect: &Effect, frame: &[u8]) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else { return };
        let account = conn.login_attempt.take();
        match effect {
            Effect::Session(s) => {
                self.throttle.record_success(conn.ip, &s.username, now);
                // An HTTP request checks its Bearer token every time (sessions do not
                // stick): a good one gives its login unit back, so only failed checks
                // wear the login budget down and the API mirror keeps its read/write rates.
                if matches!(&conn.framing, Framing::Http(h) if h.checking_bearer()) {
                    conn.limits.refund(limits::Class::Login, now);
                }
            }
            Effect::Failed if contains(frame, b"\"unauthenticated\"") => {
                self.throttle.record_failure(conn.ip, account.as_deref(), now)
            }
            _ => {}
        }
    }

    /// Checks the action table, runs the handler and applies its outcome: an answer now, or
    /// a job whose answer comes back through `complete`. `session` overrides the
    /// connection's own (an HTTP request's Bearer token).
    fn run_action(
        &mut self,
        key: usize,
        action: Action,
        id: Option<serde_json::Value>,
        data: serde_json::Map<String, serde_json::Value>,
        session: Option<&crate::chat::accounts::Session>,
    ) {
        if let Some(frame) = self.check_limits(key, action, id.as_ref(), &data) {
            return self.reply_now(key, frame);
        }
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let session = session.or(conn.session.as_ref());
        if !action.open() && session.is_none() {
            let err = ApiError::unauthenticated("this action needs a session: REGISTER, LOGIN or AUTH first");
            return self.reply_now(key, protocol::encode_error(Some(action.name()), id.as_ref(), &err));
        }
        match handlers::handle(action, data, session, &self.cfg) {
            Outcome::Reply(data) => self.reply_now(key, protocol::encode_success(action.name(), id.as_ref(), &data)),
            Outcome::Fail(err) => self.reply_now(key, protocol::encode_error(Some(action.name()), id.as_ref(), &err)),
            Outcome::Unsubscribe(server_id) => {
                self.feeds.end(&mut self.conns, key, server_id);
                let data = obj([("server_id", sid(server_id))]);
                self.reply_now(key, protocol::encode_success(action.name(), id.as_ref(), &data));
            }
            Outcome::Job(op) => {
                if let Op::Restore { user, limit, .. } = &op {
                    if let Err(ms) = self.charge_history(*user, *limit) {
                        let err = ApiError::rate_limited(ms);
                        return self.reply_now(key, protocol::encode_error(Some(action.name()), id.as_ref(), &err));
                    }
                }
                self.submit_request(key, action, id, op);
            }
        }
    }

    /// Queues a job whose answer is the reply to a request: reserves the reply's place,
    /// and answers `unavailable` at once if the queue is full.
    fn submit_request(&mut self, key: usize, action: Action, id: Option<serde_json::Value>, op: Op) {
        let feed = match &op {
            Op::Subscribe { server_id, .. } => Some(*server_id),
            _ => None,
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        let seq = conn.replies.reserve();
        conn.barrier = matches!(action, Action::Register | Action::Login | Action::Auth | Action::Logout)
            && !matches!(conn.framing, Framing::Http(_));
        let origin = Origin {
            conn: ConnId {
                key,
                generation: conn.generation,
            },
            seq: Some(seq),
            action,
            id,
            feed,
            submitted: self.now,
        };
        let id = origin.id.clone();
        let job = Job {
            origin,
            op,
            deadline: self.now + self.cfg.storage_timeout(),
        };
        if let Some(server_id) = feed {
            self.feeds.begin_subscribe(server_id);
        }
        if let Err(err) = self.pool.submit(job) {
            conn.barrier = false;
            let frame = protocol::encode_error(Some(action.name()), id.as_ref(), &err);
            let frame = conn.wrap_reply(frame);
            conn.replies.complete(seq, frame, &mut conn.out);
            if let Some(server_id) = feed {
                self.feeds.abort_subscribe(server_id);
            }
            self.mark_dirty(key);
        }
    }

    fn reply_now(&mut self, key: usize, frame: Vec<u8>) {
        if let Some(conn) = self.conns.get_mut(key) {
            let frame = conn.wrap_reply(frame);
            conn.replies.ready_now(frame, &mut conn.out);
            self.mark_dirty(key);
        }
    }

    fn discard_input(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => return self.close_now(key),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close_now(key),
            }
        }
    }

    /// Reads that stopped early (budget, or backpressure that has since cleared).
    fn continue_reads(&mut self) {
        let keys = std::mem::take(&mut self.pending_reads);
        for key in keys {
            if self.conns.get(key).is_some_and(|c| c.read_pending) {
                self.read(key);
            }
        }
    }

    /// A connection's backpressure may have cleared: dispatch buffered frames, then read.
    fn maybe_resume(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if conn.phase != Phase::Open
            || conn.must_wait(self.cfg.max_inflight_per_conn)
            || conn.out.len() >= self.cfg.max_output_bytes
        {
            return;
        }
        if conn.has_input() || conn.read_eof {
            self.process_input(key);
        }
        if self.conns.get(key).is_some_and(|c| c.read_pending) && !self.pending_reads.contains(&key) {
            self.pending_reads.push(key);
        }
    }

    // ---- completions ---------------------------------------------------------------

    fn drain_completions(&mut self) {
        // Reset before draining: a completion sent after this point wakes us again.
        self.pool.wake_pending.store(false, Ordering::Release);
        for _ in 0..COMPLETIONS_PER_TURN {
            let Ok(done) = self.pool.done_rx.try_recv() else {
                break;
            };
            self.complete(done);
        }
    }

    fn complete(&mut self, done: Done) {
        let Done {
            origin,
            mut frame,
            effect,
            published,
        } = done;
        let key = origin.conn.key;
        let live = self
            .conns
            .get(key)
            .is_some_and(|c| c.generation == origin.conn.generation);
        if !published.is_empty() {
            self.metrics.publish_latency.observe(origin.submitted.elapsed());
            self.metrics.deltas_published += published.len() as u64;
        }
        let mut effect = effect;
        if live && origin.seq.is_some() && matches!(origin.action, Action::Login | Action::Auth) {
            self.record_login(key, &effect, &frame);
        }
        if live && origin.seq.is_some() {
            // Before the effect runs: an HTTP request decides here whether this answer is
            // its response or a step towards it.
            if let Some(c) = self.conns.get_mut(key) {
                frame = c.wrap_reply(frame);
            }
        }
        if live
            && self
                .conns
                .get(key)
                .is_some_and(|c| matches!(c.framing, Framing::Http(_)))
        {
            effect = self.http_effect(key, effect);
        }
        let mut first_page = None;
        match effect {
            Effect::None | Effect::Failed => {
                if let Some(server_id) = origin.feed {
                    if origin.seq.is_some() {
                        self.feeds.abort_subscribe(server_id); // a SUBSCRIBE that failed
                    } else if live {
                        self.feeds
                            .catch_up_failed(&mut self.conns, key, server_id, &mut self.touched);
                    }
                }
            }
            Effect::Session(s) if live => {
                // A different user on this connection: what the old one had access to ends.
                let switched = self
                    .conns
                    .get(key)
                    .and_then(|c| c.session.as_ref())
                    .is_some_and(|old| old.user_id != s.user_id);
                if switched {
                    self.feeds.end_all(&mut self.conns, key);
                    self.leave_voice(key);
                }
                if let Some(c) = self.conns.get_mut(key) {
                    c.session = Some(s);
                }
            }
            Effect::Session(_) => {}
            Effect::Logout { token_hash } => {
                let keys: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.session.as_ref().is_some_and(|s| s.token_hash == token_hash))
                    .map(|(k, _)| k)
                    .collect();
                for k in keys {
                    self.feeds.end_all(&mut self.conns, k);
                    self.leave_voice(k);
                    if let Some(c) = self.conns.get_mut(k) {
                        c.session = None;
                    }
                }
            }
            Effect::Subscribed(page) => {
                let user = self
                    .conns
                    .get(key)
                    .filter(|_| live)
                    .and_then(|c| c.session.as_ref())
                    .map(|s| s.user_id);
                match user {
                    Some(user) => {
                        let server_id = page.server_id;
                        let (head, page) = self.feeds.subscribed(&mut self.conns, key, user, page);
                        first_page = page; // sent after the answer
                        let data = obj([("server_id", sid(server_id)), ("server_delta_id", head.into())]);
                        let answer = protocol::encode_success(origin.action.name(), origin.id.as_ref(), &data);
                        if let Some(c) = self.conns.get_mut(key) {
                            frame = c.wrap_reply(answer);
                        }
                    }
                    None => self.feeds.abort_subscribe(page.server_id),
                }
            }
            Effect::CatchUp(page) if live => self.feeds.caught_up(&mut self.conns, key, page, &mut self.touched),
            Effect::CatchUpFailed { server_id } if live => {
                self.feeds
                    .catch_up_failed(&mut self.conns, key, server_id, &mut self.touched)
            }
            Effect::CatchUp(_) | Effect::CatchUpFailed { .. } => {}
            Effect::Typing {
                server_id,
                channel_id,
                user_id,
            } => {
                let data = serde_json::json!({"channel_id": channel_id.to_string(), "user_id": user_id.to_string()});
                let frame: Arc<[u8]> = protocol::encode_push("TYPING", &data).into();
                self.push_to_server(server_id, &frame);
            }
            Effect::Voice {
                server_id,
                channel_id,
                user_id,
                join,
            } => {
                if live {
                    self.voice(key, server_id, channel_id, user_id, join);
                }
            }
            Effect::Signal { to_user, frame: push } => {
                let keys: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.session.as_ref().is_some_and(|s| s.user_id == to_user))
                    .map(|(k, _)| k)
                    .collect();
                for k in keys {
                    if let Some(c) = self.conns.get_mut(k) {
                        c.push_shared(push.clone());
                        self.mark_dirty(k);
                    }
                }
            }
            // Only HTTP connections ask for these (`http_effect` took them); for a connection
            // that is gone, dropping an upload removes its temp file.
            Effect::Upload(upload) => self.submit_internal(Op::UploadAbort { upload }),
            Effect::Download(_) | Effect::FileChunk { .. } | Effect::Backup { .. } | Effect::BackupPage { .. } => {}
        }
        if live {
            if let (Some(seq), Some(conn)) = (origin.seq, self.conns.get_mut(key)) {
                if matches!(
                    origin.action,
                    Action::Register | Action::Login | Action::Auth | Action::Logout
                ) {
                    conn.barrier = false;
                }
                conn.replies.complete(seq, frame, &mut conn.out);
                self.mark_dirty(key);
            }
            if let Some(page) = first_page {
                self.feeds.deliver(&mut self.conns, key, page, &mut self.touched);
            }
        }
        let now = Instant::now();
        for p in &published {
            let filling = self
                .feeds
                .publish(&mut self.conns, p, self.cfg.max_output_bytes, now, &mut self.touched);
            if filling {
                // Write before the next delta piles on: only a reader that cannot take
                // the bytes should hit its limit.
                self.mark_touched();
                self.flush();
            }
            // A member who left (or a deleted server) also leaves its voice rooms; the
            // VOICE_STATE follows the delta that caused it.
            let gone = match p.ends {
                Ends::Nobody => Vec::new(),
                Ends::User(u) => self.rooms.connections_in(p.server_id, Some(u)),
                Ends::Everyone => self.rooms.connections_in(p.server_id, None),
            };
            for k in gone {
                self.leave_voice(k);
            }
        }
        self.mark_touched();
        if live {
            self.maybe_resume(key);
        }
    }

    fn push_to_server(&mut self, server_id: i64, frame: &Arc<[u8]>) {
        for k in self.feeds.live_subscribers(&self.conns, server_id) {
            if let Some(c) = self.conns.get_mut(k) {
                c.push_shared(frame.clone());
                self.mark_dirty(k);
            }
        }
    }

    fn voice(&mut self, key: usize, server_id: i64, channel_id: i64, user_id: i64, join: bool) {
        let current = self.conns.get(key).and_then(|c| c.voice);
        if join {
            if current.is_some_and(|c| c != channel_id) {
                self.leave_voice(key);
            }
            if let Some(c) = self.conns.get_mut(key) {
                c.voice = Some(channel_id);
            }
            if let Some(ch) = self.rooms.join(server_id, channel_id, user_id, key) {
                self.push_to_server(ch.server_id, &Arc::from(ch.frame));
            }
        } else if current == Some(channel_id) {
            self.leave_voice(key);
        }
    }

    fn leave_voice(&mut self, key: usize) {
        let Some(channel_id) = self.conns.get_mut(key).and_then(|c| c.voice.take()) else {
            return;
        };
        if let Some(ch) = self.rooms.leave(channel_id, key) {
            self.push_to_server(ch.server_id, &Arc::from(ch.frame));
        }
    }

    fn mark_touched(&mut self) {
        let mut touched = std::mem::take(&mut self.touched);
        for k in touched.drain(..) {
            self.mark_dirty(k);
        }
        self.touched = touched; // keep the allocation for the next delta
    }

    /// Queues the catch-up reads that `after_flush` asked for.
    fn fetch_pages(&mut self) {
        for f in std::mem::take(&mut self.fetches) {
            let Some(conn) = self.conns.get(f.key) else { continue };
            let origin = Origin {
                conn: ConnId {
                    key: f.key,
                    generation: conn.generation,
                },
                seq: None,
                action: Action::Subscribe,
                id: None,
                feed: Some(f.server_id),
                submitted: Instant::now(),
            };
            let op = Op::CatchUp {
                server_id: f.server_id,
                after: f.after,
                page: self.cfg.catchup_page,
            };
            let job = Job {
                origin,
                op,
                deadline: Instant::now() + self.cfg.storage_timeout(),
            };
            if self.pool.submit(job).is_err() {
                self.feeds
                    .catch_up_failed(&mut self.conns, f.key, f.server_id, &mut self.touched);
            }
        }
        self.mark_touched();
    }

    // ---- write ---------------------------------------------------------------------

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Writes each dirty connection's output, up to the per-turn budget.
    fn flush(&mut self) {
        let keys = std::mem::take(&mut self.dirty);
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            let before = conn.out.len();
            let result = conn.out.flush(&mut conn.stream, WRITE_BUDGET);
            if conn.out.len() < before || conn.out.is_empty() {
                conn.stalled_since = None;
            } else if conn.stalled_since.is_none() {
                conn.stalled_since = Some(Instant::now());
            }
            if result.is_ok() && matches!(&conn.framing, Framing::Http(h) if h.streaming()) {
                self.http_pump(key); // room for the next piece of a download or backup
            }
            let Some(conn) = self.conns.get_mut(key) else { continue };
            let mut notified = false;
            if result.is_ok() && (!conn.subs.is_empty() || conn.lagged_since.is_some()) {
                notified =
                    self.feeds
                        .after_flush(&mut self.conns, key, self.cfg.max_output_bytes / 4, &mut self.fetches);
            }
            if notified {
                self.mark_dirty(key); // a SYNC notice to write, next turn
            }
            let Some(conn) = self.conns.get_mut(key) else { continue };
            match result {
                Ok(Flushed::Empty) => {
                    if conn.want_write {
                        conn.want_write = false;
                        let _ = self
                            .poll
                            .registry()
                            .reregister(&mut conn.stream, Token(key), Interest::READABLE);
                    }
                    if conn.phase == Phase::Closing && conn.replies.waiting() == 0 {
                        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                        conn.phase = Phase::Draining(Instant::now() + LINGER);
                        self.discard_input(key);
                        continue;
                    }
                    self.maybe_resume(key);
                }
                Ok(Flushed::Blocked) => {
                    if !conn.want_write {
                        conn.want_write = true;
                        let _ = self.poll.registry().reregister(
                            &mut conn.stream,
                            Token(key),
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                }
                Ok(Flushed::Budget) => {
                    conn.dirty = true;
                    self.dirty.push(key);
                }
                Err(e) => {
                    debug!("write: {e}");
                    self.close_now(key);
                }
            }
        }
    }

    // ---- close ---------------------------------------------------------------------

    /// Schedules the connection for the reap phase (idempotent).
    fn close_now(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.phase != Phase::Dead {
                conn.phase = Phase::Dead;
                self.reap.push(key);
            }
        }
    }

    fn reap_closed(&mut self) {
        for key in std::mem::take(&mut self.reap) {
            self.feeds.end_all(&mut self.conns, key);
            self.leave_voice(key);
            if let Some(mut conn) = self.conns.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut conn.stream);
                self.admission.release(conn.ip);
                self.http_reap(&mut conn);
            }
        }
        self.resume_accepting();
    }

    // ---- timers, signals, shutdown -------------------------------------------------

    fn timers(&mut self) {
        let now = Instant::now();
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
            self.accept();
        }
        // The sweeps below walk every connection: at most a few times a second.
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        self.history.sweep(now);
        self.http_resume_backups(now);
        self.throttle.sweep(now);
        // Lingering closes whose peer never sent EOF, and slow consumers that never drained.
        let slow = Duration::from_millis(self.cfg.slow_consumer_timeout_ms);
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                matches!(c.phase, Phase::Draining(t) if t <= now)
                    || c.lagged_since.is_some_and(|t| now.duration_since(t) >= slow)
                    || c.stalled_since.is_some_and(|t| now.duration_since(t) >= slow)
            })
            .map(|(k, _)| k)
            .collect();
        for key in expired {
            self.close_now(key);
        }
        self.sweep_timeouts(now);
    }

    /// Idle, handshake (slowloris) and request-body timeouts. See docs/ARCHITECTURE.md,
    /// "Timeouts".
    fn sweep_timeouts(&mut self, now: Instant) {
        #[derive(Clone, Copy)]
        enum Kind {
            Handshake,
            Body,
            Idle,
        }
        let handshake = self.cfg.handshake_timeout();
        let idle = self.cfg.idle_timeout();
        let held = self.stopping.is_some();
        let mut timed_out = Vec::new();
        for (key, c) in self.conns.iter_mut() {
            if c.phase != Phase::Open {
                continue;
            }
            let silent = !c.greeted && now.saturating_duration_since(c.opened) >= handshake;
            let slow_head = c
                .partial_since
                .is_some_and(|t| now.saturating_duration_since(t) >= handshake);
            if silent || slow_head {
                timed_out.push((key, Kind::Handshake));
                continue;
            }
            if c.body_stalled(now, held, &self.cfg) {
                timed_out.push((key, Kind::Body));
                continue;
            }
            // Idle: no frame for the timeout, nothing waiting on us (a reply on storage,
            // output still going out: the slow-consumer limit handles that one).
            // An HTTP request in progress (a body arriving: timed above; a download or backup
            // streaming) is not idle either.
            let busy = c.replies.waiting() > 0
                || !c.out.is_empty()
                || matches!(&c.framing, Framing::Http(h) if h.mid_request());
            if idle.is_some_and(|d| c.greeted && !busy && now.saturating_duration_since(c.last_active) >= d) {
                timed_out.push((key, Kind::Idle));
                continue;
            }
            // A connection quiet for a while gives back its queues' allocations (~220 B
            // after a handshake); a busy one keeps them to avoid reallocating per reply.
            if !busy && now.saturating_duration_since(c.last_active) >= RELEASE_IDLE_AFTER {
                c.out.release_if_empty();
                c.replies.release_if_empty();
            }
        }
        for (key, kind) in timed_out {
            match kind {
                Kind::Handshake => self.counters.handshake_timeouts += 1,
                Kind::Body => self.counters.body_timeouts += 1,
                Kind::Idle => self.counters.idle_timeouts += 1,
            }
            // An upload's temp file goes with the connection (`http_reap`).
            self.close_now(key);
        }
    }

    fn on_signal(&mut self) {
        let pending: Vec<i32> = self.signals.pending().collect();
        for sig in pending {
            if sig == SIGHUP {
                self.reload_limits();
                continue;
            }
            info!("signal {sig}: stopping (no new connections; finishing queued work)");
            if self.stopping.is_none() {
                if let Err(e) = crate::daemon::stopping() {
                    warn!("sd_notify: {e}");
                }
            }
            if let Some(mut l) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
            self.stopping.get_or_insert(Instant::now() + SHUTDOWN_GRACE);
        }
    }

    /// SIGHUP: re-reads the config file and flags given at start and applies the limits
    /// (connection limits, request rates, timeouts) to new connections and requests.
    /// Connections already open keep their request budgets; the failed-login throttle keeps
    /// its state and policy. Everything else (listen address, storage, workers) needs a
    /// restart. A file that does not load changes nothing.
    fn reload_limits(&mut self) {
        let _ = crate::daemon::reloading();
        let Some(args) = &self.reload_args else {
            info!("SIGHUP: nothing to reload (no configuration source)");
            let _ = crate::daemon::ready();
            return;
        };
        match Config::load(args) {
            Ok(new) => {
                let max_total = if new.max_connections > 0 {
                    new.max_connections
                } else {
                    self.admission.max_total()
                };
                let per_ip = Admission::from_config(&new, max_total).per_ip();
                self.admission.set_limits(max_total, per_ip);
                self.max_conns = max_total;
                self.rate_policy = RatePolicy::from_config(&new);
                let c = &mut self.cfg;
                c.rate_limits = new.rate_limits;
                c.max_connections = new.max_connections;
                c.max_connections_per_ip = new.max_connections_per_ip;
                c.read_rate = new.read_rate;
                c.read_burst = new.read_burst;
                c.write_rate = new.write_rate;
                c.write_burst = new.write_burst;
                c.login_rate = new.login_rate;
                c.login_burst = new.login_burst;
                c.flood_disconnect_after = new.flood_disconnect_after;
                c.flood_window_s = new.flood_window_s;
                c.idle_timeout_s = new.idle_timeout_s;
                c.handshake_timeout_s = new.handshake_timeout_s;
                info!(
                    "SIGHUP: limits reloaded (max {} connections, per address {:?}, rate limits {})",
                    max_total,
                    per_ip,
                    if new.rate_limits { "on" } else { "off" }
                );
            }
            Err(e) => warn!("SIGHUP: {e}; keeping the limits in force"),
        }
        let _ = crate::daemon::ready();
        self.resume_accepting();
    }

    fn finished_stopping(&mut self) -> bool {
        let Some(deadline) = self.stopping else {
            return false;
        };
        let idle = self.pool.in_flight() == 0
            && self.pool.done_rx.is_empty()
            && self.conns.iter().all(|(_, c)| c.out.is_empty());
        idle || Instant::now() >= deadline
    }

    fn shutdown(&mut self) {
        self.pool.shutdown();
        // Answers that arrived while the pool drained.
        while let Ok(done) = self.pool.done_rx.try_recv() {
            self.complete(done);
        }
        self.flush();
        let n = self.conns.len();
        self.conns.clear();
        info!("stopped; closed {n} connections");
    }

    /// Snapshot used by tests and metrics.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

/// A non-blocking listener with SO_REUSEADDR (as mio's bind) and a [`LISTEN_BACKLOG`] backlog.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(LISTEN_BACKLOG)?;
    sock.set_nonblocking(true)?;
    Ok(TcpListener::from_std(sock.into()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("mysql://root:pw@127.0.0.1:3306/db"),
            "mysql://***@127.0.0.1:3306/db"
        );
        assert_eq!(redact("sqlite://chimed.db"), "sqlite://chimed.db");
    }
}
