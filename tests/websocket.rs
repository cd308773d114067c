//! WebSocket on the chat port (SPEC §2): a real client (`tungstenite`) upgrades on `GET /ws`,
//! speaks the same frames as the line protocol, and receives pushes — including a delta
//! posted by a line-protocol client.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{success, TestServer};
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

type Ws = WebSocket<TcpStream>;

fn connect(server: &TestServer) -> Ws {
    let stream = TcpStream::connect(server.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let url = format!("ws://{}/ws", server.addr());
    let (ws, resp) = tungstenite::client(url, stream).expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).expect("send");
}

/// The next text message as JSON (pongs and other control frames skipped).
fn recv(ws: &mut Ws) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => {
                assert!(!t.ends_with('\n'), "a message carries the frame without its newline");
                return serde_json::from_str(t.as_str()).expect("JSON");
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

#[test]
fn websocket_client_subscribes_and_receives_a_delta_posted_over_the_line_protocol() {
    let server = TestServer::start();
    let mut line = server.client();
    let (_, token) = line.register(&common::unique("poster"));
    let (server_id, channel_id) = line.create_server("ws");

    let mut ws = connect(&server);
    send(&mut ws, json!({"action": "AUTH", "id": "a", "data": {"token": token}}));
    let r = recv(&mut ws);
    assert_eq!(r["action"], "AUTH_RESPONSE");
    assert_eq!(r["id"], "a");
    assert_eq!(r["data"]["status"], "success");
    send(
        &mut ws,
        json!({"action": "SUBSCRIBE", "id": 2, "data": {"server_id": server_id}}),
    );
    let r = recv(&mut ws);
    assert_eq!(r["action"], "SUBSCRIBE_RESPONSE", "{r}");
    assert_eq!(r["data"]["status"], "success");

    let posted = line.request("POST_MESSAGE", json!({"channel_id": channel_id, "content": "hello ws"}));
    let delta_id = success(&posted, "POST_MESSAGE")["delta_id"].as_i64().unwrap();

    let push = recv(&mut ws);
    assert_eq!(push["action"], "PUBLISH_DELTA");
    assert!(push.get("id").is_none());
    assert_eq!(push["data"]["delta"]["content"], "hello ws");
    assert_eq!(push["data"]["delta"]["delta_id"], delta_id);

    // And the other way: posted over WebSocket, seen by the WebSocket subscriber itself.
    send(
        &mut ws,
        json!({"action": "POST_MESSAGE", "id": 3, "data": {"channel_id": channel_id, "content": "from ws"}}),
    );
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv(&mut ws));
    }
    assert!(got
        .iter()
        .any(|f| f["action"] == "POST_MESSAGE_RESPONSE" && f["id"] == 3));
    assert!(got
        .iter()
        .any(|f| f["action"] == "PUBLISH_DELTA" && f["data"]["delta"]["content"] == "from ws"));
}

#[test]
fn ping_fragmentation_errors_and_close() {
    let server = TestServer::start();
    let mut ws = connect(&server);

    // A WebSocket ping gets its pong.
    ws.send(Message::Ping(b"hi"[..].into())).unwrap();
    match ws.read().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"hi"),
        other => panic!("expected a pong, got {other:?}"),
    }

    // A frame split over continuation frames is one request.
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::Frame;
    let text = json!({"action": "PING", "id": 7}).to_string();
    let (a, b) = text.as_bytes().split_at(5);
    ws.write(Message::Frame(Frame::message(
        a.to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .unwrap();
    ws.write(Message::Frame(Frame::message(
        b.to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();
    ws.flush().unwrap();
    let r = recv(&mut ws);
    assert_eq!(r["action"], "PING_RESPONSE");
    assert_eq!(r["id"], 7);

    // Not JSON, and a binary message: error frames, and the session goes on.
    ws.send(Message::text("nope")).unwrap();
    let r = recv(&mut ws);
    assert_eq!(r["action"], "ERROR");
    assert_eq!(r["data"]["code"], "bad_request");
    ws.send(Message::binary(b"{}".to_vec())).unwrap();
    let r = recv(&mut ws);
    assert_eq!(r["data"]["code"], "bad_request");
    send(&mut ws, json!({"action": "PING", "id": 8}));
    assert_eq!(recv(&mut ws)["id"], 8);

    // Close handshake: the server echoes the close.
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
            Ok(_) => continue,
            Err(e) => panic!("unexpected error during close: {e}"),
        }
    }
}

#[test]
fn oversize_message_closes_with_1009_and_others_are_unaffected() {
    let server = TestServer::start();
    let mut ws = connect(&server);
    let big = "x".repeat(2 << 20);
    ws.send(Message::text(big)).unwrap_or(());
    let mut code = None;
    for _ in 0..10 {
        match ws.read() {
            Ok(Message::Close(Some(f))) => {
                code = Some(u16::from(f.code));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(code, Some(1009));
    let mut other = server.client();
    common::ping(&mut other);
}

/// The Prometheus text from `GET /metrics` on a fresh connection.
fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

#[test]
fn websocket_pings_alone_keep_a_connection_past_the_idle_timeout() {
    let server = TestServer::start_with(&["--idle-timeout-s", "1"], None);
    let mut pinger = connect(&server);
    let mut silent = connect(&server);
    // `pinger` sends only WebSocket pings, every 300 ms for 2.5 s (the idle timeout is 1 s);
    // `silent` sends nothing after its upgrade.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(2500) {
        pinger
            .send(Message::Ping(b"keepalive"[..].into()))
            .expect("the pinging connection was closed");
        match pinger.read().expect("the pinging connection was closed") {
            Message::Pong(p) => assert_eq!(&p[..], b"keepalive"),
            other => panic!("expected a pong, got {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Still open, and it still serves requests.
    send(&mut pinger, json!({"action": "PING", "id": 1}));
    let r = recv(&mut pinger);
    assert_eq!(r["id"], 1);
    success(&r, "PING");

    // The silent one was cut (without a close frame: timeouts close without one).
    silent.get_ref().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    match silent.read() {
        Err(tungstenite::Error::Io(e))
            if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
        {
            panic!("the silent WebSocket is still open after {:?}", t.elapsed())
        }
        Err(_) | Ok(Message::Close(_)) => {}
        Ok(other) => panic!("the silent WebSocket got {other:?}"),
    }
    let text = metrics(server.addr());
    assert!(text.contains("chimed_timeouts_total{kind=\"idle\"} 1\n"), "{text}");
}

/// A WebSocket ping costs what a PING costs (a read): past the budget it gets no pong, and
/// a client that keeps pinging into the limit is closed (1008) as a line flooder is, while
/// other clients are served meanwhile.
#[test]
fn a_ping_flood_is_rate_limited_and_closed() {
    let config = "read_rate = 1.0\nread_burst = 5\nflood_disconnect_after = 5\nflood_window_s = 10\n";
    let server = TestServer::start_with(&[], Some(config));
    let mut normal = server.client();
    let mut flooder = connect(&server);
    for _ in 0..200 {
        if flooder.write(Message::Ping(b"flood"[..].into())).is_err() {
            break; // the server may close before taking them all
        }
    }
    let _ = flooder.flush();
    common::ping_within(&mut normal, Duration::from_secs(2));

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pongs = 0;
    let mut close_code = None;
    flooder
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    loop {
        match flooder.read() {
            Ok(Message::Pong(_)) => pongs += 1,
            Ok(Message::Close(f)) => close_code = f.map(|f| u16::from(f.code)),
            Ok(other) => panic!("the flooder got {other:?}"),
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                assert!(
                    Instant::now() < deadline,
                    "the ping flooder is still open ({pongs} pongs)"
                );
            }
            Err(_) => break,
        }
    }
    assert!(pongs <= 6, "{pongs} pongs for a read burst of 5");
    assert_eq!(close_code, Some(1008), "a flooder is closed with 1008");
    common::ping_within(&mut normal, Duration::from_secs(2));
    let text = metrics(server.addr());
    assert!(text.contains("chimed_flood_disconnects_total 1\n"), "{text}");
}
