//! Command line of the flood tool.

use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

/// Bytes of the header every posted message starts with: `<send ns:20>:<publisher:8>:<seq:10>:`.
pub const HEADER_LEN: usize = 41;

const ABOUT: &str = "chimed's socket-flood load tester: many non-blocking connections from a few threads \
(one mio poll per thread), named scenarios, latency percentiles and an exactly-once check.";

const LONG_ABOUT: &str = "\
chimed's socket-flood load tester: many non-blocking connections from a few threads (one mio poll \
per thread, each with its share of the connections), named scenarios, latency percentiles and an \
exactly-once check. Loopback targets only.

SCENARIOS
  connect  N connections (--connections) each AUTH with a shared token and SUBSCRIBE to one server
           (peers: IRC NICK/USER + JOIN, Redis SUBSCRIBE), held idle for --hold seconds. Reports how
           long it took until all N were ready (subscribed) and, with --server-pid, the server's
           RSS (VmRSS) before and after, per connection.
  fanout   S subscribers (--subscribers) of one server, P publishers (--publishers) posting
           --messages each, --size bytes, as fast as acknowledged (--window outstanding posts per
           publisher) or at --rate posts/s in total. Every message carries its send time (CLOCK_MONOTONIC
           ns), its publisher and its sequence number. Reports acked posts/s, deliveries/s, latency
           from post to delivery (p50/p99/p99.9/max) and checks that every subscriber got every
           acknowledged post exactly once and in order: lost, duplicated, reordered.
  ingest   --servers servers with --channels channels each, many publishers spread over the
           channels, few subscribers (each subscribed to every server): durable (acknowledged)
           posts/s, with the same delivery checks. chimed only.
  churn    --connections concurrent loops of connect, AUTH, SUBSCRIBE with a cursor, disconnect,
           for --duration seconds (or --handshakes in total): handshakes/s. chimed only.

TARGETS (--target)
  chimed  the line protocol; the tool REGISTERs --users users, creates the servers and shares the
          users' tokens across connections.
  irc     NICK/USER, wait for 001, JOIN #CHANNEL, PRIVMSG; posts are acknowledged by a PING after
          every window/2 posts (the PONG says the server handled them). fanout and connect only.
  redis   SUBSCRIBE CHANNEL / PUBLISH CHANNEL MSG (RESP); the PUBLISH reply is the ack. fanout and
          connect only.
  For peers the exactly-once check uses the per-publisher sequence numbers in the messages; for
  chimed the order check uses delta_id.

OUTPUT
  A progress line on stderr every second, a table on stdout at the end and, as the last line of
  stdout, one JSON object with every figure (including lost, duplicated, reordered). The exit
  status is 0 when every connection got ready and (fanout, ingest) nothing was lost, duplicated,
  reordered or malformed; 1 otherwise; 2 for bad arguments or a failed setup.

LIMITS
  The soft open-files limit is raised to the hard one at start; the connections of one run must
  fit under it. Past --source-threshold connections (default 4,000), sockets are bound to
  127.0.0.N:0 before connect (N from --source-first, one address per --source-threshold
  connections, or --source-ips of them): past one port range's worth of connections that is the
  only way to reach one server, and well before it the kernel's search for a free ephemeral port
  costs the tool more than the run (measured: 19,000 connections from one address took 24.6 s,
  12 s of it in connect(); from 4 addresses 3.8 s). Every phase is bounded in time.

PACING
  With --rate, post k of a publisher is due at start + k / (rate / publishers) and carries that due
  time, not the time it was finally written: a server that stalls the publishers (full window)
  shows its stall in the latency instead of hiding it (no coordinated omission). Without --rate
  a post carries the time it was written.";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N connections authenticated and subscribed, held idle: time to ready, server RSS per connection.
    Connect,
    /// S subscribers, P publishers on one server: deliveries/s, latency, exactly-once.
    Fanout,
    /// Many servers and channels, many posters, few subscribers: durable posts/s.
    Ingest,
    /// Connect, AUTH, SUBSCRIBE with a cursor, disconnect, in a loop: handshakes/s.
    Churn,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// chimed's line protocol (JSON lines).
    Chimed,
    /// An IRC server (RFC 1459/2812 client protocol).
    Irc,
    /// Redis pub/sub (RESP).
    Redis,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Chimed => "chimed",
            Target::Irc => "irc",
            Target::Redis => "redis",
        }
    }
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Fanout => "fanout",
            Scenario::Ingest => "ingest",
            Scenario::Churn => "churn",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(name = "flood", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// The workload to run.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The kind of server at --addr.
    #[arg(long, value_enum, default_value_t = Target::Chimed)]
    pub target: Target,

    /// The server's address (loopback only).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub addr: SocketAddr,

    /// Client threads, each with its own poll and its share of the connections.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,

    /// connect: connections to open and hold. churn: concurrent connect/disconnect loops.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,

    /// fanout: subscribers of the server (default 100). ingest: subscribers of every server (default 2).
    #[arg(long)]
    pub subscribers: Option<usize>,

    /// fanout: publishers (default 4). ingest: publishers spread over the channels (default 64).
    #[arg(long)]
    pub publishers: Option<usize>,

    /// Posts per publisher (fanout, ingest).
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,

    /// Bytes per posted message (at least 41: send time, publisher and sequence header; padded).
    #[arg(long, default_value_t = 128)]
    pub size: usize,

    /// Posts a publisher may have sent and not yet had acknowledged.
    #[arg(long, default_value_t = 16)]
    pub window: usize,

    /// Posts per second in total, spread evenly over the publishers; 0: as fast as acknowledged.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// ingest: servers (communities) to create.
    #[arg(long, default_value_t = 8)]
    pub servers: usize,

    /// ingest: text channels per server.
    #[arg(long, default_value_t = 2)]
    pub channels: usize,

    /// chimed: users to REGISTER; their tokens are shared round-robin by the connections.
    #[arg(long, default_value_t = 4)]
    pub users: usize,

    /// Bound on the posting phase (fanout, ingest) or the run (churn), in seconds; posting stops
    /// at the bound even if --messages are not all sent. Default: 60 (churn: 10).
    #[arg(long)]
    pub duration: Option<f64>,

    /// Bound on connecting and handshaking all connections, in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub setup_timeout: f64,

    /// After posting: seconds without any new delivery before the tool stops waiting for the
    /// missing ones (they count as lost).
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,

    /// connect: seconds to hold the connections idle once all are ready.
    #[arg(long, default_value_t = 1.0)]
    pub hold: f64,

    /// The server's pid: its VmRSS (/proc/PID/status) is read before and after connecting.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Connection attempts and handshakes in flight at once (over all threads).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,

    /// churn: stop after this many handshakes in total (0: run for --duration).
    #[arg(long, default_value_t = 0)]
    pub handshakes: u64,

    /// Source addresses 127.0.0.N to spread connections over (0: automatic, one per
    /// --source-threshold connections, none below it).
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,

    /// First source address 127.0.0.N when binding (give separate ranges to parallel flood
    /// processes).
    #[arg(long, default_value_t = 2)]
    pub source_first: u8,

    /// Connections per source address before binding kicks in (automatic mode).
    #[arg(long, default_value_t = 4_000)]
    pub source_threshold: usize,

    /// irc/redis: the channel name (IRC: `#` is prepended).
    #[arg(long, default_value = "flood")]
    pub channel: String,

    /// irc connect: at most this many members per IRC channel (connections go to CHANNEL0,
    /// CHANNEL1, ...); 0: all in one channel. Every IRC JOIN is broadcast to the channel, so
    /// one channel of N members costs the server and the tool O(N^2) lines.
    #[arg(long, default_value_t = 0)]
    pub channel_members: usize,

    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Cli {
    pub fn duration_s(&self) -> f64 {
        self.duration.unwrap_or(match self.scenario {
            Scenario::Churn => 10.0,
            _ => 60.0,
        })
    }

    pub fn subscribers_n(&self) -> usize {
        self.subscribers.unwrap_or(match self.scenario {
            Scenario::Ingest => 2,
            _ => 100,
        })
    }

    pub fn publishers_n(&self) -> usize {
        self.publishers.unwrap_or(match self.scenario {
            Scenario::Ingest => 64,
            _ => 4,
        })
    }

    /// Checks the combination of flags; the error is for the user.
    pub fn validate(&self) -> Result<(), String> {
        if !self.addr.ip().is_loopback() {
            return Err(format!(
                "--addr {} is not a loopback address; flood only targets this machine",
                self.addr
            ));
        }
        if self.threads == 0 || self.threads > 64 {
            return Err("--threads must be 1 to 64".into());
        }
        if self.target != Target::Chimed && matches!(self.scenario, Scenario::Ingest | Scenario::Churn) {
            return Err(format!(
                "the {} scenario is for --target chimed only",
                self.scenario.name()
            ));
        }
        let max_size = match self.target {
            Target::Chimed => 4000,
            Target::Irc => 400,
            Target::Redis => 1 << 20,
        };
        if self.size < HEADER_LEN || self.size > max_size {
            return Err(format!("--size must be {HEADER_LEN} to {max_size} for this target"));
        }
        if self.window == 0 || self.window > 64 {
            return Err("--window must be 1 to 64 (chimed pauses a connection past 64 requests in flight)".into());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err("--rate must be a number >= 0".into());
        }
        if self.users == 0 || self.users > 1000 {
            return Err("--users must be 1 to 1000".into());
        }
        if self.servers == 0 || self.servers > 1000 || self.channels == 0 || self.channels > 100 {
            return Err("--servers must be 1 to 1000 and --channels 1 to 100".into());
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if self.messages == 0 || self.messages > 100_000_000 {
            return Err("--messages must be 1 to 100000000".into());
        }
        if self.publishers_n() > 100_000_000 {
            return Err("too many publishers".into());
        }
        for (name, v) in [
            ("--duration", self.duration_s()),
            ("--setup-timeout", self.setup_timeout),
            ("--drain-timeout", self.drain_timeout),
            ("--hold", self.hold),
        ] {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                return Err(format!("{name} must be 0 to 86400 seconds"));
            }
        }
        if self.source_first == 0 || u16::from(self.source_first) + u16::from(self.source_ips) > 255 {
            return Err("--source-first and --source-ips must keep 127.0.0.N within 1..254".into());
        }
        if self.channel.is_empty()
            || self.channel.len() > 40
            || !self
                .channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("--channel must be 1-40 ASCII letters, digits, '_' or '-'".into());
        }
        Ok(())
    }
}
