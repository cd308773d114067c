//! Issue 7 over real sockets: admission (per-IP and global), request-rate limits and the
//! flooder's disconnect, idle and handshake (slowloris) timeouts, a reconnect storm that
//! leaks no connection state, and SIGTERM during a posting flood.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{error, ping_within, success, Client, TestServer};
use serde_json::{json, Value};

/// Bound for "is answered promptly" on a debug build on a busy machine.
const PROMPT: Duration = Duration::from_secs(2);
/// Bound for "is closed by a 1 s timeout".
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// A line client whose socket is bound to `source` (any 127/8 address is loopback).
fn connect_from(addr: SocketAddr, source: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads lines until EOF (or a reset) within `bound`; panics if the connection stays open.
fn frames_until_closed(s: &mut TcpStream, bound: Duration) -> Vec<Value> {
    let deadline = Instant::now() + bound;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!(
                "still open after {bound:?} ({e}); got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    buf.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

/// Closes our side of `s` and waits (bounded) until the server's kernel has acknowledged
/// the FIN, i.e. the close is queued on the server's socket and its poll reports it no
/// later than anything we send afterwards. A plain `drop` is not enough before a
/// reconnect that must be admitted: `close` may return before loopback has delivered the
/// FIN (the kernel defers that work under load), and a connection opened right after can
/// then reach the server first, while the closed one rightly still holds its slot.
fn close_delivered(s: &TcpStream) {
    // `tcpi_state` values (include/net/tcp_states.h): our FIN is acknowledged in
    // FIN_WAIT2, TIME_WAIT (the server closed too) and CLOSE.
    const ACKED: [u8; 3] = [5, 6, 7];
    s.shutdown(Shutdown::Write).unwrap();
    let deadline = Instant::now() + PROMPT;
    loop {
        // SAFETY: getsockopt(TCP_INFO) writes at most `len` bytes into `info`.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        if ACKED.contains(&info.tcpi_state) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "our FIN was not acknowledged within {PROMPT:?} (TCP state {})",
            info.tcpi_state
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ping_raw(s: &mut TcpStream) -> Value {
    s.write_all(b"{\"action\":\"PING\",\"id\":1}\n").unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while s.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    serde_json::from_slice(&line).unwrap()
}

fn assert_refused(frames: &[Value], needle: &str) {
    assert_eq!(frames.len(), 1, "one error frame, then close: {frames:?}");
    let msg = error(&frames[0], "ERROR", "unavailable");
    assert!(msg.contains(needle), "{msg}");
}

/// The sum of the `chimed_connections{protocol=...}` gauges, from a fresh HTTP connection
/// (itself not counted), and the whole exposition.
fn connection_gauge(addr: SocketAddr) -> (usize, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let sum: usize = text
        .lines()
        .filter(|l| l.starts_with("chimed_connections{protocol="))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum();
    (sum.saturating_sub(1), text) // our own HTTP connection
}

#[test]
fn per_ip_limit_refuses_with_an_error_frame_and_serves_other_addresses() {
    let srv = TestServer::start_with(&["--max-connections-per-ip", "3"], None);
    let addr = srv.addr();
    let mut held: Vec<Client> = (0..3).map(|_| srv.client()).collect();
    for c in &mut held {
        ping_within(c, PROMPT);
    }
    let mut fourth = connect_from(addr, "127.0.0.1");
    assert_refused(&frames_until_closed(&mut fourth, CLOSED_WITHIN), "your address");
    // Another address is served, and so are the three already in.
    let mut other = connect_from(addr, "127.0.0.2");
    success(&ping_raw(&mut other), "PING");
    for c in &mut held {
        ping_within(c, PROMPT);
    }
    // A slot freed by a close is given to the very next connection from that address
    // (no retry): once the close has reached the server, it is reaped before the next
    // connection is accepted, even when both are reported in one poll.
    let gone = held.pop().unwrap();
    close_delivered(gone.stream());
    drop(gone);
    let mut again = connect_from(addr, "127.0.0.1");
    success(&ping_raw(&mut again), "PING");
    close_delivered(&again);
    drop(again);
    // Two held: this connection from 127.0.0.1 is the third, admitted only because
    // `again`'s close is reaped first.
    let (_, metrics) = connection_gauge(addr);
    assert!(
        metrics.contains("chimed_connections_refused_total{reason=\"per_ip\"} "),
        "{metrics}"
    );
    assert!(!metrics.contains("chimed_connections_refused_total{reason=\"per_ip\"} 0\n"));
}

#[test]
fn global_limit_refuses_with_an_error_frame_and_keeps_serving() {
    let srv = TestServer::start_with(&["--max-connections", "3"], None);
    let addr = srv.addr();
    let mut held: Vec<Client> = (0..3).map(|_| srv.client()).collect();
    for c in &mut held {
        ping_within(c, PROMPT);
    }
    for _ in 0..3 {
        let mut extra = connect_from(addr, "127.0.0.3");
        assert_refused(&frames_until_closed(&mut extra, CLOSED_WITHIN), "server full");
    }
    for c in &mut held {
        ping_within(c, PROMPT);
    }
    // A close frees its slot for the very next connection, whatever its address.
    let gone = held.pop().unwrap();
    close_delivered(gone.stream());
    drop(gone);
    let mut again = connect_from(addr, "127.0.0.4");
    success(&ping_raw(&mut again), "PING");
}

/// Stops (SIGSTOP) or continues (SIGCONT) the server process; a stop is waited for.
fn stop_server(srv: &TestServer, stop: bool) {
    let pid = srv.pid();
    let sig = if stop { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    if !stop {
        return;
    }
    let deadline = Instant::now() + PROMPT;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // `pid (comm) S ...`: the state follows the last `)`.
        if stat.rsplit(')').next().unwrap().trim_start().starts_with('T') {
            return;
        }
        assert!(Instant::now() < deadline, "the server did not stop: {stat}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A client at its limit that closes a connection and at once opens another is admitted.
/// The server is stopped meanwhile, so it sees the close and the new connection in one
/// poll: it used to accept (and refuse) before reaping the close it had just read.
#[test]
fn a_close_then_a_reconnect_seen_in_one_poll_is_admitted() {
    const CYCLES: usize = 20;
    for limit in [["--max-connections-per-ip", "2"], ["--max-connections", "2"]] {
        let srv = TestServer::start_with(&limit, None);
        let addr = srv.addr();
        let mut held = srv.client();
        ping_within(&mut held, PROMPT);
        let mut conn = connect_from(addr, "127.0.0.1");
        success(&ping_raw(&mut conn), "PING");
        for cycle in 0..CYCLES {
            stop_server(&srv, true);
            close_delivered(&conn);
            drop(conn);
            conn = connect_from(addr, "127.0.0.1"); // the kernel completes the handshake
            stop_server(&srv, false);
            let r = ping_raw(&mut conn);
            assert_eq!(
                r["action"], "PING_RESPONSE",
                "{limit:?}: reconnect {cycle} after a close was refused: {r}"
            );
            success(&r, "PING");
        }
        ping_within(&mut held, PROMPT);
    }
}

/// Pipelines `batch` on `flooder` from another thread while `normal` gets `pings` PINGs
/// answered promptly; returns what the flooder read before the server closed it.
fn flood_until_closed(flooder: &mut Client, batch: Vec<u8>, normal: &mut Client, pings: usize) -> Vec<Value> {
    let mut w = flooder.stream().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&batch); // the server may close before taking it all
    });
    for _ in 0..pings {
        ping_within(normal, PROMPT);
    }
    flooder.set_timeout(CLOSED_WITHIN);
    let frames = flooder.expect_closed();
    writer.join().unwrap();
    frames
}

#[test]
fn over_budget_is_rate_limited_with_retry_after_and_a_flooder_is_cut_off() {
    let config = "write_rate = 5.0\nwrite_burst = 5\nflood_disconnect_after = 10\nflood_window_s = 10\n";
    let srv = TestServer::start_with(&[], Some(config));
    let addr = srv.addr();
    let mut owner = srv.client();
    let (_, token) = owner.register(&common::unique("own"));
    let created = owner.request("CREATE_SERVER", json!({"name": "rl"}));
    let channel_id = created["data"]["channel_id"].as_str().unwrap().to_string();
    let post = |id: usize| json!({"action": "POST_MESSAGE", "id": id, "data": {"channel_id": channel_id, "content": format!("m{id}")}});

    // A polite client: over its burst it is told how long to wait, and then served.
    let mut polite = Client::connect(addr);
    success(&polite.request("AUTH", json!({"token": token})), "AUTH");
    let mut retry = None;
    for _ in 0..6 {
        let r = polite.request("POST_MESSAGE", json!({"channel_id": channel_id, "content": "hi"}));
        if r["data"]["status"] == "error" {
            error(&r, "POST_MESSAGE_RESPONSE", "rate_limited");
            retry = r["data"]["retry_after_ms"].as_u64();
        }
    }
    let ms = retry.expect("the sixth post within the burst of 5 is rate limited");
    assert!(ms > 0 && ms <= 1000, "retry_after_ms {ms}");
    std::thread::sleep(Duration::from_millis(ms + 50));
    let r = polite.request("POST_MESSAGE", json!({"channel_id": channel_id, "content": "again"}));
    success(&r, "POST_MESSAGE");

    // A flooder pipelines 500 posts; a normal client keeps its latency meanwhile.
    let mut flooder = Client::connect(addr);
    success(&flooder.request("AUTH", json!({"token": token})), "AUTH");
    let mut normal = srv.client();
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend_from_slice(post(100 + i).to_string().as_bytes());
        batch.push(b'\n');
    }
    let frames = flood_until_closed(&mut flooder, batch, &mut normal, 5);
    let ok = frames.iter().filter(|f| f["data"]["status"] == "success").count();
    let limited = frames.iter().filter(|f| f["data"]["code"] == "rate_limited").count();
    assert!(ok <= 5, "{ok} posts got through a burst of 5");
    assert!(
        (10..=11).contains(&limited),
        "{limited} rejections before the disconnect (10 strikes)"
    );
    assert_eq!(ok + limited, frames.len(), "{frames:?}");
    ping_within(&mut normal, PROMPT);
    let (_, metrics) = connection_gauge(addr);
    assert!(metrics.contains("chimed_flood_disconnects_total 1\n"), "{metrics}");
}

/// Unreadable and unknown frames cost a read like any request: a client streaming garbage
/// is told to slow down and then cut off, while others are served.
#[test]
fn a_garbage_flood_is_rate_limited_and_cut_off() {
    let config = "read_rate = 5.0\nread_burst = 5\nflood_disconnect_after = 10\nflood_window_s = 10\n";
    let srv = TestServer::start_with(&[], Some(config));
    let mut normal = srv.client();
    let mut flooder = Client::connect(srv.addr());
    let mut batch = Vec::new();
    for i in 0..300 {
        let line = match i % 3 {
            0 => "not json".to_string(),
            1 => format!(r#"{{"action":"NO_SUCH_ACTION","id":{i}}}"#),
            _ => "[1,2,3]".to_string(),
        };
        batch.extend_from_slice(line.as_bytes());
        batch.push(b'\n');
    }
    // One PING during the flood: the normal client's read budget (burst 5) also pays for
    // the PING after it.
    let frames = flood_until_closed(&mut flooder, batch, &mut normal, 1);
    let limited = frames.iter().filter(|f| f["data"]["code"] == "rate_limited").count();
    let refused = frames
        .iter()
        .filter(|f| f["data"]["code"] == "bad_request" || f["data"]["code"] == "unknown_action")
        .count();
    assert!(refused <= 5, "{refused} garbage frames answered past a burst of 5");
    assert!(
        (10..=11).contains(&limited),
        "{limited} rejections before the disconnect"
    );
    assert_eq!(refused + limited, frames.len(), "{frames:?}");
    ping_within(&mut normal, PROMPT);
    let (_, metrics) = connection_gauge(srv.addr());
    assert!(metrics.contains("chimed_flood_disconnects_total 1\n"), "{metrics}");
}

#[test]
fn idle_connections_are_closed_and_ping_keeps_one_alive() {
    let srv = TestServer::start_with(&["--idle-timeout-s", "1"], None);
    let mut idle = srv.client();
    let mut busy = srv.client();
    common::ping(&mut idle);
    let t = Instant::now();
    let mut idle_closed = None;
    // `busy` pings every 300 ms for 2.5 s; `idle` says nothing after its first PING.
    while t.elapsed() < Duration::from_millis(2500) {
        ping_within(&mut busy, PROMPT);
        std::thread::sleep(Duration::from_millis(300));
    }
    idle.set_timeout(CLOSED_WITHIN);
    if idle.expect_closed().is_empty() {
        idle_closed = Some(t.elapsed());
    }
    assert!(idle_closed.is_some(), "the idle connection got frames");
    ping_within(&mut busy, PROMPT);
    let (_, metrics) = connection_gauge(srv.addr());
    assert!(
        metrics.contains("chimed_timeouts_total{kind=\"idle\"} 1\n"),
        "{metrics}"
    );
}

#[test]
fn silent_and_slowloris_connections_are_closed_by_the_handshake_timeout() {
    let srv = TestServer::start_with(&["--handshake-timeout-s", "1"], None);
    let addr = srv.addr();
    // Sends nothing at all.
    let mut silent = TcpStream::connect(addr).unwrap();
    // An HTTP head, one byte every 200 ms, never finished.
    let mut http = TcpStream::connect(addr).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A line, dribbled, never finished.
    let mut line = TcpStream::connect(addr).unwrap();
    line.write_all(b"{\"action\":\"PI").unwrap();
    let mut keeps_up = srv.client();
    let t = Instant::now();
    let mut open = [true, true];
    while t.elapsed() < CLOSED_WITHIN && open.iter().any(|o| *o) {
        for (i, s) in [&mut http, &mut line].into_iter().enumerate() {
            if open[i] && s.write_all(b"x").is_err() {
                open[i] = false;
            }
        }
        ping_within(&mut keeps_up, PROMPT);
        std::thread::sleep(Duration::from_millis(200));
    }
    for s in [&mut silent, &mut http, &mut line] {
        let frames = frames_until_closed(s, CLOSED_WITHIN);
        assert!(frames.is_empty(), "{frames:?}");
    }
    let took = t.elapsed();
    assert!(took < Duration::from_secs(8), "closed after {took:?}");
    ping_within(&mut keeps_up, PROMPT);
    let (_, metrics) = connection_gauge(addr);
    assert!(
        metrics.contains("chimed_timeouts_total{kind=\"handshake\"} 3\n"),
        "{metrics}"
    );
}

#[test]
fn reconnect_storm_of_5000_cycles_leaves_no_connection_behind() {
    const CYCLES: usize = 5000;
    const THREADS: usize = 4;
    let srv = TestServer::start();
    let addr = srv.addr();
    let mut owner = srv.client();
    let (_, token) = owner.register(&common::unique("storm"));
    let created = owner.request("CREATE_SERVER", json!({"name": "storm"}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let (start, _) = connection_gauge(addr);
    assert_eq!(start, 1, "the owner only");
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let token = token.clone();
            let server_id = server_id.clone();
            std::thread::spawn(move || {
                let mut refused = 0;
                for _ in 0..CYCLES / THREADS {
                    let mut c = Client::connect(addr);
                    let r = c.request("AUTH", json!({"token": token}));
                    if r["action"] == "ERROR" {
                        refused += 1; // the per-IP limit, while closes are being reaped
                        continue;
                    }
                    success(&r, "AUTH");
                    let r = c.request("SUBSCRIBE", json!({"server_id": server_id, "server_delta_id": 0}));
                    success(&r, "SUBSCRIBE");
                }
                refused
            })
        })
        .collect();
    let refused: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(refused < CYCLES / 100, "{refused} of {CYCLES} cycles refused");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, metrics) = connection_gauge(addr);
        if now == start {
            assert!(metrics.contains("chimed_subscriptions 0\n"), "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{now} connections left, {start} at the start:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ping_within(&mut owner, PROMPT);
}

#[test]
fn sigterm_during_a_posting_flood_keeps_every_acknowledged_post_and_exits_0() {
    const CONNS: usize = 4;
    const PER_CONN: usize = 400;
    let mut srv = TestServer::start_with(&["--rate-limits", "off"], None);
    let addr = srv.addr();
    let mut owner = srv.client();
    let (_, token) = owner.register(&common::unique("term"));
    let created = owner.request("CREATE_SERVER", json!({"name": "term"}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let channel_id = created["data"]["channel_id"].as_str().unwrap().to_string();
    let mut conns = Vec::new();
    for c in 0..CONNS {
        let mut client = Client::connect(addr);
        success(&client.request("AUTH", json!({"token": token})), "AUTH");
        let mut batch = Vec::new();
        for n in 0..PER_CONN {
            let id = format!("{c}-{n}");
            let frame = json!({"action": "POST_MESSAGE", "id": id,
                "data": {"channel_id": channel_id, "content": format!("post {id}")}});
            batch.extend_from_slice(frame.to_string().as_bytes());
            batch.push(b'\n');
        }
        client.send_raw(&batch);
        conns.push(client);
    }
    // A few acks from each, then SIGTERM mid-flood.
    for client in conns.iter_mut() {
        for _ in 0..10 {
            success(&client.recv(), "POST_MESSAGE");
        }
    }
    let status = srv.sigterm();
    assert!(status.success(), "exit status {status:?}; log:\n{}", srv.log_tail());
    let mut acked: HashMap<i64, String> = HashMap::new();
    for client in conns.iter_mut() {
        for line in client.read_to_end().split(|b| *b == b'\n') {
            let Ok(m) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if m["data"]["status"] == "success" {
                let id = m["id"].as_str().unwrap();
                acked.insert(m["data"]["delta_id"].as_i64().unwrap(), format!("post {id}"));
            }
        }
    }
    srv.restart();
    let mut c = srv.client();
    success(&c.request("AUTH", json!({"token": token})), "AUTH");
    let mut present = HashMap::new();
    let mut cursor = 0;
    loop {
        let r = c.request("SYNC", json!({"server_id": server_id, "client_delta_id": cursor}));
        for d in r["data"]["missing_deltas"].as_array().unwrap() {
            cursor = d["delta_id"].as_i64().unwrap();
            if d["type"] == "message" {
                present.insert(cursor, d["content"].as_str().unwrap().to_string());
            }
        }
        if !r["data"]["has_more"].as_bool().unwrap() {
            break;
        }
    }
    for (delta_id, content) in &acked {
        assert_eq!(present.get(delta_id), Some(content), "acknowledged post lost");
    }
    eprintln!("{} acknowledged posts after the first 40, all present", acked.len());
}

#[test]
fn sighup_reloads_the_connection_limits_from_the_config_file() {
    let srv = TestServer::start_with(&[], Some("max_connections_per_ip = 1\n"));
    let addr = srv.addr();
    let mut held = srv.client();
    ping_within(&mut held, PROMPT);
    let mut second = connect_from(addr, "127.0.0.1");
    assert_refused(&frames_until_closed(&mut second, CLOSED_WITHIN), "your address");

    std::fs::write(srv.dir().join("chimed.toml"), "max_connections_per_ip = 4\n").unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &srv.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + CLOSED_WITHIN;
    loop {
        let mut again = connect_from(addr, "127.0.0.1");
        if ping_raw(&mut again)["data"]["status"] == "success" {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not raise the per-address limit");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server kept running and serving the connection it had.
    ping_within(&mut held, PROMPT);
}
