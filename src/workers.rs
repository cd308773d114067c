//! The worker pool: every storage call and password hash runs here, never on the loop.
//!
//! Two queues over `crossbeam-channel`, both bounded: the read queue, served by
//! `workers - 1` reader threads (queries and Argon2), and the write queue, served by one
//! writer thread that commits whatever has queued up in one transaction (group commit),
//! so commits — and the delta ids they assign — happen in one order. Results go back on
//! one channel and wake the loop through its `mio::Waker`; wakes are coalesced with a
//! flag so a burst of completions costs one wake-up.
//!
//! A full queue is refused at once (`unavailable`); a job that waited past its deadline
//! is answered `unavailable` without being run, so a stalled database turns into errors
//! in bounded time rather than a growing backlog.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender, TrySendError};
use log::{error, warn};
use serde_json::Value;

use crate::chat::delta::Published;
use crate::chat::ops::{self, Effect, Op, Settings, Step, WriterState};
use crate::protocol::{encode_error, encode_success, Action, ApiError};
use crate::store::{self, Db};
use crate::token::ConnId;

/// Where a job's answer goes.
#[derive(Debug, Clone)]
pub struct Origin {
    pub conn: ConnId,
    /// The reply slot on the connection; `None` for the loop's own jobs (catch-up pages).
    pub seq: Option<u64>,
    pub action: Action,
    pub id: Option<Value>,
    /// The server whose feed this job holds open (SUBSCRIBE and catch-up reads).
    pub feed: Option<i64>,
}

pub struct Job {
    pub origin: Origin,
    pub op: Op,
    pub deadline: Instant,
}

/// A finished job, as the loop receives it.
pub struct Done {
    pub origin: Origin,
    /// The encoded response frame (empty for the loop's own jobs).
    pub frame: Vec<u8>,
    /// What the loop must change in its own state; `Effect::None` on error.
    pub effect: Effect,
    /// Deltas committed by this job, in id order, to publish.
    pub published: Vec<Published>,
}

/// Counters shared with the loop (for /metrics and draining at shutdown).
#[derive(Default)]
pub struct PoolStats {
    pub queued: AtomicUsize,
    pub storage_errors: AtomicUsize,
    pub batches: AtomicUsize,
    pub committed_jobs: AtomicUsize,
}

pub struct Pool {
    read_tx: Option<Sender<Job>>,
    write_tx: Option<Sender<Job>>,
    pub done_rx: Receiver<Done>,
    pub wake_pending: Arc<AtomicBool>,
    pub stats: Arc<PoolStats>,
    handles: Vec<JoinHandle<()>>,
}

/// What a worker needs to build its connection and answer jobs.
struct Shared {
    done_tx: Sender<Done>,
    waker: Arc<mio::Waker>,
    wake_pending: Arc<AtomicBool>,
    stats: Arc<PoolStats>,
    settings: Settings,
    test_delay: Duration,
}

impl Shared {
    fn send(&self, done: Done) {
        self.stats.queued.fetch_sub(1, Ordering::AcqRel);
        if self.done_tx.send(done).is_err() {
            return; // the loop is gone; nothing to tell
        }
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                error!("cannot wake the poll loop: {e}");
            }
        }
    }

    fn answer(
        &self,
        origin: Origin,
        result: Result<(serde_json::Map<String, Value>, Effect), ApiError>,
        published: Vec<Published>,
    ) {
        let (frame, effect) = match (&origin.seq, result) {
            (None, Ok((_, effect))) => (Vec::new(), effect),
            (None, Err(_)) => (Vec::new(), Effect::Failed),
            (Some(_), Ok((data, effect))) => (encode_success(origin.action.name(), origin.id.as_ref(), &data), effect),
            (Some(_), Err(e)) => {
                if e.code == crate::protocol::ErrorCode::Unavailable || e.code == crate::protocol::ErrorCode::Internal {
                    self.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
                }
                (
                    encode_error(Some(origin.action.name()), origin.id.as_ref(), &e),
                    Effect::Failed,
                )
            }
        };
        self.send(Done {
            origin,
            frame,
            effect,
            published,
        });
    }
}

fn expired(deadline: Instant) -> Option<ApiError> {
    (Instant::now() > deadline).then(|| ApiError::unavailable("storage did not answer in time; nothing was written"))
}

fn store_error(e: store::StoreError) -> ApiError {
    match e {
        store::StoreError::Unavailable(m) => {
            warn!("storage unavailable: {m}");
            ApiError::unavailable("storage unavailable; nothing was written")
        }
        store::StoreError::Conflict(m) => ApiError::conflict(m),
        store::StoreError::Internal(m) => {
            error!("storage error: {m}");
            ApiError::internal("storage error")
        }
    }
}

impl Pool {
    /// Starts `workers - 1` readers and one writer, each with its own connection to `url`.
    pub fn start(
        url: &str,
        workers: usize,
        queue: usize,
        settings: Settings,
        waker: Arc<mio::Waker>,
        test_delay: Duration,
    ) -> Result<Pool, store::StoreError> {
        let (read_tx, read_rx) = bounded::<Job>(queue);
        let (write_tx, write_rx) = bounded::<Job>(queue);
        let (done_tx, done_rx) = unbounded();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(PoolStats::default());
        let shared = Arc::new(Shared {
            done_tx,
            waker,
            wake_pending: wake_pending.clone(),
            stats: stats.clone(),
            settings,
            test_delay,
        });
        let mut handles = Vec::new();
        for i in 0..workers.saturating_sub(1).max(1) {
            let db = store::open(url, settings.storage_timeout)?;
            let (rx, wtx, sh) = (read_rx.clone(), write_tx.clone(), shared.clone());
            let h = std::thread::Builder::new()
                .name(format!("chimed-read-{i}"))
                .spawn(move || reader(db, rx, wtx, sh))
                .map_err(|e| store::StoreError::Internal(e.to_string()))?;
            handles.push(h);
        }
        let db = store::open(url, settings.storage_timeout)?;
        let sh = shared.clone();
        let max_batch = settings.max_batch;
        let h = std::thread::Builder::new()
            .name("chimed-writer".into())
            .spawn(move || writer(db, write_rx, sh, max_batch))
            .map_err(|e| store::StoreError::Internal(e.to_string()))?;
        handles.push(h);
        Ok(Pool {
            read_tx: Some(read_tx),
            write_tx: Some(write_tx),
            done_rx,
            wake_pending,
            stats,
            handles,
        })
    }

    /// Queues a job without waiting; a full queue gives it back as `unavailable`.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        let tx = if job.op.is_write() {
            &self.write_tx
        } else {
            &self.read_tx
        };
        let Some(tx) = tx else {
            return Err(ApiError::unavailable("shutting down"));
        };
        self.stats.queued.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::AcqRel);
                Err(ApiError::unavailable("storage queue is full; nothing was written"))
            }
        }
    }

    /// Jobs queued or running.
    pub fn in_flight(&self) -> usize {
        self.stats.queued.load(Ordering::Acquire)
    }

    /// Stops taking jobs, lets the workers finish (the writer commits what is queued), and
    /// joins them.
    pub fn shutdown(&mut self) {
        self.read_tx = None;
        self.write_tx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn reader(mut db: Box<dyn Db>, rx: Receiver<Job>, write_tx: Sender<Job>, sh: Arc<Shared>) {
    while let Ok(job) = rx.recv() {
        if !sh.test_delay.is_zero() {
            std::thread::sleep(sh.test_delay);
        }
        if let Some(e) = expired(job.deadline) {
            sh.answer(job.origin, Err(e), Vec::new());
            continue;
        }
        match ops::run_read(db.as_mut(), &sh.settings, job.op) {
            Ok(Step::Done(data, effect)) => sh.answer(job.origin, Ok((data, effect)), Vec::new()),
            Ok(Step::Write(op)) => {
                // The write half of REGISTER/LOGIN: still counted as one queued job.
                let next = Job {
                    origin: job.origin,
                    op,
                    deadline: job.deadline,
                };
                if let Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) = write_tx.try_send(next) {
                    sh.answer(
                        j.origin,
                        Err(ApiError::unavailable("storage queue is full; nothing was written")),
                        Vec::new(),
                    );
                }
            }
            Err(e) => sh.answer(job.origin, Err(e.into_api(store_error)), Vec::new()),
        }
    }
}

fn writer(mut db: Box<dyn Db>, rx: Receiver<Job>, sh: Arc<Shared>, max_batch: usize) {
    let mut state = WriterState::default();
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if !sh.test_delay.is_zero() {
            std::thread::sleep(sh.test_delay);
        }
        commit_batch(db.as_mut(), &mut state, &sh, &mut batch);
    }
}

/// Runs a batch in one transaction, each job in a savepoint so one job's refusal does not
/// undo the others; answers (and publishes) only after COMMIT returned.
fn commit_batch(db: &mut dyn Db, state: &mut WriterState, sh: &Shared, batch: &mut Vec<Job>) {
    type Answer = (
        Origin,
        Result<(serde_json::Map<String, Value>, Effect), ApiError>,
        Vec<Published>,
    );
    let mut results: Vec<Answer> = Vec::with_capacity(batch.len());
    let mut live = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        match expired(job.deadline) {
            Some(e) => results.push((job.origin, Err(e), Vec::new())),
            None => live.push(job),
        }
    }
    if !live.is_empty() {
        if let Err(e) = db.begin() {
            let e = store_error(e);
            state.reset();
            for job in live {
                results.push((job.origin, Err(e.clone()), Vec::new()));
            }
        } else {
            let mut staged = Vec::with_capacity(live.len());
            for job in live {
                let r = match db.execute("SAVEPOINT job", &[]) {
                    Err(e) => Err(ops::OpError::Store(e)),
                    Ok(_) => {
                        let mut deltas = Vec::new();
                        let r = ops::run_write(db, &sh.settings, state, job.op, &mut deltas);
                        let end = if r.is_ok() {
                            "RELEASE SAVEPOINT job"
                        } else {
                            "ROLLBACK TO SAVEPOINT job"
                        };
                        let r2 = db.execute(end, &[]).map_err(ops::OpError::Store);
                        if r.is_err() {
                            // ROLLBACK TO keeps the savepoint open; its ids stay spent (a gap).
                            let _ = db.execute("RELEASE SAVEPOINT job", &[]);
                        }
                        r.and_then(|v| r2.map(|_| (v, deltas)))
                    }
                };
                staged.push((job.origin, r));
            }
            match db.commit() {
                Ok(()) => {
                    sh.stats.batches.fetch_add(1, Ordering::Relaxed);
                    for (origin, r) in staged {
                        match r {
                            Ok(((data, effect), deltas)) => {
                                sh.stats.committed_jobs.fetch_add(1, Ordering::Relaxed);
                                let published = deltas.iter().map(Published::new).collect();
                                results.push((origin, Ok((data, effect)), published));
                            }
                            Err(e) => results.push((origin, Err(e.into_api(store_error)), Vec::new())),
                        }
                    }
                }
                Err(e) => {
                    db.rollback();
                    state.reset();
                    let e = store_error(e);
                    for (origin, _) in staged {
                        results.push((origin, Err(e.clone()), Vec::new()));
                    }
                }
            }
        }
    }
    for (origin, r, published) in results {
        sh.answer(origin, r, published);
    }
}
