//! Configuration: every limit with its default and the reason for it.
//!
//! Precedence: built-in defaults, then the TOML file given with `--config`, then
//! command-line flags. The SPEC §8 flags always work.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Command-line flags. Each one overrides the config file.
#[derive(Debug, Parser, Default)]
#[command(name = "chimed", version, about = "A self-hosted chat server daemon")]
pub struct Args {
    /// Address to listen on (`127.0.0.1:0` picks a free port; the ready log line names it).
    #[arg(long)]
    pub listen: Option<String>,
    /// Storage URL: `sqlite://PATH` (default `sqlite://chimed.db`) or `mysql://USER:PASS@HOST:PORT/DB`.
    #[arg(long)]
    pub db: Option<String>,
    /// Directory for uploaded files.
    #[arg(long)]
    pub files_dir: Option<PathBuf>,
    /// Worker threads (at least 2: one writer plus readers/hashers).
    #[arg(long)]
    pub workers: Option<usize>,
    /// TOML config file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `off` lifts request-rate limits and the per-IP connection limit (load tests on loopback).
    #[arg(long, value_parser = ["on", "off"])]
    pub rate_limits: Option<String>,
    /// Global connection limit (0: derived from the open-files limit).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections per client address (IPv6: per /64); 0: no per-address limit.
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// Seconds without a frame (PING and WebSocket pings count) before a connection is
    /// closed; 0: never.
    #[arg(long)]
    pub idle_timeout_s: Option<u64>,
    /// Seconds a new connection has to send its first frame (HTTP: its complete head), and
    /// an HTTP request body to bring each next 1 KiB (else it is cut).
    #[arg(long)]
    pub handshake_timeout_s: Option<u64>,
    /// Largest frame in bytes.
    #[arg(long)]
    pub max_frame_bytes: Option<usize>,
    /// Per-connection output buffer in bytes (slow-consumer threshold).
    #[arg(long)]
    pub max_output_bytes: Option<usize>,
    /// Deltas per partition of a server's log.
    #[arg(long)]
    pub partition_size: Option<u64>,
}

/// The effective configuration. Field docs give the default and why.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `127.0.0.1:7700`: loopback unless the operator opts in to exposure.
    pub listen: String,
    /// `sqlite://chimed.db`: one-command start with no database server.
    pub db: String,
    /// `files`: content-addressed upload store.
    pub files_dir: PathBuf,
    /// 4: one writer (group commit) and three readers; Argon2 runs on the readers.
    pub workers: usize,
    /// true. `false` is for load tests on loopback.
    pub rate_limits: bool,
    /// 0 = the open-files limit minus a reserve for storage and files.
    pub max_connections: usize,
    /// 64: a household behind one NAT fits; a single host cannot take every slot. IPv6
    /// addresses count per /64 (one host can pick any address in its /64). 0: no limit;
    /// `rate_limits = false` lifts it too.
    pub max_connections_per_ip: usize,
    /// 50 reads/s per connection (queries, SUBSCRIBE, SYNC, PING, HTTP file downloads and
    /// backups): no client needs more.
    pub read_rate: f64,
    /// 200 reads at once: a reconnect syncs every server and lists channels in one go.
    pub read_burst: u32,
    /// 10 writes/s per connection (posts, edits, typing, call signals, file uploads): more
    /// than a person types, enough for a bridge bot; `rate_limits = false` for load tests.
    pub write_rate: f64,
    /// 50 writes at once: a paste of short lines, a client flushing its offline queue.
    pub write_burst: u32,
    /// 0.5 logins/s per connection (REGISTER, LOGIN, AUTH): each may cost an Argon2 hash.
    pub login_rate: f64,
    /// 5 logins at once: a typo or two, then AUTH.
    pub login_burst: u32,
    /// 50: rejected requests a connection may collect within `flood_window_s` (refilling
    /// evenly) before it is disconnected as a flooder.
    pub flood_disconnect_after: u32,
    /// 10 s: the window of `flood_disconnect_after`.
    pub flood_window_s: u64,
    /// 300 s: a connection that sends no frame for this long is closed (PING counts, and so
    /// do WebSocket pings and pongs; clients ping every 30-60 s). 0: never.
    pub idle_timeout_s: u64,
    /// 30 s: a new connection that sends nothing, or whose first line or HTTP request head
    /// is not complete within this time, is closed (slowloris). Generous for `nc` by hand.
    /// Also the HTTP request-body timeout: a body (API call or upload) that brings less
    /// than 1 KiB in this time, not counting time the server holds it up, is cut.
    pub handshake_timeout_s: u64,
    /// 20: failed logins (and failed AUTHs) from one address (IPv6: /64) before its
    /// attempts are refused with `rate_limited`. Not reset by a success. 0: no address
    /// throttle. Stays on with `rate_limits = false` (it only reacts to failures).
    pub login_fail_ip_burst: u32,
    /// 2 failures forgiven per minute per address.
    pub login_fail_ip_per_min: f64,
    /// 5 failed logins of one account before its delay starts: 1 s, then doubling.
    pub login_fail_account_free: u32,
    /// 60 s: cap of an account's delay; reset by a successful login. Low, so failing on
    /// purpose cannot lock a victim out for long. 0: no account throttle.
    pub login_fail_account_max_delay_s: u64,
    /// 1 MiB (SPEC §2).
    pub max_frame_bytes: usize,
    /// 1 MiB: past this a subscriber stops getting live deltas (and its input is not read).
    pub max_output_bytes: usize,
    /// 30 s: a subscriber that stays over its output limit this long is disconnected.
    pub slow_consumer_timeout_ms: u64,
    /// 64: requests of one connection waiting on storage; more pauses its reads.
    pub max_inflight_per_conn: usize,
    /// 8192: jobs queued for the workers; a full queue answers `unavailable` at once.
    pub job_queue: usize,
    /// 5 s: a storage job not started or not committed in this time answers `unavailable`.
    pub storage_timeout_ms: u64,
    /// 30 days.
    pub token_ttl_s: u64,
    /// 10,000 deltas per partition (SPEC §5).
    pub partition_size: u64,
    /// 4096 recent deltas per server kept in memory, so most catch-ups skip storage.
    pub delta_tail: usize,
    /// 500 deltas per catch-up page read from storage.
    pub catchup_page: usize,
    /// 512: writes committed in one transaction at most (group commit).
    pub max_batch: usize,
    /// 2000 deltas/s per user for RESTORE_HISTORY and backups (SPEC §5); shrinks under load.
    pub history_rate: f64,
    /// 10,000 deltas: the most one user may read back at once before the rate applies.
    pub history_burst: f64,
    /// TURN REST API shared secret (as in coturn's `static-auth-secret`); unset: no TURN.
    pub turn_secret: Option<String>,
    /// TURN server URIs handed to clients, e.g. `turn:turn.example.org:3478`.
    pub turn_uris: Vec<String>,
    /// 24 h: lifetime of TURN credentials.
    pub turn_ttl_s: u64,
    /// 3600 s: an unreferenced blob or a temp file of no live upload is removed once it is
    /// this old. A blob's row is committed within about `storage_timeout_ms` of the blob, so
    /// any margin works; an hour leaves room for clock steps. At least 60 and at least twice
    /// the storage timeout.
    pub file_gc_grace_s: u64,
    /// 3600 s: how often the orphan sweep runs (on a worker thread of its own; the first at
    /// start). 0: never.
    pub file_gc_interval_s: u64,
    /// Test hook: every storage job first sleeps this long (simulates a stalled database).
    pub test_storage_delay_ms: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:7700".into(),
            db: "sqlite://chimed.db".into(),
            files_dir: PathBuf::from("files"),
            workers: 4,
            rate_limits: true,
            max_connections: 0,
            max_connections_per_ip: 64,
            read_rate: 50.0,
            read_burst: 200,
            write_rate: 10.0,
            write_burst: 50,
            login_rate: 0.5,
            login_burst: 5,
            flood_disconnect_after: 50,
            flood_window_s: 10,
            idle_timeout_s: 300,
            handshake_timeout_s: 30,
            login_fail_ip_burst: 20,
            login_fail_ip_per_min: 2.0,
            login_fail_account_free: 5,
            login_fail_account_max_delay_s: 60,
            max_frame_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
            slow_consumer_timeout_ms: 30_000,
            max_inflight_per_conn: 64,
            job_queue: 8192,
            storage_timeout_ms: 5_000,
            token_ttl_s: 30 * 24 * 3600,
            partition_size: 10_000,
            delta_tail: 4096,
            catchup_page: 500,
            max_batch: 512,
            history_rate: 2000.0,
            history_burst: 10_000.0,
            turn_secret: None,
            turn_uris: Vec::new(),
            turn_ttl_s: 24 * 3600,
            file_gc_grace_s: 3600,
            file_gc_interval_s: 3600,
            test_storage_delay_ms: 0,
        }
    }
}

/// Why the configuration could not be built.
#[derive(Debug)]
pub enum ConfigError {
    Read(PathBuf, std::io::Error),
    Parse(PathBuf, toml::de::Error),
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Read(p, e) => write!(f, "cannot read {}: {e}", p.display()),
            ConfigError::Parse(p, e) => write!(f, "cannot parse {}: {e}", p.display()),
            ConfigError::Invalid(m) => write!(f, "invalid configuration: {m}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Defaults, then the config file, then the flags.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let mut cfg = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.clone(), e))?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse(path.clone(), e))?
            }
            None => Config::default(),
        };
        if let Some(v) = &args.listen {
            cfg.listen = v.clone();
        }
        if let Some(v) = &args.db {
            cfg.db = v.clone();
        }
        if let Some(v) = &args.files_dir {
            cfg.files_dir = v.clone();
        }
        if let Some(v) = args.workers {
            cfg.workers = v;
        }
        if let Some(v) = &args.rate_limits {
            cfg.rate_limits = v == "on";
        }
        if let Some(v) = args.max_connections {
            cfg.max_connections = v;
        }
        if let Some(v) = args.max_connections_per_ip {
            cfg.max_connections_per_ip = v;
        }
        if let Some(v) = args.idle_timeout_s {
            cfg.idle_timeout_s = v;
        }
        if let Some(v) = args.handshake_timeout_s {
            cfg.handshake_timeout_s = v;
        }
        if let Some(v) = args.max_frame_bytes {
            cfg.max_frame_bytes = v;
        }
        if let Some(v) = args.max_output_bytes {
            cfg.max_output_bytes = v;
        }
        if let Some(v) = args.partition_size {
            cfg.partition_size = v;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.workers < 2 {
            return bad("workers must be at least 2 (one writer, one reader)");
        }
        if self.max_frame_bytes < 1024 {
            return bad("max_frame_bytes must be at least 1024");
        }
        if self.max_output_bytes < 64 * 1024 {
            return bad("max_output_bytes must be at least 65536");
        }
        if self.partition_size == 0 || self.delta_tail == 0 || self.catchup_page == 0 || self.max_batch == 0 {
            return bad("partition_size, delta_tail, catchup_page and max_batch must be positive");
        }
        if self.job_queue == 0 || self.max_inflight_per_conn == 0 {
            return bad("job_queue and max_inflight_per_conn must be positive");
        }
        for (name, rate) in [
            ("read_rate", self.read_rate),
            ("write_rate", self.write_rate),
            ("login_rate", self.login_rate),
            ("login_fail_ip_per_min", self.login_fail_ip_per_min),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::Invalid(format!("{name} must be a positive number")));
            }
        }
        if self.read_burst == 0 || self.write_burst == 0 || self.login_burst == 0 {
            return bad("read_burst, write_burst and login_burst must be at least 1");
        }
        if self.flood_disconnect_after == 0 || self.flood_window_s == 0 {
            return bad("flood_disconnect_after and flood_window_s must be positive");
        }
        if self.handshake_timeout_s == 0 {
            return bad("handshake_timeout_s must be at least 1");
        }
        // Younger blobs may be uploads whose row is not committed yet.
        if self.file_gc_grace_s < 60
            || self.file_gc_grace_s.saturating_mul(1000) < self.storage_timeout_ms.saturating_mul(2)
        {
            return bad("file_gc_grace_s must be at least 60 and at least twice storage_timeout_ms");
        }
        Ok(())
    }

    pub fn storage_timeout(&self) -> Duration {
        Duration::from_millis(self.storage_timeout_ms)
    }

    /// `idle_timeout_s` as a duration; `None` when idle connections are never closed.
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_s > 0).then(|| Duration::from_secs(self.idle_timeout_s))
    }

    /// `handshake_timeout_s` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_s)
    }

    /// The orphan sweep's schedule; `None` when it never runs.
    pub fn file_gc(&self) -> Option<crate::files::SweepSchedule> {
        (self.file_gc_interval_s > 0).then(|| crate::files::SweepSchedule {
            grace: Duration::from_secs(self.file_gc_grace_s),
            every: Duration::from_secs(self.file_gc_interval_s),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("chimed-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9\"\nworkers = 3\nrate_limits = false\n").unwrap();
        let args = Args {
            config: Some(path.clone()),
            workers: Some(5),
            ..Args::default()
        };
        let cfg = Config::load(&args).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9");
        assert_eq!(cfg.workers, 5);
        assert!(!cfg.rate_limits);
        assert_eq!(cfg.db, "sqlite://chimed.db");
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(matches!(Config::load(&args), Err(ConfigError::Parse(..))));
        let args = Args {
            workers: Some(1),
            ..Args::default()
        };
        assert!(matches!(Config::load(&args), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn limit_flags_override_and_bad_limits_are_refused() {
        let args = Args::try_parse_from([
            "chimed",
            "--max-connections-per-ip",
            "3",
            "--idle-timeout-s",
            "0",
            "--handshake-timeout-s",
            "2",
            "--rate-limits",
            "off",
        ])
        .unwrap();
        let cfg = Config::load(&args).unwrap();
        assert_eq!(cfg.max_connections_per_ip, 3);
        assert_eq!(cfg.idle_timeout(), None);
        assert_eq!(cfg.handshake_timeout(), Duration::from_secs(2));
        assert!(!cfg.rate_limits);
        assert_eq!(Config::default().idle_timeout(), Some(Duration::from_secs(300)));

        let invalid = |text: &str| -> bool {
            let cfg: Config = toml::from_str(text).unwrap();
            matches!(cfg.validate(), Err(ConfigError::Invalid(_)))
        };
        assert!(!invalid(""));
        assert!(invalid("write_rate = 0.0"));
        assert!(invalid("read_rate = -1.0"));
        assert!(invalid("login_rate = nan"));
        assert!(invalid("login_fail_ip_per_min = inf"));
        assert!(invalid("read_burst = 0"));
        assert!(invalid("flood_disconnect_after = 0"));
        assert!(invalid("flood_window_s = 0"));
        assert!(invalid("handshake_timeout_s = 0"));
        assert!(invalid("file_gc_grace_s = 59"));
        assert!(invalid("file_gc_grace_s = 60\nstorage_timeout_ms = 30001"));
        assert!(!invalid(
            "file_gc_grace_s = 60\nstorage_timeout_ms = 30000\nfile_gc_interval_s = 0"
        ));
        assert_eq!(
            toml::from_str::<Config>("file_gc_interval_s = 0").unwrap().file_gc(),
            None
        );
        assert!(!invalid(
            "idle_timeout_s = 0\nmax_connections_per_ip = 0\nlogin_fail_ip_burst = 0"
        ));
    }
}
