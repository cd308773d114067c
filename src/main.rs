//! The `chimed` binary: flags and config, logging, storage migration, then the loop.

use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};

use chimed::config::{Args, Config};
use chimed::daemon;
use chimed::server::Server;

/// mimalloc instead of glibc malloc: the writer allocates what the finisher and the loop
/// free, and glibc serialises such cross-thread frees on the allocating arena's lock.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cfg = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let nofile = match daemon::raise_nofile_limit() {
        Ok((soft, hard)) => {
            info!("open files limit: {soft} (hard limit {hard})");
            soft
        }
        Err(e) => {
            warn!("cannot read the open files limit ({e}); assuming 1024");
            1024
        }
    };
    let max_conns = if cfg.max_connections > 0 {
        cfg.max_connections
    } else {
        nofile.saturating_sub(128).max(16) as usize
    };
    match chimed::store::migrate(&cfg.db, cfg.storage_timeout()) {
        Ok(v) => info!("storage ready: schema version {v}"),
        Err(e) => {
            error!("cannot prepare storage {}: {e}", cfg.db);
            return ExitCode::from(1);
        }
    }
    let mut server = match Server::bind(cfg, max_conns) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    server.reload_from(args); // SIGHUP re-reads the config file and flags: new limits
                              // READY=1 for systemd (Type=notify): listening and storage migrated. A no-op without
                              // $NOTIFY_SOCKET.
    if let Err(e) = daemon::ready().and_then(|_| daemon::status(&format!("listening on {}", server.local_addr()))) {
        warn!("sd_notify: {e}");
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("poll loop failed: {e}");
            ExitCode::from(1)
        }
    }
}
