//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), written by hand.
//!
//! Everything is a counter or gauge the loop already keeps, plus one histogram: the publish
//! latency, from the moment the loop queued a write to the moment its deltas went out to
//! subscribers (storage queueing, group commit and fan-out together). Rendering walks the
//! connection table once; scrapes are rare, the loop is not.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::Server;
use crate::conn::Framing;

/// Frames queued for clients (replies and pushes). Only the loop thread writes it, so a
/// relaxed load and store (no locked add) is enough; /metrics reads it on the same thread.
static FRAMES_OUT: AtomicU64 = AtomicU64::new(0);

/// Counts one frame queued for a client.
#[inline]
pub fn frame_out() {
    FRAMES_OUT.store(FRAMES_OUT.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

/// Upper bounds of the publish-latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A fixed-bucket histogram (cumulative counts are computed when rendering).
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| s <= b).unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum += s;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

/// Figures only the loop keeps (the pool keeps its own in `PoolStats`).
#[derive(Debug, Default)]
pub struct Metrics {
    pub publish_latency: Histogram,
    pub deltas_published: u64,
    pub http_requests: u64,
    pub websocket_upgrades: u64,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
}

impl Server {
    /// The whole exposition, as `GET /metrics` returns it.
    pub(super) fn render_metrics(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut by_protocol = [0usize; 4];
        let mut subscriptions = 0;
        let mut output_bytes = 0;
        for (_, c) in self.conns.iter() {
            let i = match c.framing {
                Framing::Sniffing => 0,
                Framing::Line => 1,
                Framing::Http(_) => 2,
                Framing::WebSocket(_) => 3,
            };
            by_protocol[i] += 1;
            subscriptions += c.subs.len();
            output_bytes += c.out.len();
        }
        let _ = writeln!(
            out,
            "# HELP chimed_connections Open client connections by protocol.\n# TYPE chimed_connections gauge"
        );
        for (i, p) in ["sniffing", "line", "http", "websocket"].iter().enumerate() {
            let _ = writeln!(out, "chimed_connections{{protocol=\"{p}\"}} {}", by_protocol[i]);
        }
        metric(
            &mut out,
            "chimed_connections_max",
            "gauge",
            "Connection limit.",
            self.max_conns,
        );
        metric(
            &mut out,
            "chimed_connections_accepted_total",
            "counter",
            "Connections accepted.",
            self.counters.accepted,
        );
        let c = &self.counters;
        let _ = writeln!(
            out,
            "# HELP chimed_connections_refused_total Connections refused at accept, by limit.\n\
             # TYPE chimed_connections_refused_total counter\n\
             chimed_connections_refused_total{{reason=\"global\"}} {}\n\
             chimed_connections_refused_total{{reason=\"per_ip\"}} {}",
            c.refused_global, c.refused_per_ip
        );
        metric(
            &mut out,
            "chimed_accept_emfile_total",
            "counter",
            "accept() failures for lack of file descriptors (accepting paused).",
            c.accept_emfile,
        );
        metric(
            &mut out,
            "chimed_rate_limited_total",
            "counter",
            "Requests answered rate_limited by the per-connection budgets.",
            c.rate_limited,
        );
        metric(
            &mut out,
            "chimed_login_throttled_total",
            "counter",
            "LOGIN and AUTH attempts refused by the failed-login throttle.",
            c.login_throttled,
        );
        metric(
            &mut out,
            "chimed_flood_disconnects_total",
            "counter",
            "Connections closed for flooding past their rate limits.",
            c.flood_disconnects,
        );
        let _ = writeln!(
            out,
            "# HELP chimed_timeouts_total Connections closed by a timeout.\n\
             # TYPE chimed_timeouts_total counter\n\
             chimed_timeouts_total{{kind=\"idle\"}} {}\n\
             chimed_timeouts_total{{kind=\"handshake\"}} {}\n\
             chimed_timeouts_total{{kind=\"body\"}} {}",
            c.idle_timeouts, c.handshake_timeouts, c.body_timeouts
        );
        metric(
            &mut out,
            "chimed_subscriptions",
            "gauge",
            "Open SUBSCRIBE feeds.",
            subscriptions,
        );
        metric(
            &mut out,
            "chimed_output_buffered_bytes",
            "gauge",
            "Bytes queued for clients, all connections.",
            output_bytes,
        );
        metric(
            &mut out,
            "chimed_frames_in_total",
            "counter",
            "Request frames received (line and WebSocket).",
            self.counters.frames_in,
        );
        metric(
            &mut out,
            "chimed_frames_out_total",
            "counter",
            "Frames queued for clients (replies and pushes).",
            FRAMES_OUT.load(Ordering::Relaxed),
        );
        metric(
            &mut out,
            "chimed_http_requests_total",
            "counter",
            "HTTP requests parsed.",
            self.metrics.http_requests,
        );
        metric(
            &mut out,
            "chimed_websocket_upgrades_total",
            "counter",
            "WebSocket sessions opened.",
            self.metrics.websocket_upgrades,
        );
        metric(
            &mut out,
            "chimed_deltas_published_total",
            "counter",
            "Deltas committed and published.",
            self.metrics.deltas_published,
        );
        let stats = &self.pool.stats;
        metric(
            &mut out,
            "chimed_worker_queue_depth",
            "gauge",
            "Storage jobs queued or running.",
            self.pool.in_flight(),
        );
        metric(
            &mut out,
            "chimed_storage_errors_total",
            "counter",
            "Requests answered unavailable or internal by storage.",
            stats.storage_errors.load(Ordering::Relaxed),
        );
        metric(
            &mut out,
            "chimed_commit_batches_total",
            "counter",
            "Group-commit transactions.",
            stats.batches.load(Ordering::Relaxed),
        );
        metric(
            &mut out,
            "chimed_committed_jobs_total",
            "counter",
            "Write jobs committed.",
            stats.committed_jobs.load(Ordering::Relaxed),
        );
        self.metrics.publish_latency.render(
            &mut out,
            "chimed_publish_latency_seconds",
            "From queueing a write to publishing its deltas.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(9));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }
}
