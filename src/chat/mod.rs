//! The chat domain: accounts, servers, channels, membership, messages and the delta log.
//!
//! `ops` and the modules it calls run on worker threads against storage; `handlers` runs
//! on the loop and turns requests into replies or ops; `fanout` is the loop's live state
//! (subscriptions, the in-memory tail of each server's log).

pub mod accounts;
pub mod budget;
pub mod delta;
pub mod fanout;
pub mod handlers;
pub mod log;
pub mod messages;
pub mod ops;
pub mod roles;
pub mod servers;
pub mod turn;
pub mod voice;
