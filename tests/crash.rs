//! kill -9: every acknowledged post survives, delta ids keep increasing after the
//! restart, and a `client_msg_id` used before the crash still returns its first result.

mod common;

use std::collections::HashMap;
use std::io::Write;

use common::{Client, TestServer};
use serde_json::json;

#[test]
fn acknowledged_posts_survive_sigkill() {
    const CONNS: usize = 4;
    const PER_CONN: usize = 400;

    let mut server = TestServer::start_with(&["--rate-limits", "off"], None); // posts as fast as it can
    let addr = server.addr();
    let mut owner = Client::connect(addr);
    let (_, owner_token) = owner.register(&common::unique("owner"));
    let created = owner.request("CREATE_SERVER", json!({"name": "crash"}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let channel_id = created["data"]["channel_id"].as_str().unwrap().to_string();

    // Each connection pipelines all its posts in one write, then reads acks.
    let mut conns = Vec::new();
    for c in 0..CONNS {
        let mut client = Client::connect(addr);
        client.request("AUTH", json!({"token": owner_token}));
        let mut batch = Vec::new();
        for n in 0..PER_CONN {
            let frame = json!({"action": "POST_MESSAGE", "id": format!("{c}-{n}"),
                "data": {"channel_id": channel_id, "content": format!("post {c}-{n}"), "client_msg_id": format!("{c}-{n}")}});
            batch.extend_from_slice(frame.to_string().as_bytes());
            batch.push(b'\n');
        }
        client.send_raw(&batch);
        conns.push(client);
    }

    // Read some acks from every connection, then kill the server mid-stream.
    let mut acked: HashMap<String, (i64, String)> = HashMap::new();
    for client in conns.iter_mut() {
        for _ in 0..PER_CONN / 4 {
            let m = client.recv();
            let d = &m["data"];
            assert_eq!(d["status"], "success", "{m}");
            acked.insert(
                m["id"].as_str().unwrap().to_string(),
                (
                    d["delta_id"].as_i64().unwrap(),
                    d["message_id"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    server.kill9();
    // Acks that were already on the wire when the server died are acks too.
    for client in conns.iter_mut() {
        let rest = client.read_to_end();
        for line in rest.split(|b| *b == b'\n') {
            let Ok(m) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if m["data"]["status"] == "success" {
                let d = &m["data"];
                acked.insert(
                    m["id"].as_str().unwrap().to_string(),
                    (
                        d["delta_id"].as_i64().unwrap(),
                        d["message_id"].as_str().unwrap().to_string(),
                    ),
                );
            }
        }
    }
    assert!(acked.len() >= CONNS * PER_CONN / 4);
    let max_acked = acked.values().map(|(d, _)| *d).max().unwrap();

    server.restart();
    let addr = server.addr();
    let mut c = Client::connect(addr);
    let r = c.request("AUTH", json!({"token": owner_token}));
    assert_eq!(r["data"]["status"], "success", "tokens survive the crash: {r}");

    // Every acknowledged post is in the log with its content.
    let mut present = HashMap::new();
    let mut cursor = 0;
    loop {
        let r = c.request("SYNC", json!({"server_id": server_id, "client_delta_id": cursor}));
        for d in r["data"]["missing_deltas"].as_array().unwrap() {
            cursor = d["delta_id"].as_i64().unwrap();
            if d["type"] == "message" {
                present.insert(
                    d["delta_id"].as_i64().unwrap(),
                    d["content"].as_str().unwrap().to_string(),
                );
            }
        }
        if !r["data"]["has_more"].as_bool().unwrap() {
            break;
        }
    }
    for (key, (delta_id, _)) in &acked {
        assert_eq!(
            present.get(delta_id),
            Some(&format!("post {key}")),
            "acked post {key} lost"
        );
    }

    // New deltas continue above every earlier id.
    let r = c.request(
        "POST_MESSAGE",
        json!({"channel_id": channel_id, "content": "after the crash"}),
    );
    let next = r["data"]["delta_id"].as_i64().unwrap();
    assert!(
        next > max_acked && next > cursor,
        "delta ids must keep increasing: {next} after {cursor}"
    );

    // A client_msg_id used before the crash returns its first result and writes nothing.
    let (key, (delta_id, message_id)) = acked.iter().next().unwrap();
    let r = c.request(
        "POST_MESSAGE",
        json!({"channel_id": channel_id, "content": "retry", "client_msg_id": key}),
    );
    assert_eq!(r["data"]["delta_id"].as_i64().unwrap(), *delta_id);
    assert_eq!(r["data"]["message_id"].as_str().unwrap(), message_id);
    let after = c.request("SYNC", json!({"server_id": server_id, "client_delta_id": next}));
    assert_eq!(
        after["data"]["missing_deltas"].as_array().unwrap().len(),
        0,
        "the retry wrote nothing"
    );
    let _ = std::io::stdout().flush();
}
