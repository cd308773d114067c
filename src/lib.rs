//! chimed: a chat server daemon.
//!
//! # Threads
//! - The **poll loop** (`server`): one thread owns every client socket, a `slab` of
//!   [`conn::Conn`]s. It never blocks: no storage call, hash, fsync or sleep runs on it.
//! - The **worker pool** (`workers`): reader threads run queries and Argon2; one writer
//!   thread commits writes in batches (group commit). Results come back over a channel
//!   and wake the loop through a `mio::Waker`. A janitor thread sweeps orphan files.
//!
//! # Tokens
//! Connection tokens are slab keys; `LISTENER`, `WAKER` and `SIGNALS` sit at the top of
//! the `usize` range (`token`). Work returning from a worker names its connection by key
//! plus generation ([`token::ConnId`]) and is dropped if the slot was reused.
//!
//! # Layers
//! `wire` cuts frames out of byte streams, `protocol` decodes and encodes them, `chat`
//! gives actions their meaning (handlers on the loop, ops on the workers), `store` runs
//! SQL on a backend. `limits` (admission, per-connection rate budgets, failed-login
//! throttle) and `daemon` (open-files limit, sd_notify) are pure helpers: the clock and the
//! addresses are passed in, and the loop and `main` apply what they decide. See
//! docs/ARCHITECTURE.md for the life of a request.

pub mod chat;
pub mod config;
pub mod conn;
pub mod daemon;
pub mod files;
pub mod limits;
pub mod protocol;
pub mod server;
pub mod store;
#[cfg(test)]
pub(crate) mod testkit;
pub mod time;
pub mod token;
pub mod wire;
pub mod workers;
