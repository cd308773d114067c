//! The `chimed` binary: flags and config, logging, storage migration, then the loop.

use std::process::ExitCode;

use clap::Parser;
use log::{error, info};

use chimed::config::{Args, Config};
use chimed::server::Server;

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
    let nofile = raise_nofile_limit();
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
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("poll loop failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// Raises the soft open-files limit to the hard limit; returns the limit in force.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    info!("open files limit: {}", lim.rlim_cur);
    lim.rlim_cur
}
