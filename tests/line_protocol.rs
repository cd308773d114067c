//! The line protocol (SPEC §2, §3): framing, bad frames and their errors, limits.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{error, ping, success, Client, TestServer};
use serde_json::{json, Value};

#[test]
fn ping_sent_byte_by_byte_is_answered() {
    let srv = TestServer::start();
    let mut c = Client::connect(srv.addr());
    for b in br#"{"action":"PING","id":"slow"}"#.iter().chain(b"\n") {
        c.send_raw(&[*b]);
    }
    let r = c.recv();
    success(&r, "PING");
    assert_eq!(r["id"], "slow");
}

#[test]
fn five_hundred_pings_in_one_write_are_answered_in_order() {
    // Request-rate limits (SPEC §8) are lifted: this is about framing, not rate.
    let srv = TestServer::start_with(&["--rate-limits", "off"], None);
    let mut c = srv.client();
    let mut burst = Vec::new();
    for i in 0..500 {
        burst.extend_from_slice(format!("{{\"action\":\"PING\",\"id\":{i}}}\n").as_bytes());
    }
    c.send_raw(&burst);
    for i in 0..500 {
        let r = c.recv();
        success(&r, "PING");
        assert_eq!(r["id"], json!(i), "answers out of order");
    }
}

/// Sends `line`, checks the error answer, then checks that the connection still works.
fn bad_frame(c: &mut Client, line: &[u8], action: &str, code: &str, id: Option<Value>) {
    let mut bytes = line.to_vec();
    bytes.push(b'\n');
    c.send_raw(&bytes);
    let r = c.recv();
    error(&r, action, code);
    assert_eq!(r.get("id"), id.as_ref(), "id not echoed as expected for {line:?}: {r}");
    ping(c);
}

#[test]
fn invalid_json_gets_bad_request_and_connection_stays_usable() {
    let srv = TestServer::start();
    let mut c = srv.client();
    bad_frame(&mut c, b"{not json", "ERROR", "bad_request", None);
    bad_frame(&mut c, b"hello", "ERROR", "bad_request", None);
    bad_frame(&mut c, br#"{"action":"PING""#, "ERROR", "bad_request", None);
}

#[test]
fn non_object_json_gets_bad_request_and_connection_stays_usable() {
    let srv = TestServer::start();
    let mut c = srv.client();
    bad_frame(&mut c, b"[1]", "ERROR", "bad_request", None);
    bad_frame(&mut c, b"42", "ERROR", "bad_request", None);
    bad_frame(&mut c, br#""PING""#, "ERROR", "bad_request", None);
}

#[test]
fn invalid_utf8_gets_bad_request_and_connection_stays_usable() {
    let srv = TestServer::start();
    let mut c = srv.client();
    bad_frame(&mut c, b"\xff\xfe", "ERROR", "bad_request", None);
    bad_frame(
        &mut c,
        b"{\"action\":\"PING\",\"id\":\"\xc3\x28\"}",
        "ERROR",
        "bad_request",
        None,
    );
}

#[test]
fn non_string_action_gets_bad_request_with_id_echoed() {
    let srv = TestServer::start();
    let mut c = srv.client();
    bad_frame(
        &mut c,
        br#"{"action":5,"id":3}"#,
        "ERROR",
        "bad_request",
        Some(json!(3)),
    );
    bad_frame(
        &mut c,
        br#"{"action":["PING"],"id":"x"}"#,
        "ERROR",
        "bad_request",
        Some(json!("x")),
    );
}

#[test]
fn missing_action_gets_bad_request_with_id_echoed() {
    let srv = TestServer::start();
    let mut c = srv.client();
    bad_frame(&mut c, br#"{"id":4,"data":{}}"#, "ERROR", "bad_request", Some(json!(4)));
    bad_frame(&mut c, b"{}", "ERROR", "bad_request", None);
}

#[test]
fn unknown_action_gets_unknown_action_with_id_echoed() {
    let srv = TestServer::start();
    let mut c = srv.client();
    bad_frame(
        &mut c,
        br#"{"action":"FROB","id":5}"#,
        "FROB_RESPONSE",
        "unknown_action",
        Some(json!(5)),
    );
    bad_frame(
        &mut c,
        br#"{"action":"NO_SUCH_THING","id":"q"}"#,
        "NO_SUCH_THING_RESPONSE",
        "unknown_action",
        Some(json!("q")),
    );
}

#[test]
fn blank_lines_and_crlf_endings_work() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send_raw(b"\n\r\n\n{\"action\":\"PING\",\"id\":1}\r\n\r\n\n{\"action\":\"PING\",\"id\":2}\r\n");
    for id in [1, 2] {
        let r = c.recv();
        success(&r, "PING");
        assert_eq!(r["id"], id);
    }
    ping(&mut c);
}

#[test]
fn frame_over_the_limit_gets_too_large_then_close_while_others_keep_answering() {
    let srv = TestServer::start();
    let mut other = srv.client();
    ping(&mut other);
    let mut c = srv.client();
    let mut line = Vec::with_capacity(2 * 1024 * 1024 + 1);
    line.extend_from_slice(br#"{"action":"PING","data":{"pad":""#);
    line.resize(2 * 1024 * 1024 - 3, b'a');
    line.extend_from_slice(b"\"}}\n");
    // Write from a thread: the server may stop reading once it has seen enough.
    let mut w = TcpStream::try_clone(c.stream()).unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&line);
    });
    let frames = c.expect_closed();
    assert!(!frames.is_empty(), "connection closed without an error frame");
    error(&frames[0], "ERROR", "too_large");
    assert_eq!(
        frames.len(),
        1,
        "more than the error frame before the close: {frames:?}"
    );
    writer.join().unwrap();
    ping(&mut other);
    ping(&mut srv.client());
}

#[test]
fn deeply_nested_line_gets_an_error_and_the_server_keeps_answering() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let mut line = vec![b'['; 200_000];
    line.push(b'\n');
    c.send_raw(&line);
    let r = c.recv();
    error(&r, "ERROR", "bad_request");
    ping(&mut c);
    ping(&mut srv.client());
}

#[test]
fn session_action_without_session_gets_unauthenticated() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let r = c.request("LIST_SERVERS", json!({}));
    error(&r, "LIST_SERVERS_RESPONSE", "unauthenticated");
    let r = c.request("LOGOUT", json!({}));
    error(&r, "LOGOUT_RESPONSE", "unauthenticated");
    ping(&mut c);
}

#[test]
fn lower_case_action_is_accepted() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let r = c.request("ping", json!({}));
    success(&r, "PING");
}

#[test]
fn frames_before_an_oversized_one_in_the_same_write_are_answered_first() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let mut bytes = b"{\"action\":\"PING\",\"id\":1}\n{\"action\":\"PING\",\"id\":2}\n".to_vec();
    bytes.resize(bytes.len() + (1 << 20) + 10, b'x');
    bytes.push(b'\n');
    let mut w = TcpStream::try_clone(c.stream()).unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let frames = c.expect_closed();
    assert_eq!(frames.len(), 3, "two PING answers then the error: {frames:?}");
    assert_eq!(frames[0]["id"], 1);
    assert_eq!(frames[1]["id"], 2);
    error(&frames[2], "ERROR", "too_large");
    writer.join().unwrap();
}

#[test]
fn oversized_partial_line_without_newline_gets_too_large_then_close() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let bytes = vec![b'{'; (1 << 20) + 4096];
    let mut w = TcpStream::try_clone(c.stream()).unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let frames = c.expect_closed();
    assert_eq!(frames.len(), 1, "the error, then the close: {frames:?}");
    error(&frames[0], "ERROR", "too_large");
    writer.join().unwrap();
    ping(&mut srv.client());
}

#[test]
fn half_closed_connection_gets_every_answer_before_the_close() {
    let srv = TestServer::start();
    let mut c = srv.client();
    c.send_raw(b"{\"action\":\"PING\",\"id\":1}\n{\"action\":\"FROB\",\"id\":2}\n{\"action\":\"PING\",\"id\":3}\n");
    c.shutdown_write();
    let frames = c.expect_closed();
    let ids: Vec<&Value> = frames.iter().map(|f| &f["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(2), &json!(3)], "{frames:?}");
}

#[test]
fn id_scalars_are_echoed_and_a_non_scalar_id_is_bad_request() {
    let srv = TestServer::start();
    let mut c = srv.client();
    for id in [json!("abc"), json!(-7), json!(1.5), json!(true)] {
        c.send(&json!({"action": "PING", "id": id}));
        let r = c.recv();
        success(&r, "PING");
        assert_eq!(r["id"], id);
    }
    bad_frame(
        &mut c,
        br#"{"action":"PING","id":{"a":1}}"#,
        "PING_RESPONSE",
        "bad_request",
        None,
    );
    bad_frame(
        &mut c,
        br#"{"action":"PING","id":7,"data":[1]}"#,
        "PING_RESPONSE",
        "bad_request",
        Some(json!(7)),
    );
}
