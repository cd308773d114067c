//! Files over HTTP (SPEC §6) and the backup stream (SPEC §5), against a real server:
//! a 100 MiB upload and download, byte-identical, while another connection's PING keeps
//! answering; the 100 MiB limit (413, nothing kept); membership; ranges; attachments in
//! deltas; NDJSON backups by partition; stalled bodies cut by the slowloris timeout (slow
//! ones not); file requests charged to the connection's request budget.

mod common;
#[path = "common/http.rs"]
mod http;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{success, Client, TestServer};
use http::Http;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;

struct Owner {
    client: Client,
    token: String,
    server_id: String,
    channel_id: String,
}

fn owner(server: &TestServer) -> Owner {
    let mut client = server.client();
    let (_, token) = client.register(&common::unique("files"));
    let (server_id, channel_id) = client.create_server("files");
    Owner {
        server_id,
        channel_id,
        client,
        token,
    }
}

/// Deterministic bytes that do not compress or repeat in an obvious way.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn upload_head(o: &Owner, name: &str, len: usize) -> String {
    format!(
        "POST /api/files/upload/?channel_id={}&name={name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n",
        o.channel_id, o.token
    )
}

fn upload(server: &TestServer, o: &Owner, name: &str, data: &[u8]) -> Value {
    let mut h = Http::connect(server.addr());
    h.send(upload_head(o, name, data.len()).as_bytes());
    h.send(data);
    let r = h.response();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Every file under the store, temp files included.
fn stored_files(dir: &Path) -> Vec<std::path::PathBuf> {
    fn walk(d: &Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

#[test]
fn hundred_mib_round_trip_while_ping_keeps_answering() {
    let server = TestServer::start();
    let o = owner(&server);
    let data = bytes(100 * MIB, 7);
    let want_sha = hex(&Sha256::digest(&data));

    let addr = server.addr();
    let head = upload_head(&o, "big.bin", data.len());
    let up = std::thread::spawn({
        let data = data.clone();
        move || {
            let mut h = Http::connect(addr);
            h.send(head.as_bytes());
            for piece in data.chunks(MIB) {
                h.stream.write_all(piece).expect("upload body");
            }
            h.response()
        }
    });
    // PING on another connection while the upload streams.
    let mut pinger = server.client();
    let mut worst = Duration::ZERO;
    while !up.is_finished() {
        worst = worst.max(common::ping_within(&mut pinger, Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = up.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let meta = r.json();
    assert_eq!(meta["status"], "success");
    assert_eq!(meta["size"], 100 * MIB as u64);
    assert_eq!(meta["sha256"], want_sha.as_str());
    let url = meta["download_url"].as_str().unwrap().to_string();

    // Download while pinging, too.
    let token = o.token.clone();
    let down = std::thread::spawn(move || {
        let mut h = Http::connect(addr);
        let r = h.get(&url, Some(&token));
        (r.status, r.header("content-length").map(str::to_string), r.body)
    });
    while !down.is_finished() {
        worst = worst.max(common::ping_within(&mut pinger, Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, len, body) = down.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(len.as_deref(), Some("104857600"));
    assert!(body == data, "downloaded bytes differ from the upload");
    assert!(worst < Duration::from_secs(1), "PING took {worst:?}");
}

#[test]
fn over_the_limit_is_413_and_keeps_nothing() {
    let server = TestServer::start();
    let o = owner(&server);
    let files = server.dir().join("files");
    let before = stored_files(&files);

    // Declared too large: refused before a byte of body is read.
    let mut h = Http::connect(server.addr());
    h.send(upload_head(&o, "x", 100 * MIB + 1).as_bytes());
    let r = h.response();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["code"], "too_large");

    // Chunked, so the size shows only as it streams: 100 MiB + 1 byte.
    let mut h = Http::connect(server.addr());
    h.send(
        format!(
            "POST /api/files/upload/?channel_id={}&name=y HTTP/1.1\r\nAuthorization: Bearer {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            o.channel_id, o.token
        )
        .as_bytes(),
    );
    let piece = vec![b'z'; MIB];
    for i in 0..=100 {
        let data: &[u8] = if i == 100 { b"!" } else { &piece };
        let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(b"\r\n");
        if h.stream.write_all(&chunk).is_err() {
            break; // the server answered and closed
        }
    }
    let _ = h.stream.write_all(b"0\r\n\r\n");
    let r = h.response();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));

    // Nothing kept: no new blob, no temp file (removal runs on a worker: allow it a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = stored_files(&files);
        if now == before {
            break;
        }
        assert!(Instant::now() < deadline, "files left behind: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Exactly 100 MiB is accepted (the round-trip test); other clients are unaffected.
    common::ping(&mut server.client());
}

#[test]
fn membership_ranges_head_and_errors() {
    let server = TestServer::start();
    let o = owner(&server);
    let data = bytes(300_000, 3);
    let meta = upload(&server, &o, "r%C3%A9sum%C3%A9.pdf", &data);
    assert_eq!(meta["name"], "résumé.pdf");
    let url = meta["download_url"].as_str().unwrap().to_string();

    let mut h = Http::connect(server.addr());
    // No token: 401. A stranger: 404 (the file's existence is not revealed).
    assert_eq!(h.get(&url, None).status, 401);
    let mut stranger = server.client();
    let (_, stranger_token) = stranger.register(&common::unique("stranger"));
    let r = h.get(&url, Some(&stranger_token));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "not_found");
    // A stranger cannot upload into the channel either.
    let mut u = Http::connect(server.addr());
    u.send(
        format!(
            "POST /api/files/upload/?channel_id={}&name=n HTTP/1.1\r\nAuthorization: Bearer {stranger_token}\r\n\
             Content-Length: 3\r\n\r\nabc",
            o.channel_id
        )
        .as_bytes(),
    );
    assert_eq!(u.response().status, 403);

    // The whole file, with its headers.
    let r = h.get(&url, Some(&o.token));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert!(r
        .header("content-disposition")
        .unwrap()
        .contains("filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));

    // A range, an open-ended range, a suffix, an unsatisfiable one.
    for (range, start, end) in [
        ("bytes=10-19", 10, 20),
        ("bytes=299990-", 299_990, 300_000),
        ("bytes=-5", 299_995, 300_000),
    ] {
        h.send(
            format!(
                "GET {url} HTTP/1.1\r\nAuthorization: Bearer {}\r\nRange: {range}\r\n\r\n",
                o.token
            )
            .as_bytes(),
        );
        let r = h.response();
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, &data[start..end], "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{}/300000", end - 1).as_str())
        );
    }
    h.send(
        format!(
            "GET {url} HTTP/1.1\r\nAuthorization: Bearer {}\r\nRange: bytes=400000-\r\n\r\n",
            o.token
        )
        .as_bytes(),
    );
    let r = h.response();
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));

    // HEAD: the headers only, and the connection goes on.
    h.send(format!("HEAD {url} HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n", o.token).as_bytes());
    let r = h.response_with(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("300000"));
    assert_eq!(h.post("/api/ping/", None, "").status, 200);

    // Unknown file, missing channel_id.
    assert_eq!(h.get("/api/files/download/999999", Some(&o.token)).status, 404);
    let r = h.post("/api/files/upload/?name=x", Some(&o.token), "");
    assert_eq!(r.status, 400);
}

#[test]
fn chunked_upload_and_attachments_resolve_in_deltas() {
    let server = TestServer::start();
    let mut o = owner(&server);
    success(
        &o.client.request("SUBSCRIBE", json!({"server_id": o.server_id})),
        "SUBSCRIBE",
    );

    let mut h = Http::connect(server.addr());
    h.send(
        format!(
            "POST /api/files/upload/?channel_id={}&name=cat.png HTTP/1.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: image/png\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
            o.channel_id, o.token
        )
        .as_bytes(),
    );
    let cont = h.response();
    assert_eq!(cont.status, 100);
    h.send(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let r = h.response();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let meta = r.json();
    assert_eq!(meta["size"], 11);
    assert_eq!(meta["content_type"], "image/png");
    let file_id = meta["file_id"].as_str().unwrap().to_string();

    let r = o.client.request(
        "POST_MESSAGE",
        json!({"channel_id": o.channel_id, "content": "look", "attachments": [file_id]}),
    );
    success(&r, "POST_MESSAGE");
    let push = loop {
        let f = o.client.recv();
        if f["action"] == "PUBLISH_DELTA" && f["data"]["delta"]["type"] == "message" {
            break f;
        }
    };
    let att = &push["data"]["delta"]["attachments"][0];
    assert_eq!(att["file_id"], file_id.as_str());
    assert_eq!(att["name"], "cat.png");
    assert_eq!(att["size"], 11);
    assert_eq!(att["download_url"], meta["download_url"]);

    let r = h.get(att["download_url"].as_str().unwrap(), Some(&o.token));
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.header("content-type"), Some("image/png"));
}

#[test]
fn backup_streams_the_log_as_ndjson_by_partition() {
    let server = TestServer::start_with(&[], Some("partition_size = 10\n"));
    let mut o = owner(&server);
    for i in 0..25 {
        let r = o.client.request(
            "POST_MESSAGE",
            json!({"channel_id": o.channel_id, "content": format!("m{i}")}),
        );
        success(&r, "POST_MESSAGE");
    }
    let head = success(
        &o.client
            .request("SYNC", json!({"server_id": o.server_id, "client_delta_id": 0})),
        "SYNC",
    )["server_delta_id"]
        .as_i64()
        .unwrap();

    let mut h = Http::connect(server.addr());
    let url = format!("/api/servers/{}/backup", o.server_id);
    let r = h.get(&url, Some(&o.token));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let lines: Vec<Value> = r
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("NDJSON line"))
        .collect();
    let ids: Vec<i64> = lines.iter().filter_map(|l| l["delta_id"].as_i64()).collect();
    assert_eq!(ids.len() as i64, head, "every delta, once");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order");
    let partitions: Vec<i64> = lines.iter().filter_map(|l| l["partition"].as_i64()).collect();
    assert!(partitions.len() >= 3, "a header per partition: {partitions:?}");
    assert!(lines.iter().any(|l| l["content"] == "m24"));

    // From a later partition: only its deltas and after.
    let r = h.get(&format!("{url}?from_partition={}", partitions[1]), Some(&o.token));
    assert_eq!(r.status, 200);
    let later: Vec<Value> = r
        .body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(later[0]["partition"], partitions[1]);
    assert!(later.iter().filter(|l| l["delta_id"].is_i64()).count() < ids.len());

    // A stranger may not.
    let mut stranger = server.client();
    let (_, t) = stranger.register(&common::unique("nosy"));
    let r = h.get(&url, Some(&t));
    assert!(r.status == 403 || r.status == 404, "{}", r.status);
    // The connection is still good.
    assert_eq!(h.post("/api/ping/", None, "").status, 200);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_download_whose_reader_stalls_is_cut_after_the_slow_consumer_timeout() {
    let server = TestServer::start_with(&[], Some("slow_consumer_timeout_ms = 1000\n"));
    let o = owner(&server);
    let data = bytes(16 * MIB, 11);
    let meta = upload(&server, &o, "stall.bin", &data);
    let url = meta["download_url"].as_str().unwrap();

    let mut h = Http::connect(server.addr());
    h.send(format!("GET {url} HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n", o.token).as_bytes());
    // Do not read: the server fills the socket buffers, then its output stops moving.
    std::thread::sleep(Duration::from_secs(4));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match std::io::Read::read(&mut h.stream, &mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false, // read timeout: still open
        }
    };
    assert!(ended, "the stalled download was not cut");
    assert!(
        got.len() < data.len(),
        "it got the whole file ({} bytes): it was not stalled",
        got.len()
    );
    // Others are served meanwhile and after.
    common::ping(&mut server.client());
}

/// Sets a file's modification time, as if it had been written `ago` before now.
fn age(path: &Path, ago: Duration) {
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - ago).unwrap();
}

#[test]
fn unreferenced_blobs_and_stale_temp_files_are_swept_off_the_loop() {
    // A sweep every second; the grace period stays at its default (an hour).
    let server = TestServer::start_with(&[], Some("file_gc_interval_s = 1\n"));
    let o = owner(&server);
    let files = server.dir().join("files");
    let data = bytes(200_000, 5);
    let meta = upload(&server, &o, "kept.bin", &data);
    let sha = hex(&Sha256::digest(&data));
    let kept = files.join(&sha[..2]).join(&sha);
    assert!(kept.is_file());
    age(&kept, Duration::from_secs(2 * 3600)); // old, but it has its row

    // What a crash between rename and commit leaves (a blob without a row), two hours
    // ago and just now, and an interrupted upload's temp file.
    let plant = |content: &[u8], ago: Duration| {
        let sha = hex(&Sha256::digest(content));
        let dir = files.join(&sha[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(&sha);
        std::fs::write(&p, content).unwrap();
        age(&p, ago);
        p
    };
    let old_orphan = plant(b"old orphan", Duration::from_secs(2 * 3600));
    let new_orphan = plant(b"new orphan", Duration::from_secs(60));
    let old_temp = files.join("tmp").join("00112233445566778899aabbccddeeff.part");
    std::fs::write(&old_temp, b"interrupted").unwrap();
    age(&old_temp, Duration::from_secs(2 * 3600));

    let mut pinger = server.client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while old_orphan.exists() || old_temp.exists() {
        assert!(Instant::now() < deadline, "not swept: {:?}", stored_files(&files));
        common::ping_within(&mut pinger, Duration::from_secs(1));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(new_orphan.exists(), "a blob younger than the grace period was swept");
    assert!(kept.exists(), "a referenced blob was swept");
    let mut h = Http::connect(server.addr());
    let r = h.get(meta["download_url"].as_str().unwrap(), Some(&o.token));
    assert_eq!(r.status, 200);
    assert!(r.body == data);
}

/// Reads until the server closes `s` (EOF or a reset) within `bound`; returns the bytes that
/// came first. Panics if the connection stays open.
fn read_until_closed(s: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let deadline = Instant::now() + bound;
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!(
                "still open after {bound:?} ({e}); got {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// `GET /metrics` on a fresh connection.
fn metrics(server: &TestServer) -> String {
    let mut h = Http::connect(server.addr());
    String::from_utf8_lossy(&h.get("/metrics", None).body).into_owned()
}

#[test]
fn stalled_and_trickled_bodies_are_cut_and_leave_no_temp_file() {
    let server = TestServer::start_with(&["--handshake-timeout-s", "1"], None);
    let o = owner(&server);
    let tmp = server.dir().join("files").join("tmp");

    // An upload that announces 1,000,000 bytes, sends 1000 and stops.
    let mut upload = TcpStream::connect(server.addr()).unwrap();
    upload
        .write_all(upload_head(&o, "stalled.bin", 1_000_000).as_bytes())
        .unwrap();
    upload.write_all(&[b'u'; 1000]).unwrap();
    // An API body that announces 1,000,000 bytes, sends a few and stops.
    let mut api = TcpStream::connect(server.addr()).unwrap();
    api.write_all(
        format!(
            "POST /api/post/ HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Length: 1000000\r\n\r\n{{\"channel_id\":",
            o.token
        )
        .as_bytes(),
    )
    .unwrap();
    // An API body trickled a byte every 200 ms: each byte comes well within the 1 s timeout,
    // but a byte now and then is not progress.
    let mut trickle = TcpStream::connect(server.addr()).unwrap();
    trickle
        .write_all(b"POST /api/ping/ HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();

    // The upload's temp file exists (its UploadBegin ran) before the cut removes it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while stored_files(&tmp).is_empty() {
        assert!(Instant::now() < deadline, "no temp file for the stalled upload");
        std::thread::sleep(Duration::from_millis(20));
    }

    let t = Instant::now();
    let mut pinger = server.client();
    let mut trickling = true;
    while trickling && t.elapsed() < Duration::from_secs(5) {
        trickling = trickle.write_all(b" ").is_ok();
        common::ping_within(&mut pinger, Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(200));
    }
    for (name, s) in [("upload", &mut upload), ("api", &mut api), ("trickle", &mut trickle)] {
        let got = read_until_closed(s, Duration::from_secs(5));
        assert!(
            got.is_empty(),
            "{name}: closed without a response, got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let took = t.elapsed();
    assert!(took < Duration::from_secs(8), "cut after {took:?}");

    // The partial temp file is removed (on a worker: allow it a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = stored_files(&tmp);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "temp files left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = metrics(&server);
    assert!(text.contains("chimed_timeouts_total{kind=\"body\"} 3\n"), "{text}");
    common::ping(&mut pinger);
}

#[test]
fn a_slow_upload_that_keeps_coming_is_not_cut_while_the_server_holds_it_up() {
    // Every storage job (each 1 MiB chunk's write included) takes 1.5 s, longer than the 1 s
    // timeout: time the body waits on the server must not count against the client.
    let server = TestServer::start_with(&["--handshake-timeout-s", "1"], Some("test_storage_delay_ms = 1500\n"));
    let o = owner(&server);
    let data = bytes(2 * MIB + 200 * 1024, 5);
    let want_sha = hex(&Sha256::digest(&data));
    let (fast, slow) = data.split_at(2 * MIB + 40 * 1024);

    let mut h = Http::connect(server.addr());
    h.send(upload_head(&o, "slow.bin", data.len()).as_bytes());
    let t = Instant::now();
    // Two chunks and a bit at once: the server writes one while the next fills, then stops
    // reading until the first is on disk.
    h.send(fast);
    // Then the rest slowly: 32 KiB every 700 ms, each gap within the 1 s timeout.
    for piece in slow.chunks(32 * 1024) {
        std::thread::sleep(Duration::from_millis(700));
        h.send(piece);
    }
    let r = h.response();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let meta = r.json();
    assert_eq!(meta["size"], data.len() as u64);
    assert_eq!(meta["sha256"], want_sha.as_str());
    assert!(
        t.elapsed() > Duration::from_secs(3),
        "the upload took {:?}: it was not slow",
        t.elapsed()
    );
    assert!(metrics(&server).contains("chimed_timeouts_total{kind=\"body\"} 0\n"));
}

#[test]
fn file_requests_are_charged_to_the_connection_request_budget() {
    let config = "read_rate = 0.5\nread_burst = 3\nwrite_rate = 0.5\nwrite_burst = 2\n";
    let server = TestServer::start_with(&[], Some(config));
    let o = owner(&server);
    let meta = upload(&server, &o, "a.txt", b"hello");
    let url = meta["download_url"].as_str().unwrap().to_string();
    let backup = format!("/api/servers/{}/backup", o.server_id);

    // Downloads and backups are reads: three fit the burst, the fourth is 429.
    let mut h = Http::connect(server.addr());
    assert_eq!(h.get(&url, Some(&o.token)).status, 200);
    assert_eq!(h.get(&backup, Some(&o.token)).status, 200);
    assert_eq!(h.get(&url, Some(&o.token)).status, 200);
    let r = h.get(&url, Some(&o.token));
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["code"], "rate_limited", "{body}");
    let ms = body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(ms > 0 && ms <= 2000, "retry_after_ms {ms}");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    // A request without a token costs its unit too.
    assert_eq!(h.get(&url, None).status, 429);
    // The connection stays usable; after the wait it is served again.
    std::thread::sleep(Duration::from_millis(ms + 100));
    let r = h.get(&url, Some(&o.token));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"hello");

    // Uploads are writes: two fit the burst; the third is 429 and, its body unread, closes.
    let mut h = Http::connect(server.addr());
    for i in 0..2 {
        h.send(upload_head(&o, &format!("w{i}"), 3).as_bytes());
        h.send(b"abc");
        assert_eq!(h.response().status, 200);
    }
    h.send(upload_head(&o, "w2", 3).as_bytes());
    h.send(b"abc");
    let r = h.response();
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "rate_limited");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(h.closed(), "the connection stays open with an unread body");
    let text = metrics(&server);
    assert!(text.contains("chimed_rate_limited_total 3\n"), "{text}");
}
