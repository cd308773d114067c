//! `flood`: chimed's bundled socket-flood load tester (run it through `scripts/flood.sh`).
//!
//! The main thread prepares the run (users, servers, channels on chimed), hands each client
//! thread its share of the connections, moves every thread through the phases (connect and
//! handshake, post, drain, stop), prints a progress line each second and, at the end, a table
//! and one JSON line. See `flood --help`.

mod cli;
mod resp;
mod setup;
mod util;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use cli::{Cli, Scenario, Target};
use setup::World;
use util::{human, now_ns, rss_kb};
use worker::{Ctx, Role, Shared, Spec, WorkerResult, PH_RUN, PH_SETUP, PH_STOP};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = cli.validate() {
        eprintln!("flood: {e}");
        std::process::exit(2);
    }
    match run(cli) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("flood: {e}");
            std::process::exit(2);
        }
    }
}

/// Connections the run holds at once.
fn connections_needed(cli: &Cli) -> usize {
    match cli.scenario {
        Scenario::Connect | Scenario::Churn => cli.connections,
        Scenario::Fanout | Scenario::Ingest => cli.subscribers_n() + cli.publishers_n(),
    }
}

fn run(cli: Cli) -> Result<bool, String> {
    let nofile = util::raise_nofile();
    let total = connections_needed(&cli);
    if total as u64 + 64 > nofile {
        return Err(format!(
            "{total} connections do not fit under the open-files limit ({nofile}); split the load over \
             several flood processes (each with its own --source-first)"
        ));
    }
    let posting = matches!(cli.scenario, Scenario::Fanout | Scenario::Ingest);
    let publishers = if posting { cli.publishers_n() } else { 0 };
    let subscribers = if posting { cli.subscribers_n() } else { 0 };
    let messages = if posting { cli.messages } else { 0 };
    let stride = (messages as usize).div_ceil(64) * 64;
    let tracking_bytes = subscribers as u128 * publishers as u128 * stride as u128 / 8;
    if tracking_bytes > 4 << 30 {
        return Err(format!(
            "tracking every post for every subscriber would take {} MiB; use fewer messages or subscribers",
            tracking_bytes >> 20
        ));
    }
    let source_ips = if cli.source_ips > 0 {
        cli.source_ips as usize
    } else if total > cli.source_threshold {
        total.div_ceil(cli.source_threshold.max(1))
    } else {
        0
    };
    if cli.source_first as usize + source_ips > 255 {
        return Err("too many source addresses from --source-first".into());
    }

    let t_setup = Instant::now();
    let (servers, channels) = match cli.scenario {
        Scenario::Ingest => (cli.servers, cli.channels),
        _ => (1, 1),
    };
    let world = if cli.target == Target::Chimed {
        setup::prepare(cli.addr, cli.users, servers, channels).map_err(|e| format!("setup on {}: {e}", cli.addr))?
    } else {
        World::default()
    };
    let setup_s = t_setup.elapsed().as_secs_f64();
    let server_index: HashMap<String, usize> = world
        .server_ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), i))
        .collect();

    // The connections and what each does.
    let users = world.tokens.len().max(1);
    let mut specs = Vec::new();
    match cli.scenario {
        Scenario::Connect => {
            for i in 0..cli.connections {
                let group = i.checked_div(cli.channel_members).unwrap_or(0);
                specs.push(Spec {
                    conn: i,
                    role: Role::Idle { group },
                    user: i % users,
                });
            }
        }
        Scenario::Fanout | Scenario::Ingest => {
            for i in 0..subscribers {
                specs.push(Spec {
                    conn: i,
                    role: Role::Sub,
                    user: i % users,
                });
            }
            for j in 0..publishers {
                specs.push(Spec {
                    conn: subscribers + j,
                    role: Role::Pub {
                        index: j,
                        server: j % servers,
                        channel: (j / servers) % channels,
                    },
                    user: (subscribers + j) % users,
                });
            }
        }
        Scenario::Churn => {}
    }
    let threads = cli.threads;
    let mut per_thread: Vec<Vec<Spec>> = vec![Vec::new(); threads];
    for (i, s) in specs.into_iter().enumerate() {
        per_thread[i % threads].push(s);
    }

    let run_tag = format!("f{}", worker::base36(now_ns() / 1000 % 46_656, 3));
    let ctx = Arc::new(Ctx {
        cli: cli.clone(),
        world,
        shared: Shared::default(),
        publishers,
        messages,
        source_ips,
        server_index,
        run_tag,
    });
    let sh = &ctx.shared;
    let rss_before = cli.server_pid.and_then(rss_kb);
    let cpu_before = (cli.server_pid.and_then(util::cpu_s), util::own_cpu_s());
    if cli.scenario == Scenario::Churn {
        let now = now_ns();
        sh.run_start_ns.store(now, Ordering::Relaxed);
        sh.run_deadline_ns
            .store(now + (cli.duration_s() * 1e9) as u64, Ordering::Relaxed);
        sh.phase.store(PH_RUN, Ordering::Release);
    } else {
        sh.phase.store(PH_SETUP, Ordering::Release);
    }

    let t0 = Instant::now();
    let handles: Vec<_> = per_thread
        .into_iter()
        .enumerate()
        .map(|(tid, specs)| {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name(format!("flood-{tid}"))
                .spawn(move || worker::run(ctx, tid, specs))
        })
        .collect();
    let mut joins = Vec::new();
    for h in handles {
        match h {
            Ok(j) => joins.push(j),
            Err(e) => {
                sh.phase.store(PH_STOP, Ordering::Release);
                return Err(format!("cannot start a thread: {e}"));
            }
        }
    }
    let mut progress = Progress::new(cli.quiet);
    let mut report = Report::default();
    let mut rss_after = None;

    match cli.scenario {
        Scenario::Churn => {
            let end = t0 + Duration::from_secs_f64(cli.duration_s());
            while Instant::now() < end {
                if cli.handshakes > 0 && sh.handshakes.load(Ordering::Relaxed) >= cli.handshakes {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                progress.tick(sh, "churn", t0, 0);
            }
            report.run_s = t0.elapsed().as_secs_f64();
        }
        _ => {
            // Connect and handshake everything.
            let deadline = t0 + Duration::from_secs_f64(cli.setup_timeout);
            while Instant::now() < deadline {
                let done = sh.ready.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed);
                if done >= total as u64 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
                progress.tick(sh, "connect", t0, total);
            }
            report.ready_s = t0.elapsed().as_secs_f64();
            if cli.scenario == Scenario::Connect {
                std::thread::sleep(Duration::from_secs_f64(cli.hold.min(5.0) / 2.0));
                rss_after = cli.server_pid.and_then(rss_kb);
                let hold_end = Instant::now() + Duration::from_secs_f64(cli.hold / 2.0);
                while Instant::now() < hold_end {
                    std::thread::sleep(Duration::from_millis(20));
                    progress.tick(sh, "hold", t0, total);
                }
                let later = cli.server_pid.and_then(rss_kb);
                rss_after = rss_after.max(later);
            } else {
                run_posting(&cli, sh, &mut progress, &mut report, subscribers);
                rss_after = cli.server_pid.and_then(rss_kb);
            }
        }
    }
    sh.phase.store(PH_STOP, Ordering::Release);
    let mut results = Vec::new();
    for j in joins {
        match j.join() {
            Ok(r) => results.push(r),
            Err(_) => sh.note_error("a client thread panicked".into()),
        }
    }
    report.server_cpu_s = match (cpu_before.0, cli.server_pid.and_then(util::cpu_s)) {
        (Some(b), Some(a)) => Some(round3(a - b)),
        _ => None,
    };
    report.flood_cpu_s = round3(util::own_cpu_s() - cpu_before.1);
    report.wall_s = round3(t0.elapsed().as_secs_f64());
    Ok(summarize(
        &ctx, &cli, results, report, setup_s, rss_before, rss_after, total,
    ))
}

/// Phase timings the main thread measures.
#[derive(Default)]
struct Report {
    ready_s: f64,
    run_s: f64,
    drain_s: f64,
    publish_s: f64,
    /// CPU seconds the server and this tool used from the first connection to the end.
    server_cpu_s: Option<f64>,
    flood_cpu_s: f64,
    wall_s: f64,
}

fn run_posting(cli: &Cli, sh: &Shared, progress: &mut Progress, report: &mut Report, subscribers: usize) {
    let publishers = cli.publishers_n() as u64;
    let start = now_ns();
    let t_run = Instant::now();
    sh.run_start_ns.store(start, Ordering::Relaxed);
    sh.run_deadline_ns
        .store(start + (cli.duration_s() * 1e9) as u64, Ordering::Relaxed);
    sh.phase.store(PH_RUN, Ordering::Release);
    // Posting: until every publisher is done; bounded by --duration plus the drain timeout for
    // the last answers.
    let hard = t_run + Duration::from_secs_f64(cli.duration_s() + cli.drain_timeout);
    while Instant::now() < hard && sh.pubs_done.load(Ordering::Relaxed) < publishers {
        std::thread::sleep(Duration::from_millis(5));
        progress.tick(sh, "post", t_run, 0);
    }
    report.publish_s = t_run.elapsed().as_secs_f64();
    // Draining: until every subscriber has every acknowledged post, or nothing new arrived for
    // --drain-timeout (bounded in all).
    let t_drain = Instant::now();
    let mut last_count = sh.deliveries.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    let hard = t_drain + Duration::from_secs_f64(cli.drain_timeout * 6.0 + 1.0);
    loop {
        let subs = sh.subs_ready.load(Ordering::Relaxed).min(subscribers as u64);
        let expected = sh.acked.load(Ordering::Relaxed) * subs;
        let got = sh.deliveries.load(Ordering::Relaxed);
        if got >= expected || Instant::now() > hard {
            break;
        }
        if got != last_count {
            last_count = got;
            last_change = Instant::now();
        } else if last_change.elapsed().as_secs_f64() > cli.drain_timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        progress.tick(sh, "drain", t_run, 0);
    }
    report.drain_s = t_drain.elapsed().as_secs_f64();
    report.run_s = t_run.elapsed().as_secs_f64();
}

struct Progress {
    quiet: bool,
    next: Instant,
    last_acked: u64,
    last_deliveries: u64,
    last_handshakes: u64,
    last_at: Instant,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        Progress {
            quiet,
            next: Instant::now() + Duration::from_secs(1),
            last_acked: 0,
            last_deliveries: 0,
            last_handshakes: 0,
            last_at: Instant::now(),
        }
    }

    fn tick(&mut self, sh: &Shared, phase: &str, t0: Instant, total: usize) {
        if self.quiet || Instant::now() < self.next {
            return;
        }
        self.next += Duration::from_secs(1);
        let dt = self.last_at.elapsed().as_secs_f64().max(1e-3);
        self.last_at = Instant::now();
        let acked = sh.acked.load(Ordering::Relaxed);
        let deliveries = sh.deliveries.load(Ordering::Relaxed);
        let handshakes = sh.handshakes.load(Ordering::Relaxed);
        let mut line = format!(
            "[{:6.1}s] {phase:7} ready {}{} failed {}",
            t0.elapsed().as_secs_f64(),
            sh.ready.load(Ordering::Relaxed),
            if total > 0 { format!("/{total}") } else { String::new() },
            sh.failed.load(Ordering::Relaxed),
        );
        if phase == "churn" {
            line += &format!(
                " handshakes {} ({}/s)",
                handshakes,
                human((handshakes - self.last_handshakes) as f64 / dt)
            );
        } else if acked > 0 || deliveries > 0 {
            line += &format!(
                " acked {} ({}/s) deliveries {} ({}/s) errors {}",
                human(acked as f64),
                human(acked.saturating_sub(self.last_acked) as f64 / dt),
                human(deliveries as f64),
                human(deliveries.saturating_sub(self.last_deliveries) as f64 / dt),
                sh.post_errors.load(Ordering::Relaxed)
            );
        }
        let dis = sh.disconnects.load(Ordering::Relaxed);
        if dis > 0 {
            line += &format!(" disconnects {dis}");
        }
        self.last_acked = acked;
        self.last_deliveries = deliveries;
        self.last_handshakes = handshakes;
        eprintln!("{line}");
    }
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": null, "p99": null, "p999": null, "max": null, "mean": null});
    }
    let us = |v: u64| (v as f64 / 1000.0 * 10.0).round() / 10.0;
    json!({
        "count": h.len(),
        "p50": us(h.value_at_quantile(0.50)),
        "p99": us(h.value_at_quantile(0.99)),
        "p999": us(h.value_at_quantile(0.999)),
        "max": us(h.max()),
        "mean": (h.mean() / 1000.0 * 10.0).round() / 10.0,
    })
}

fn ms(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_f64) {
        Some(us) if us >= 1000.0 => format!("{:.2} ms", us / 1000.0),
        Some(us) => format!("{us:.0} us"),
        None => "-".into(),
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs * 10.0).round() / 10.0
    } else {
        0.0
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    ctx: &Ctx,
    cli: &Cli,
    results: Vec<WorkerResult>,
    report: Report,
    setup_s: f64,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    total: usize,
) -> bool {
    let sh = &ctx.shared;
    let mut latency = worker::histogram();
    let mut ack_latency = worker::histogram();
    let mut handshake = worker::histogram();
    let mut subs = Vec::new();
    let mut pubs = Vec::new();
    for r in results {
        let _ = latency.add(&r.latency);
        let _ = ack_latency.add(&r.ack_latency);
        let _ = handshake.add(&r.handshake);
        subs.extend(r.subs);
        pubs.extend(r.pubs);
    }
    pubs.sort_by_key(|p| p.index);

    // Exactly once: every subscriber against every acknowledged post.
    let words = ctx.stride() / 64;
    let (mut lost, mut duplicated, mut reordered, mut unexpected, mut foreign, mut deliveries, mut expected) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut cut_off = 0u64;
    for s in &subs {
        duplicated += s.duplicated;
        reordered += s.reordered;
        foreign += s.foreign;
        deliveries += s.deliveries;
        cut_off += u64::from(s.cut_off);
        for p in &pubs {
            let acked = p.acked.count();
            let got = s.received.count_and_at(p.index * words, &p.acked);
            let all = s.received.count_at(p.index * words, words);
            expected += acked;
            lost += acked - got.min(acked);
            unexpected += all - got.min(all);
        }
    }
    let posts_sent: u64 = pubs.iter().map(|p| p.sent).sum();
    let posts_acked: u64 = pubs.iter().map(|p| p.acked.count()).sum();
    let post_errors = sh.post_errors.load(Ordering::Relaxed);
    let failed = sh.failed.load(Ordering::Relaxed);
    let ready = sh.ready.load(Ordering::Relaxed);
    let malformed = sh.malformed.load(Ordering::Relaxed);
    let disconnects = sh.disconnects.load(Ordering::Relaxed);
    let handshakes = sh.handshakes.load(Ordering::Relaxed);
    let start = sh.run_start_ns.load(Ordering::Relaxed);
    let ack_span = sh.last_ack_ns.load(Ordering::Relaxed).saturating_sub(start) as f64 / 1e9;
    let delivery_span = sh.last_delivery_ns.load(Ordering::Relaxed).saturating_sub(start) as f64 / 1e9;
    let posting = matches!(cli.scenario, Scenario::Fanout | Scenario::Ingest);

    let ok = match cli.scenario {
        Scenario::Connect => failed == 0 && ready == total as u64 && malformed == 0 && disconnects == 0,
        Scenario::Churn => handshakes > 0 && failed == 0 && malformed == 0,
        _ => {
            failed == 0
                && malformed == 0
                && disconnects == 0
                && post_errors == 0
                && lost == 0
                && duplicated == 0
                && reordered == 0
                && unexpected == 0
                && posts_acked > 0
        }
    };

    let mut j = Map::new();
    let mut put = |k: &str, v: Value| {
        j.insert(k.to_string(), v);
    };
    put("scenario", json!(cli.scenario.name()));
    put("target", json!(cli.target.name()));
    put("addr", json!(cli.addr.to_string()));
    put("threads", json!(cli.threads));
    put("ok", json!(ok));
    put("setup_s", json!(round3(setup_s)));
    put("connections", json!(total));
    put("connected", json!(ready));
    put("connect_failed", json!(failed));
    put("disconnects", json!(disconnects));
    put("malformed", json!(malformed));
    put("source_ips", json!(ctx.source_ips));
    put("handshake_us", percentiles(&handshake));
    let errors = sh.errors.lock().map(|e| e.clone()).unwrap_or_default();
    put("errors", json!(errors));
    match cli.scenario {
        Scenario::Connect => {
            put("ready_s", json!(round3(report.ready_s)));
            put("connects_per_s", json!(rate(ready, report.ready_s)));
            put("hold_s", json!(cli.hold));
        }
        Scenario::Churn => {
            put("concurrency", json!(cli.connections));
            put("handshakes", json!(handshakes));
            put("run_s", json!(round3(report.run_s)));
            put("handshakes_per_s", json!(rate(handshakes, report.run_s)));
        }
        _ => {}
    }
    if posting {
        put("subscribers", json!(cli.subscribers_n()));
        put("publishers", json!(cli.publishers_n()));
        put("messages_per_publisher", json!(cli.messages));
        put("size", json!(cli.size));
        put("window", json!(cli.window));
        put("rate", json!(cli.rate));
        if cli.scenario == Scenario::Ingest {
            put("servers", json!(cli.servers));
            put("channels_per_server", json!(cli.channels));
        }
        put("ready_s", json!(round3(report.ready_s)));
        put("run_s", json!(round3(report.run_s)));
        put("publish_s", json!(round3(report.publish_s)));
        put("drain_s", json!(round3(report.drain_s)));
        put("posts_sent", json!(posts_sent));
        put("posts_acked", json!(posts_acked));
        put("post_errors", json!(post_errors));
        put("rate_limited", json!(sh.rate_limited.load(Ordering::Relaxed)));
        put("acked_per_s", json!(rate(posts_acked, ack_span)));
        put("deliveries", json!(deliveries));
        put("deliveries_expected", json!(expected));
        put("deliveries_per_s", json!(rate(deliveries, delivery_span)));
        put("latency_us", percentiles(&latency));
        put("ack_latency_us", percentiles(&ack_latency));
        put("lost", json!(lost));
        put("duplicated", json!(duplicated));
        put("reordered", json!(reordered));
        put("unexpected", json!(unexpected));
        put("foreign", json!(foreign));
        put("sync_notices", json!(sh.sync_notices.load(Ordering::Relaxed)));
        put("cut_off_subscribers", json!(cut_off));
    }
    put("server_pid", json!(cli.server_pid));
    put("rss_before_kb", json!(rss_before));
    put("rss_after_kb", json!(rss_after));
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if ready > 0 => Some((a.saturating_sub(b) as f64 * 1024.0 / ready as f64).round()),
        _ => None,
    };
    put("rss_per_conn_bytes", json!(per_conn));
    put("wall_s", json!(report.wall_s));
    put("server_cpu_s", json!(report.server_cpu_s));
    put("flood_cpu_s", json!(report.flood_cpu_s));

    // The table.
    println!(
        "flood {} -> {} {} ({} threads){}",
        cli.scenario.name(),
        cli.target.name(),
        cli.addr,
        cli.threads,
        if ok { "" } else { "  ** NOT OK **" }
    );
    let row = |k: &str, v: String| println!("  {k:<16} {v}");
    row(
        "connections",
        format!(
            "{ready} ready of {total}, {failed} failed, {disconnects} dropped; ready in {:.2} s (setup {:.2} s)",
            report.ready_s, setup_s
        ),
    );
    let hs = percentiles(&handshake);
    row(
        "handshake",
        format!("p50 {}  p99 {}  max {}", ms(&hs, "p50"), ms(&hs, "p99"), ms(&hs, "max")),
    );
    if cli.scenario == Scenario::Churn {
        row(
            "churn",
            format!(
                "{handshakes} handshakes in {:.2} s: {:.0}/s",
                report.run_s,
                rate(handshakes, report.run_s)
            ),
        );
    }
    if posting {
        row(
            "posts",
            format!(
                "{posts_sent} sent, {posts_acked} acked ({:.0}/s), {post_errors} errors",
                rate(posts_acked, ack_span)
            ),
        );
        row(
            "deliveries",
            format!(
                "{deliveries} of {expected} expected ({:.0}/s)",
                rate(deliveries, delivery_span)
            ),
        );
        let l = percentiles(&latency);
        row(
            "latency",
            format!(
                "p50 {}  p99 {}  p99.9 {}  max {}",
                ms(&l, "p50"),
                ms(&l, "p99"),
                ms(&l, "p999"),
                ms(&l, "max")
            ),
        );
        let a = percentiles(&ack_latency);
        row(
            "ack latency",
            format!("p50 {}  p99 {}  max {}", ms(&a, "p50"), ms(&a, "p99"), ms(&a, "max")),
        );
        row(
            "exactly once",
            format!(
                "lost {lost}  duplicated {duplicated}  reordered {reordered}  unexpected {unexpected}  (sync notices {})",
                sh.sync_notices.load(Ordering::Relaxed)
            ),
        );
    }
    if let (Some(b), Some(a)) = (rss_before, rss_after) {
        row(
            "server RSS",
            format!(
                "{:.1} MiB before, {:.1} MiB after{}",
                b as f64 / 1024.0,
                a as f64 / 1024.0,
                per_conn
                    .map(|p| format!(", {p:.0} bytes per connection"))
                    .unwrap_or_default()
            ),
        );
    }
    row(
        "cpu",
        format!(
            "server {}, flood {:.2} s over {:.2} s",
            report
                .server_cpu_s
                .map(|c| format!("{c:.2} s"))
                .unwrap_or_else(|| "- (no --server-pid)".into()),
            report.flood_cpu_s,
            report.wall_s
        ),
    );
    if malformed > 0 {
        row(
            "malformed",
            format!("{malformed} connections sent bytes the tool could not read"),
        );
    }
    for e in &errors {
        row("error", e.clone());
    }
    println!("{}", Value::Object(j));
    ok
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
