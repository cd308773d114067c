//! The worker pool: every storage call and password hash runs here, never on the loop.
//!
//! Two queues over `crossbeam-channel`, both bounded: the read queue, served by
//! `workers - 1` reader threads (queries and Argon2), and the write queue, served by one
//! writer thread that commits whatever has queued up in one transaction (group commit),
//! so commits — and the delta ids they assign — happen in one order. A committed batch's
//! reply frames and `PUBLISH_DELTA` frames are encoded by one finisher thread, in order,
//! so the writer does no encoding and nothing is answered before COMMIT. Results go back on
//! one channel and wake the loop through its `mio::Waker`; wakes are coalesced with a
//! flag so a burst of completions costs one wake-up.
//!
//! A full queue is refused at once (`unavailable`); a job that waited past its deadline
//! is answered `unavailable` without being run, so a stalled database turns into errors
//! in bounded time rather than a growing backlog.
//!
//! A janitor thread, with a storage connection of its own, sweeps the file store for
//! orphans (`files::sweep`) at start and then on its schedule; it answers nobody, so it
//! takes no queue slot and the loop never hears of it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use log::{error, info, warn};
use serde_json::Value;

use crate::chat::delta::{Delta, Published};
use crate::chat::ops::{self, Answer, Effect, Op, Settings, Step, WriterState};
use crate::files::{self, SweepSchedule, Swept};
use crate::protocol::{encode_error, encode_success, encode_success_with, Action, ApiError};
use crate::store::{self, Db, StoreError};
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
    /// When the loop queued the job (publish latency in /metrics).
    pub submitted: Instant,
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
    /// Dropped at shutdown: the janitor stops.
    janitor_stop: Option<Sender<()>>,
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

    fn answer(&self, origin: Origin, result: Result<ops::Reply, ApiError>, published: Vec<Published>) {
        let (frame, effect) = match (&origin.seq, result) {
            (None, Ok((_, effect))) => (Vec::new(), effect),
            (None, Err(_)) => (Vec::new(), Effect::Failed),
            (Some(_), Ok((Answer::Data(data), effect))) => {
                (encode_success(origin.action.name(), origin.id.as_ref(), &data), effect)
            }
            (Some(_), Ok((Answer::Message(ids), effect))) => (
                encode_success_with(origin.action.name(), origin.id.as_ref(), &ids),
                effect,
            ),
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
    /// Starts `workers - 1` readers and one writer, each with its own connection to `url`,
    /// and the orphan-sweeping janitor (with one too) if `sweep` says when.
    pub fn start(
        url: &str,
        workers: usize,
        queue: usize,
        settings: Settings,
        sweep: Option<SweepSchedule>,
        waker: Arc<mio::Waker>,
        test_delay: Duration,
    ) -> Result<Pool, store::StoreError> {
        // Before any worker runs: no upload is in progress, so every temp file is a leftover.
        crate::files::prepare_dir(&settings.files_dir).map_err(|e| {
            store::StoreError::Internal(format!("files directory {}: {e}", settings.files_dir.display()))
        })?;
        let (storage_timeout, max_batch) = (settings.storage_timeout, settings.max_batch);
        let files_dir = settings.files_dir.clone();
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
            let db = store::open(url, storage_timeout)?;
            let (rx, wtx, sh) = (read_rx.clone(), write_tx.clone(), shared.clone());
            let h = std::thread::Builder::new()
                .name(format!("chimed-read-{i}"))
                .spawn(move || reader(db, rx, wtx, sh))
                .map_err(|e| store::StoreError::Internal(e.to_string()))?;
            handles.push(h);
        }
        let db = store::open(url, storage_timeout)?;
        let sh = shared.clone();
        // The writer's committed answers are encoded on their own thread (FIFO, so
        // replies and deltas still leave in commit order, and only after COMMIT).
        let (fin_tx, fin_rx) = unbounded::<Vec<Finish>>();
        let h = std::thread::Builder::new()
            .name("chimed-writer".into())
            .spawn(move || writer(db, write_rx, sh, fin_tx, max_batch))
            .map_err(|e| store::StoreError::Internal(e.to_string()))?;
        handles.push(h);
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name("chimed-finish".into())
            .spawn(move || finisher(fin_rx, sh))
            .map_err(|e| store::StoreError::Internal(e.to_string()))?;
        handles.push(h);
        let mut janitor_stop = None;
        if let Some(schedule) = sweep {
            let db = store::open(url, storage_timeout)?;
            let (stop_tx, stop_rx) = bounded::<()>(0);
            let h = std::thread::Builder::new()
                .name("chimed-janitor".into())
                .spawn(move || janitor(db, &files_dir, schedule, stop_rx))
                .map_err(|e| store::StoreError::Internal(e.to_string()))?;
            handles.push(h);
            janitor_stop = Some(stop_tx);
        }
        Ok(Pool {
            read_tx: Some(read_tx),
            write_tx: Some(write_tx),
            done_rx,
            wake_pending,
            stats,
            janitor_stop,
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
        self.janitor_stop = None;
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
            Ok(Step::Done(data, effect)) => sh.answer(job.origin, Ok((Answer::Data(data), effect)), Vec::new()),
            Ok(Step::Write(op)) => {
                // The write half of REGISTER/LOGIN or of an upload: still one queued job.
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

/// Sweeps the file store for orphans now and then every `schedule.every`, until the pool
/// shuts down (its stop sender dropped; a sweep in progress stops between shards).
fn janitor(mut db: Box<dyn Db>, files_dir: &Path, schedule: SweepSchedule, stop: Receiver<()>) {
    loop {
        let mut stopping = || !matches!(stop.try_recv(), Err(TryRecvError::Empty));
        match files::sweep(db.as_mut(), files_dir, schedule.grace, SystemTime::now(), &mut stopping) {
            Ok(s) if s == Swept::default() => {}
            Ok(s) => info!(
                "file sweep: removed {} unreferenced blobs ({} bytes) and {} stale temp files",
                s.blobs, s.blob_bytes, s.temps
            ),
            Err(e) => warn!("file sweep: {e}; trying again in {:?}", schedule.every),
        }
        match stop.recv_timeout(schedule.every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// A committed (or refused) write job on its way to the finisher thread, which encodes
/// its reply frame and its `PUBLISH_DELTA` frames off the writer.
enum Finish {
    Committed(Origin, ops::Reply, Vec<Delta>),
    Failed(Origin, ApiError),
}

fn finisher(rx: Receiver<Vec<Finish>>, sh: Arc<Shared>) {
    while let Ok(batch) = rx.recv() {
        finish_all(&sh, batch);
    }
}

fn finish_all(sh: &Shared, batch: Vec<Finish>) {
    for f in batch {
        match f {
            Finish::Committed(origin, reply, deltas) => {
                let published = deltas.iter().map(Published::new).collect();
                sh.answer(origin, Ok(reply), published);
            }
            Finish::Failed(origin, e) => sh.answer(origin, Err(e), Vec::new()),
        }
    }
}

fn writer(mut db: Box<dyn Db>, rx: Receiver<Job>, sh: Arc<Shared>, fin: Sender<Vec<Finish>>, max_batch: usize) {
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
        commit_batch(db.as_mut(), &mut state, &sh, &fin, &mut batch);
    }
}

/// Runs a batch in one transaction and answers every job only after COMMIT returned;
/// committed deltas are published with the answers, in commit order.
fn commit_batch(
    db: &mut dyn Db,
    state: &mut WriterState,
    sh: &Shared,
    fin: &Sender<Vec<Finish>>,
    batch: &mut Vec<Job>,
) {
    let mut out = Vec::with_capacity(batch.len());
    run_and_stage(db, state, sh, batch, &mut out);
    // The finisher answers in the order it receives (one message per batch); if it is
    // gone, answer here.
    if let Err(crossbeam_channel::SendError(out)) = fin.send(out) {
        finish_all(sh, out);
    }
}

fn run_and_stage(db: &mut dyn Db, state: &mut WriterState, sh: &Shared, batch: &mut Vec<Job>, out: &mut Vec<Finish>) {
    let mut finish = |f: Finish| out.push(f);
    let mut live = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        match expired(job.deadline) {
            Some(e) => finish(Finish::Failed(job.origin, e)),
            None => live.push(job),
        }
    }
    if live.is_empty() {
        return;
    }
    let items = live.into_iter().map(|j| (j.origin, j.op)).collect();
    match run_batch(db, state, &sh.settings, items) {
        Ok(staged) => {
            sh.stats.batches.fetch_add(1, Ordering::Relaxed);
            for (origin, r) in staged {
                match r {
                    Ok((reply, deltas)) => {
                        sh.stats.committed_jobs.fetch_add(1, Ordering::Relaxed);
                        finish(Finish::Committed(origin, reply, deltas));
                    }
                    Err(e) => finish(Finish::Failed(origin, e.into_api(store_error))),
                }
            }
        }
        Err((origins, e)) => {
            let e = store_error(e);
            for origin in origins {
                finish(Finish::Failed(origin, e.clone()));
            }
        }
    }
}

/// One job's outcome inside a batch: its answer and the deltas it appended.
pub type Staged<T> = (T, Result<(ops::Reply, Vec<Delta>), ops::OpError>);

/// The transaction of one batch (`T` tags each op: the writer passes the job's origin).
/// Posts (the hot path) write nothing while they run: their rows wait in the writer state
/// and go out as multi-row INSERTs before any other op and before COMMIT. Every other op
/// runs in a savepoint, so its refusal undoes only itself. `Err` means the transaction as
/// a whole failed and nothing was written.
pub fn run_batch<T>(
    db: &mut dyn Db,
    state: &mut WriterState,
    settings: &ops::Settings,
    items: Vec<(T, Op)>,
) -> Result<Vec<Staged<T>>, (Vec<T>, StoreError)> {
    fn fail<T>(
        db: &mut dyn Db,
        state: &mut WriterState,
        done: Vec<Staged<T>>,
        rest: Vec<(T, Op)>,
        e: StoreError,
    ) -> Result<Vec<Staged<T>>, (Vec<T>, StoreError)> {
        db.rollback();
        state.reset();
        let tags = done
            .into_iter()
            .map(|(t, _)| t)
            .chain(rest.into_iter().map(|(t, _)| t))
            .collect();
        Err((tags, e))
    }
    let mut staged: Vec<Staged<T>> = Vec::with_capacity(items.len());
    if let Err(e) = db.begin() {
        return fail(db, state, staged, items, e);
    }
    let mut items = items.into_iter();
    while let Some((tag, op)) = items.next() {
        let mut deltas = Vec::new();
        let r = if op.is_deferred() {
            ops::run_write(db, settings, state, op, &mut deltas)
        } else {
            if let Err(e) = state.flush_rows(db) {
                staged.push((tag, Err(ops::OpError::Store(e.clone()))));
                return fail(db, state, staged, items.collect(), e);
            }
            match in_savepoint(db, state, |db, state| {
                ops::run_write(db, settings, state, op, &mut deltas)
            }) {
                Ok(r) => r,
                Err(e) => {
                    staged.push((tag, Err(ops::OpError::Store(e.clone()))));
                    return fail(db, state, staged, items.collect(), e);
                }
            }
        };
        staged.push((tag, r.map(|reply| (reply, deltas))));
    }
    if let Err(e) = state.flush_rows(db) {
        return fail(db, state, staged, Vec::new(), e);
    }
    if let Err(e) = db.commit() {
        return fail(db, state, staged, Vec::new(), e);
    }
    Ok(staged)
}

/// Runs one op in a savepoint; the inner result is the op's own. The outer `Err` is a
/// savepoint statement that failed: the op may be half written, or the transaction gone
/// (MySQL aborts it on a deadlock), so the caller must fail the whole batch rather than
/// commit the rest.
fn in_savepoint<T>(
    db: &mut dyn Db,
    state: &mut WriterState,
    f: impl FnOnce(&mut dyn Db, &mut WriterState) -> ops::OpResult<T>,
) -> Result<ops::OpResult<T>, StoreError> {
    db.execute("SAVEPOINT job", &[])?;
    state.savepoint();
    let r = f(db, state);
    if r.is_err() {
        // ROLLBACK TO keeps the savepoint open; the ids it used stay spent (a gap). What
        // the op cached about the rows it wrote is forgotten with them.
        db.execute("ROLLBACK TO SAVEPOINT job", &[])?;
        state.rolled_back();
    }
    db.execute("RELEASE SAVEPOINT job", &[])?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::run_batch;
    use crate::chat::ops::{Effect, Op};
    use crate::store::Val;
    use crate::testkit::{Faulty, Kit};

    fn join(user: i64, server_id: i64) -> Op {
        Op::JoinServer {
            user,
            server_id: Some(server_id),
            invite_code: None,
        }
    }

    fn post(user: i64, channel_id: i64, content: &str) -> Op {
        Op::PostMessage {
            user,
            channel_id,
            content: content.into(),
            attachments: Vec::new(),
            client_msg_id: None,
        }
    }

    #[test]
    fn an_op_rolled_back_after_opening_a_partition_leaves_it_to_the_next_delta() {
        let mut k = Kit::new("batch_partition");
        k.s.partition_size = 3;
        let ann = k.user("ann");
        let bob = k.user("bob");
        let (server_id, channel) = k.server(ann); // deltas 1, 2
        k.post(ann, channel, "m1"); // delta 3 fills partition 1
                                    // Bob's join takes delta 4, records partition 2, then fails (its delta row is
                                    // refused) and is rolled back to its savepoint, partition row included. Ann's
                                    // post in the same batch takes delta 5: the first of partition 2 that exists.
        let items = vec![(1, join(bob, server_id)), (2, post(ann, channel, "m2"))];
        let mut db = Faulty {
            inner: k.db.as_mut(),
            fail: vec![("INSERT INTO deltas", 1)],
        };
        let staged = run_batch(&mut db, &mut k.w, &k.s, items).unwrap_or_else(|(_, e)| panic!("batch failed: {e}"));
        assert!(staged[0].1.is_err());
        let (_, deltas) = staged[1].1.as_ref().expect("the post commits");
        assert_eq!(deltas[0].delta_id, 5, "the rolled-back delta id stays spent");
        k.post(ann, channel, "m3"); // delta 6, a batch of its own
        let partitions =
            k.db.query(
                "SELECT partition_no, first_delta_id FROM delta_partitions WHERE server_id = ? ORDER BY partition_no",
                &[server_id.into()],
            )
            .unwrap();
        assert_eq!(
            partitions,
            vec![vec![Val::Int(1), Val::Int(1)], vec![Val::Int(2), Val::Int(5)]]
        );
        let (_, effect) = k
            .exec(Op::BackupBegin {
                user: ann,
                server_id,
                from_partition: Some(2),
            })
            .expect("partition 2 can be backed up");
        assert!(matches!(effect, Effect::Backup { after: 4, .. }), "{effect:?}");
    }

    #[test]
    fn a_failed_rollback_to_savepoint_fails_the_whole_batch() {
        let mut k = Kit::new("batch_savepoint");
        let ann = k.user("ann");
        let bob = k.user("bob");
        let (server_id, channel) = k.server(ann);
        // Bob's join inserts his membership, fails, and cannot be rolled back to its
        // savepoint: committing the rest would commit half of it.
        let items = vec![(1, join(bob, server_id)), (2, post(ann, channel, "m1"))];
        let mut db = Faulty {
            inner: k.db.as_mut(),
            fail: vec![("INSERT INTO deltas", 1), ("ROLLBACK TO SAVEPOINT", 1)],
        };
        match run_batch(&mut db, &mut k.w, &k.s, items) {
            Err((tags, _)) => assert_eq!(tags, vec![1, 2]),
            Ok(staged) => panic!(
                "committed: {:?}",
                staged.iter().map(|(t, r)| (t, r.is_ok())).collect::<Vec<_>>()
            ),
        }
        let q = format!("SELECT COUNT(*) FROM server_users WHERE user_id = {bob}");
        assert_eq!(k.count(&q), 0);
        assert_eq!(k.count("SELECT COUNT(*) FROM messages"), 0);
        // The writer goes on from storage.
        assert_eq!(k.post(ann, channel, "m2")["delta_id"], 3);
    }
}
