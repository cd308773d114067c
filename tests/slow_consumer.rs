//! A subscriber that stops reading: the others keep receiving, the server stops queueing
//! for it at its output limit, and once it reads again it gets a SYNC notice and catches
//! up exactly by resubscribing from its last delta_id.

mod common;

use std::time::Duration;

use common::{Client, TestServer};
use serde_json::json;

/// The initial receive buffer (the middle figure of tcp_rmem).
fn default_rmem() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(1 << 20)
}

fn kernel_max(path: &str) -> usize {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().last().and_then(|v| v.parse().ok()))
        .unwrap_or(6 << 20)
}

#[test]
fn slow_subscriber_is_cut_off_then_resyncs_exactly() {
    const POSTS: usize = 6000;
    let content = "x".repeat(2000);
    let config = "max_output_bytes = 65536\nslow_consumer_timeout_ms = 120000\ndelta_tail = 64\n";
    let server = TestServer::start_with(&["--rate-limits", "off"], Some(config));
    let addr = server.addr();

    let mut owner = Client::connect(addr);
    let (_, token) = owner.register(&common::unique("owner"));
    let created = owner.request("CREATE_SERVER", json!({"name": "slow"}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let channel_id = created["data"]["channel_id"].as_str().unwrap().to_string();

    let subscribe = |c: &mut Client, cursor: Option<i64>| {
        c.request("AUTH", json!({"token": token}));
        let mut data = json!({"server_id": server_id});
        if let Some(cur) = cursor {
            data["client_delta_id"] = json!(cur);
        }
        let r = c.request("SUBSCRIBE", data);
        assert_eq!(r["data"]["status"], "success", "{r}");
        r["data"]["server_delta_id"].as_i64().unwrap()
    };

    let mut slow = Client::connect(addr);
    let start = subscribe(&mut slow, None);

    let mut fast = Client::connect(addr);
    subscribe(&mut fast, None);
    let fast_reader = std::thread::spawn(move || {
        let mut ids = Vec::new();
        while ids.len() < POSTS {
            let m = fast.recv();
            assert_eq!(m["action"], "PUBLISH_DELTA", "{m}");
            ids.push(m["data"]["delta"]["delta_id"].as_i64().unwrap());
        }
        ids
    });

    // The slow client now reads nothing while the posts go out.
    let mut poster = Client::connect(addr);
    poster.request("AUTH", json!({"token": token}));
    for chunk in 0..POSTS / 500 {
        let mut batch = Vec::new();
        for n in 0..500 {
            let f = json!({"action": "POST_MESSAGE", "id": chunk * 500 + n, "data": {"channel_id": channel_id, "content": content}});
            batch.extend_from_slice(f.to_string().as_bytes());
            batch.push(b'\n');
        }
        poster.send_raw(&batch);
        for _ in 0..500 {
            assert_eq!(poster.recv()["data"]["status"], "success");
        }
    }
    let fast_ids = fast_reader.join().expect("fast subscriber");
    assert_eq!(
        fast_ids.len(),
        POSTS,
        "the fast subscriber got every delta while the slow one stalled"
    );
    assert!(fast_ids.windows(2).all(|w| w[0] < w[1]));

    // Now read the slow one: deltas in order from its cursor, then a SYNC notice.
    let mut got = Vec::new();
    let mut bytes = 0usize;
    let notice = loop {
        let m = slow.recv();
        bytes += m.to_string().len() + 1;
        match m["action"].as_str() {
            Some("PUBLISH_DELTA") => got.push(m["data"]["delta"]["delta_id"].as_i64().unwrap()),
            Some("SYNC") => break m,
            _ => panic!("unexpected frame {m}"),
        }
    };
    assert_eq!(notice["data"]["server_id"], server_id);
    assert!(
        got.len() < POSTS,
        "the server must have stopped sending to the slow reader"
    );
    // What reached the slow reader before the notice fits in its output limit plus the
    // kernel's socket buffers; all the posts together would not.
    // (A socket that is not read keeps its initial receive window: autotuning grows it
    // only as the application reads.)
    let bound = 65536 + kernel_max("/proc/sys/net/ipv4/tcp_wmem") + 2 * default_rmem() + (1 << 20);
    assert!(
        bytes < bound,
        "{bytes} bytes queued for a stalled reader (bound {bound})"
    );
    assert!(POSTS * 2000 > 2 * bound, "the test must post more than the bound");
    let expected: Vec<i64> = fast_ids.iter().copied().filter(|id| *id > start).collect();
    assert_eq!(
        got[..],
        expected[..got.len()],
        "what the slow reader got is an exact prefix"
    );

    // Resubscribe from the last delta it saw: the rest arrives exactly once, in order.
    let last = got.last().copied().unwrap_or(start);
    let mut again = Client::connect(addr);
    subscribe(&mut again, Some(last));
    while got.len() < expected.len() {
        let m = again.recv();
        assert_eq!(m["action"], "PUBLISH_DELTA", "{m}");
        got.push(m["data"]["delta"]["delta_id"].as_i64().unwrap());
    }
    assert_eq!(got, expected);
    assert!(
        again.poll(Duration::from_millis(300)).is_none(),
        "nothing after the last delta"
    );
    drop(slow);
}
