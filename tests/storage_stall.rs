//! SPEC §5 guarantee 4: with storage stalled or down the loop still answers at once,
//! and writes answer `unavailable` within a bounded time.
//!
//! The stalls here come from the `test_storage_delay_ms` hook and run on either backend,
//! except the locked-file test, which is about SQLite and always runs on it.

mod common;

use std::time::{Duration, Instant};

use common::{error, ping_within, sqlite_path, success, unique, Client, TestServer, PASSWORD};
use serde_json::{json, Value};

/// How long a PING may take while storage is stalled.
const PING_BOUND: Duration = Duration::from_secs(1);
/// How long a write may take to answer `unavailable`.
const WRITE_BOUND: Duration = Duration::from_secs(15);

/// Waits for `waiting`'s next frame, PINGing on `other` meanwhile (each PING must answer
/// within [`PING_BOUND`]). Returns the frame, how long it took and how many PINGs ran.
fn await_while_pinging(waiting: &mut Client, other: &mut Client) -> (Value, Duration, usize) {
    let start = Instant::now();
    let mut pings = 0;
    loop {
        ping_within(other, PING_BOUND);
        pings += 1;
        if let Some(frame) = waiting.poll(Duration::from_millis(100)) {
            return (frame, start.elapsed(), pings);
        }
        assert!(
            start.elapsed() < WRITE_BOUND,
            "no answer within {WRITE_BOUND:?} while storage is stalled"
        );
    }
}

#[test]
fn stalled_storage_register_answers_unavailable_while_ping_answers_at_once() {
    let srv = TestServer::start_with(&[], Some("test_storage_delay_ms = 3000\nstorage_timeout_ms = 1000\n"));
    let mut a = srv.client();
    let mut b = srv.client();
    a.send(&json!({"action": "REGISTER", "id": 1, "data": {"username": unique("stall"), "password": PASSWORD}}));
    let (r, took, pings) = await_while_pinging(&mut a, &mut b);
    assert_eq!(r["id"], 1);
    error(&r, "REGISTER_RESPONSE", "unavailable");
    assert!(took < WRITE_BOUND, "REGISTER took {took:?}");
    assert!(pings >= 1);
}

#[test]
fn locked_sqlite_register_answers_unavailable_while_ping_answers_then_succeeds_after_unlock() {
    // SQLite whatever CHIMED_TEST_BACKEND says: this test locks the server's SQLite file.
    // The MySQL counterpart (a real database stopped and restarted) is tests/mysql_outage.rs.
    let srv = TestServer::start_sqlite_with(&[], Some("storage_timeout_ms = 1000\n"));
    let mut a = srv.client();
    let mut b = srv.client();
    common::ping(&mut a);

    // Hold the database's write lock from outside the server.
    let lock = rusqlite::Connection::open(sqlite_path(srv.dir())).expect("open the server's SQLite file");
    lock.execute_batch(
        "BEGIN EXCLUSIVE; CREATE TABLE IF NOT EXISTS test_lock (x INTEGER); INSERT INTO test_lock VALUES (1);",
    )
    .expect("take the write lock");

    let name = unique("locked");
    a.send(&json!({"action": "REGISTER", "id": 1, "data": {"username": name, "password": PASSWORD}}));
    let (r, took, _) = await_while_pinging(&mut a, &mut b);
    assert_eq!(r["id"], 1);
    error(&r, "REGISTER_RESPONSE", "unavailable");
    assert!(took < WRITE_BOUND, "REGISTER took {took:?}");

    lock.execute_batch("ROLLBACK").expect("release the write lock");
    drop(lock);

    // Nothing was written: the same name registers now.
    let r = a.request("REGISTER", json!({"username": name, "password": PASSWORD}));
    success(&r, "REGISTER");
}

#[test]
fn stalled_storage_frames_pipelined_behind_a_register_are_answered_after_it() {
    let srv = TestServer::start_with(&[], Some("test_storage_delay_ms = 3000\nstorage_timeout_ms = 1000\n"));
    let mut a = srv.client();
    let mut b = srv.client();
    let frames = format!(
        "{}\n{}\n{}\n",
        json!({"action": "REGISTER", "id": 1, "data": {"username": unique("pipe"), "password": PASSWORD}}),
        json!({"action": "PING", "id": 2}),
        json!({"action": "LIST_SERVERS", "id": 3}),
    );
    a.send_raw(frames.as_bytes());
    let (r, _, _) = await_while_pinging(&mut a, &mut b);
    assert_eq!(r["id"], 1);
    error(&r, "REGISTER_RESPONSE", "unavailable");
    let r = a.recv();
    assert_eq!(r["id"], 2);
    success(&r, "PING");
    let r = a.recv();
    assert_eq!(r["id"], 3);
    error(&r, "LIST_SERVERS_RESPONSE", "unauthenticated");
}
