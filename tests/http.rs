//! HTTP/1.1 on the chat port (SPEC §2, §8): raw requests over real sockets — keep-alive,
//! pipelining, chunked bodies, the API mirror with Bearer tokens, malformed and oversize
//! requests, /healthz and /metrics.

mod common;
#[path = "common/http.rs"]
mod http;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{success, Client, TestServer};
use http::{Http, Response};
use serde_json::json;

/// An HTTP client whose socket is bound to `source` (any 127/8 address is loopback), so
/// the per-address limits see another client.
fn http_from(addr: SocketAddr, source: &str) -> Http {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    Http::from_stream(TcpStream::from(sock))
}

/// Asserts a 429 `rate_limited` answer with `retry_after_ms` and `Retry-After`; returns
/// the wait in milliseconds.
fn assert_rate_limited(r: &Response) -> u64 {
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(
        body["data"]["code"].as_str().or(body["code"].as_str()),
        Some("rate_limited"),
        "{body}"
    );
    let ms = body["data"]["retry_after_ms"]
        .as_u64()
        .or(body["retry_after_ms"].as_u64())
        .expect("retry_after_ms");
    assert!(ms > 0, "retry_after_ms {ms}");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    ms
}

/// A counter's value in the `/metrics` text of a fresh connection.
fn counter(addr: SocketAddr, name: &str) -> u64 {
    let mut h = Http::connect(addr);
    let text = String::from_utf8(h.get("/metrics", None).body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Registers over the line protocol; returns (token, server_id, channel_id) of a new server.
fn owner_with_server(c: &mut Client) -> (String, String, String) {
    let (_, token) = c.register(&common::unique("owner"));
    let (server_id, channel_id) = c.create_server("http");
    (token, server_id, channel_id)
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = TestServer::start();
    let mut h = Http::connect(server.addr());
    for _ in 0..3 {
        let r = h.post("/api/ping/", None, "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        assert_eq!(r.json()["action"], "PING_RESPONSE");
        assert_eq!(r.json()["data"]["status"], "success");
    }
    let r = h.get("/healthz", None);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["storage"], "up");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start();
    let mut h = Http::connect(server.addr());
    let name = common::unique("pipe");
    let body = json!({"username": name, "password": common::PASSWORD}).to_string();
    let mut all = Vec::new();
    all.extend_from_slice(
        format!(
            "POST /api/register/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    all.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    all.extend_from_slice(b"POST /api/ping/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
    all.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    h.send(&all);
    let r1 = h.response();
    assert_eq!(r1.status, 200);
    assert_eq!(r1.json()["data"]["username"], name.as_str());
    let r2 = h.response();
    assert_eq!(r2.status, 404);
    assert_eq!(r2.json()["data"]["code"], "not_found");
    let r3 = h.response();
    assert_eq!(r3.json()["action"], "PING_RESPONSE");
    let r4 = h.response();
    assert_eq!(r4.status, 200);
    assert_eq!(r4.json()["storage"], "up");
}

#[test]
fn chunked_request_body_split_across_writes() {
    let server = TestServer::start();
    let mut h = Http::connect(server.addr());
    let name = common::unique("chunky");
    let body = json!({"username": name, "password": common::PASSWORD}).to_string();
    let (a, b) = body.split_at(10);
    h.send(b"POST /api/register/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    h.send(format!("{:x}\r\n{a}\r\n", a.len()).as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    h.send(format!("{:x};ext=1\r\n{b}\r\n", b.len()).as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    h.send(b"0\r\n\r\n");
    let r = h.response();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["data"]["username"], name.as_str());
    // Still usable afterwards.
    assert_eq!(h.post("/api/ping/", None, "{}").status, 200);
}

#[test]
fn bearer_token_runs_actions_and_posts_reach_line_subscribers() {
    let server = TestServer::start();
    let mut line = server.client();
    let (token, server_id, channel_id) = owner_with_server(&mut line);
    let r = line.request("SUBSCRIBE", json!({"server_id": server_id}));
    success(&r, "SUBSCRIBE");

    let mut h = Http::connect(server.addr());
    // No token, a wrong token: 401 with the SPEC's code.
    let r = h.post("/api/list_servers/", None, "{}");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["data"]["code"], "unauthenticated");
    let r = h.post("/api/list_servers/", Some("not-a-token"), "{}");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["data"]["code"], "unauthenticated");

    let r = h.post("/api/list_servers/", Some(&token), "{}");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["data"]["servers"][0]["server_id"], server_id.as_str());

    // The Chime alias /api/post/ is POST_MESSAGE.
    let body = json!({"channel_id": channel_id, "content": "over http"}).to_string();
    let r = h.post("/api/post/", Some(&token), &body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["action"], "POST_MESSAGE_RESPONSE");
    let delta_id = r.json()["data"]["delta_id"].as_i64().unwrap();

    let push = line.recv();
    assert_eq!(push["action"], "PUBLISH_DELTA");
    assert_eq!(push["data"]["delta"]["content"], "over http");
    assert_eq!(push["data"]["delta"]["delta_id"], delta_id);

    // Errors keep their codes: a channel that does not exist.
    let body = json!({"channel_id": "999999", "content": "x"}).to_string();
    let r = h.post("/api/post_message/", Some(&token), &body);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["data"]["code"], "not_found");

    // Actions that need pushes are refused over plain HTTP.
    let body = json!({"server_id": server_id}).to_string();
    let r = h.post("/api/subscribe/", Some(&token), &body);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["data"]["code"], "bad_request");

    // Not a JSON object.
    let r = h.post("/api/sync/", Some(&token), "[1,2]");
    assert_eq!(r.status, 400);
    let r = h.post("/api/sync/", Some(&token), "{nope");
    assert_eq!(r.status, 400);
    // The connection survived all of it.
    assert_eq!(h.post("/api/ping/", None, "").status, 200);
}

#[test]
fn malformed_requests_get_400_and_the_connection_closes() {
    let server = TestServer::start();
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"[..],
        b"POST /api/ping/ HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /api/ping/ HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
        b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /api/ping/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let mut h = Http::connect(server.addr());
        h.send(bad);
        let r = h.response();
        assert_eq!(r.status, 400, "for {:?}", String::from_utf8_lossy(bad));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(
            h.closed(),
            "connection stays open after {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Unknown methods: 501.
    let mut h = Http::connect(server.addr());
    h.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(h.response().status, 404);
    // Others are unaffected.
    let mut c = server.client();
    common::ping(&mut c);
}

#[test]
fn oversize_heads_and_bodies_are_refused() {
    let server = TestServer::start();
    // A 16 KiB header line: 431.
    let mut h = Http::connect(server.addr());
    let big = format!("GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(16 * 1024));
    h.send(big.as_bytes());
    let r = h.response();
    assert_eq!(r.status, 431);
    assert!(h.closed());
    // Too many header lines: 431.
    let mut h = Http::connect(server.addr());
    let mut many = String::from("GET /healthz HTTP/1.1\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    h.send(many.as_bytes());
    assert_eq!(h.response().status, 431);
    // An API body over the frame limit: 413 before it is read.
    let mut h = Http::connect(server.addr());
    h.send(b"POST /api/ping/ HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n");
    let r = h.response();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["data"]["code"], "too_large");
    // A head that never ends, byte by byte past the limit, is cut off too.
    let mut h = Http::connect(server.addr());
    h.send(b"GET /healthz HTTP/1.1\r\n");
    for _ in 0..10 {
        h.send(format!("X-Slow: {}\r\n", "b".repeat(1000)).as_bytes());
    }
    assert_eq!(h.response().status, 431);
}

#[test]
fn connection_close_and_http_1_0_end_the_connection() {
    let server = TestServer::start();
    let mut h = Http::connect(server.addr());
    h.send(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = h.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(h.closed());

    let mut h = Http::connect(server.addr());
    h.send(b"POST /api/ping/ HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    let r = h.response();
    assert_eq!(r.status, 200);
    assert!(h.closed());
}

#[test]
fn routes_methods_and_head() {
    let server = TestServer::start();
    let mut h = Http::connect(server.addr());
    let r = h.get("/api/ping/", None);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = h.post("/api/no_such_action/", None, "");
    assert_eq!(r.status, 404);
    h.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = h.response_with(true);
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some());
    // The next response starts right after the head: no body was sent for HEAD.
    assert_eq!(h.post("/api/ping/", None, "").status, 200);
    let r = h.get("/ws", None);
    assert_eq!(r.status, 426);
}

#[test]
fn metrics_expose_connections_frames_and_latency() {
    let server = TestServer::start();
    let mut line = server.client();
    let (_token, server_id, channel_id) = owner_with_server(&mut line);
    success(&line.request("SUBSCRIBE", json!({"server_id": server_id})), "SUBSCRIBE");
    let r = line.request("POST_MESSAGE", json!({"channel_id": channel_id, "content": "m"}));
    success(&r, "POST_MESSAGE");

    let mut h = Http::connect(server.addr());
    let r = h.get("/metrics", None);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    for needle in [
        "chimed_connections{protocol=\"line\"} 1",
        "chimed_connections{protocol=\"http\"} 1",
        "chimed_subscriptions 1",
        "# TYPE chimed_frames_in_total counter",
        "# TYPE chimed_frames_out_total counter",
        "chimed_worker_queue_depth ",
        "chimed_storage_errors_total 0",
        "chimed_publish_latency_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    let published: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("chimed_deltas_published_total "))
        .and_then(|v| v.parse().ok())
        .expect("deltas counter");
    assert!(
        published >= 2,
        "server creation and the post published deltas: {published}"
    );
    let frames_in: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("chimed_frames_in_total "))
        .and_then(|v| v.parse().ok())
        .expect("frames in");
    assert!(frames_in >= 4);
}

/// Bad Bearer tokens are failed logins: once the address is throttled, its requests are
/// 429 at once, without a token check on a worker (storage is slow here: each job takes
/// 1.5 s, so an answer in well under that ran none). Another address is not affected.
#[test]
fn bad_bearer_tokens_are_throttled_per_address_without_storage_jobs() {
    let config =
        "login_fail_ip_burst = 3\nlogin_fail_ip_per_min = 0.01\nlogin_burst = 50\ntest_storage_delay_ms = 1500\n";
    let server = TestServer::start_with(&[], Some(config));
    let addr = server.addr();
    let mut line = server.client();
    let (_, token) = line.register(&common::unique("bearer"));

    let mut bad = http_from(addr, "127.0.0.1");
    for i in 0..3 {
        let r = bad.post("/api/list_servers/", Some("not-a-token"), "");
        assert_eq!(r.status, 401, "bad token {i}: {}", String::from_utf8_lossy(&r.body));
    }
    for i in 0..3 {
        let t = Instant::now();
        let r = bad.post("/api/list_servers/", Some("not-a-token"), "");
        let took = t.elapsed();
        assert_rate_limited(&r);
        assert_eq!(r.json()["action"], "AUTH_RESPONSE", "refused as its token check");
        assert!(
            took < Duration::from_millis(1000),
            "throttled request {i} took {took:?}"
        );
    }
    // A file route checks its token the same way.
    let t = Instant::now();
    let r = bad.get("/api/files/download/1", Some("not-a-token"));
    assert_rate_limited(&r);
    assert!(t.elapsed() < Duration::from_millis(1000), "took {:?}", t.elapsed());
    // So does a good token from the throttled address (as LOGIN and AUTH are)...
    let r = bad.post("/api/list_servers/", Some(&token), "");
    assert_rate_limited(&r);
    assert!(counter(addr, "chimed_login_throttled_total") >= 5);
    // ... while another address with a good token is served.
    let mut good = http_from(addr, "127.0.0.2");
    let r = good.post("/api/list_servers/", Some(&token), "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// A Bearer check is charged to the connection's login budget, as AUTH is: bad tokens on
/// one connection run out of it (429 without a token check); a good token's check gives
/// its unit back, so a keep-alive client with a good token is not held to the login rate.
#[test]
fn bearer_checks_are_charged_to_the_login_budget() {
    let config = "login_rate = 0.1\nlogin_burst = 2\nlogin_fail_ip_burst = 100\n";
    let server = TestServer::start_with(&[], Some(config));
    let addr = server.addr();
    let mut line = server.client();
    let (_, token) = line.register(&common::unique("budget"));

    let mut good = Http::connect(addr);
    for i in 0..6 {
        let r = good.post("/api/list_servers/", Some(&token), "");
        assert_eq!(r.status, 200, "good token {i}: {}", String::from_utf8_lossy(&r.body));
    }

    let limited_before = counter(addr, "chimed_rate_limited_total");
    let mut bad = Http::connect(addr);
    for i in 0..2 {
        let r = bad.post("/api/list_servers/", Some("not-a-token"), "");
        assert_eq!(r.status, 401, "bad token {i}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = bad.post("/api/list_servers/", Some("not-a-token"), "");
    let ms = assert_rate_limited(&r);
    assert!(ms > 1000 && ms <= 10_000, "retry_after_ms {ms} (login_rate 0.1/s)");
    let r = bad.post("/api/list_servers/", Some(&token), "");
    assert_rate_limited(&r);
    assert_eq!(counter(addr, "chimed_rate_limited_total"), limited_before + 2);
    // A throttled connection's budget is its own: the good one is still served.
    let r = good.post("/api/list_servers/", Some(&token), "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// `/healthz` (a storage round trip) and `/metrics` each cost one read of the
/// connection's request budget.
#[test]
fn healthz_and_metrics_are_charged_to_the_read_budget() {
    let config = "read_rate = 0.5\nread_burst = 3\n";
    let server = TestServer::start_with(&[], Some(config));
    let mut h = Http::connect(server.addr());
    assert_eq!(h.get("/healthz", None).status, 200);
    assert_eq!(h.get("/metrics", None).status, 200);
    assert_eq!(h.get("/healthz", None).status, 200);
    let r = h.get("/metrics", None);
    let ms = assert_rate_limited(&r);
    assert!(ms <= 2000, "retry_after_ms {ms}");
    assert_rate_limited(&h.get("/healthz", None));
    h.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = h.response_with(true);
    assert_eq!(r.status, 429);
    // The connection stays usable; after the wait it is served again.
    std::thread::sleep(Duration::from_millis(ms + 100));
    let r = h.get("/healthz", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["storage"], "up");
    // Another connection has its own budget.
    assert_eq!(counter(server.addr(), "chimed_rate_limited_total"), 3);
}
