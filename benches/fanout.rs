//! Fan-out of one delta to 10,000 subscribed connections, in process (no socket I/O), with
//! a counting allocator: the goal is zero allocations per subscriber — each receiver gets
//! an `Arc` clone of the one serialised frame.
//!
//!     cargo bench --bench fanout

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use slab::Slab;

use chimed::chat::delta::{Delta, Published};
use chimed::chat::fanout::Feeds;
use chimed::chat::log::Page;
use chimed::conn::Conn;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SUBSCRIBERS: usize = 10_000;
const SERVER: i64 = 7;

/// 10,000 real (accepted, idle) sockets wrapped as connections, all subscribed live.
fn setup() -> (Slab<Conn>, Feeds) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut conns = Slab::with_capacity(SUBSCRIBERS);
    let mut feeds = Feeds::new(4096);
    let now = Instant::now();
    for i in 0..SUBSCRIBERS {
        let client = TcpStream::connect(addr).expect("connect");
        let (server_side, peer) = listener.accept().expect("accept");
        drop(client); // one descriptor per connection: the bench never writes
        server_side.set_nonblocking(true).expect("nonblocking");
        let key = conns.insert(Conn::new(
            mio::net::TcpStream::from_std(server_side),
            i as u64,
            peer.ip(),
            now,
        ));
        feeds.begin_subscribe(SERVER);
        let page = Page {
            server_id: SERVER,
            head: 0,
            after: None,
            deltas: Vec::new(),
            has_more: false,
        };
        feeds.subscribed(&mut conns, key, i as i64, page);
    }
    (conns, feeds)
}

fn delta(id: i64) -> Published {
    Published::new(&Delta {
        server_id: SERVER,
        delta_id: id,
        kind: "message".into(),
        channel_id: Some(1),
        message_id: Some(id),
        user_id: 1,
        content: Some("x".repeat(128)),
        attachments: None,
        created_at: 0,
    })
}

fn fanout(c: &mut Criterion) {
    let (mut conns, mut feeds) = setup();
    let mut touched = Vec::with_capacity(SUBSCRIBERS);
    let mut next = 1;
    // Warm up: every output queue and the touched list reach their steady capacity.
    for _ in 0..3 {
        let p = delta(next);
        next += 1;
        feeds.publish(&mut conns, &p, usize::MAX, Instant::now(), &mut touched);
        touched.clear();
        for (_, c) in conns.iter_mut() {
            c.out.clear();
        }
    }
    // The measured claim: allocations during one publish, per subscriber.
    let p = delta(next);
    next += 1;
    let before = ALLOCS.load(Ordering::Relaxed);
    feeds.publish(&mut conns, &p, usize::MAX, Instant::now(), &mut touched);
    let allocs = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(touched.len(), SUBSCRIBERS);
    println!(
        "fan-out of one delta to {SUBSCRIBERS} subscribers: {allocs} allocations ({:.4} per subscriber)",
        allocs as f64 / SUBSCRIBERS as f64
    );

    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("one delta to 10,000 subscribers", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let p = delta(next);
                next += 1;
                touched.clear();
                for (_, c) in conns.iter_mut() {
                    c.out.clear();
                }
                let t = Instant::now();
                feeds.publish(&mut conns, &p, usize::MAX, Instant::now(), &mut touched);
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
