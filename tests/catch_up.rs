//! A client 50,000 deltas behind receives all of them, in order, followed seamlessly by
//! live deltas, while the server's memory stays bounded (pages are read as it drains).

mod common;

use std::time::{Duration, Instant};

use common::{Client, TestServer};
use serde_json::json;

fn post_many(addr: std::net::SocketAddr, token: &str, channel_id: &str, total: usize, content: &str) {
    let conns = 8;
    let per = total / conns;
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let (token, channel_id, content) = (token.to_string(), channel_id.to_string(), content.to_string());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                client.request("AUTH", json!({"token": token}));
                for chunk in (0..per).step_by(500) {
                    let n = 500.min(per - chunk);
                    let mut batch = Vec::new();
                    for i in 0..n {
                        let f = json!({"action": "POST_MESSAGE", "id": chunk + i, "data": {"channel_id": channel_id, "content": format!("{c}:{content}")}});
                        batch.extend_from_slice(f.to_string().as_bytes());
                        batch.push(b'\n');
                    }
                    client.send_raw(&batch);
                    for _ in 0..n {
                        let m = client.recv();
                        assert_eq!(m["data"]["status"], "success", "{m}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("poster");
    }
}

#[test]
fn subscriber_fifty_thousand_behind_catches_up_with_bounded_memory() {
    const BEHIND: usize = 50_000;
    // A load test: 50,000 posts as fast as the server takes them.
    let server = TestServer::start_with(&["--rate-limits", "off"], None);
    let addr = server.addr();
    let mut owner = Client::connect(addr);
    let (_, token) = owner.register(&common::unique("owner"));
    let created = owner.request("CREATE_SERVER", json!({"name": "history"}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let channel_id = created["data"]["channel_id"].as_str().unwrap().to_string();
    let start = created["data"]["server_delta_id"].as_i64().unwrap();

    let content = "y".repeat(1000);
    post_many(addr, &token, &channel_id, BEHIND, &content);

    let pid = server.pid();
    let before = common::rss_kb(pid);
    let mut sub = Client::connect(addr);
    sub.request("AUTH", json!({"token": token}));
    let r = sub.request("SUBSCRIBE", json!({"server_id": server_id, "client_delta_id": start}));
    assert_eq!(r["data"]["status"], "success", "{r}");
    let head = r["data"]["server_delta_id"].as_i64().unwrap();
    assert!(head >= start + BEHIND as i64);

    // Not reading yet: the server must not load the whole backlog (~60 MB of frames).
    std::thread::sleep(Duration::from_millis(1500));
    let mut peak = common::rss_kb(pid);

    let mut got: Vec<i64> = Vec::new();
    let mut live_posted = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut poster = Client::connect(addr);
    poster.request("AUTH", json!({"token": token}));
    let mut live_ids = Vec::new();
    while got.last().copied().unwrap_or(start) < head || live_ids.last().is_some_and(|l| got.last().unwrap() < l) {
        assert!(Instant::now() < deadline, "catch-up took too long");
        let m = sub.recv();
        assert_eq!(m["action"], "PUBLISH_DELTA", "{m}");
        got.push(m["data"]["delta"]["delta_id"].as_i64().unwrap());
        if got.len().is_multiple_of(5000) {
            peak = peak.max(common::rss_kb(pid));
        }
        // Halfway through, new deltas arrive: they must follow the backlog with no gap.
        if got.len() == BEHIND / 2 && !live_posted {
            live_posted = true;
            for i in 0..20 {
                let r = poster.request(
                    "POST_MESSAGE",
                    json!({"channel_id": channel_id, "content": format!("live {i}")}),
                );
                live_ids.push(r["data"]["delta_id"].as_i64().unwrap());
            }
        }
    }
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "every delta, in order, no gap, no duplicate"
    );
    assert_eq!(got.first().copied(), Some(start + 1));
    assert_eq!(got.last(), live_ids.last(), "live deltas follow the catch-up");
    assert!(sub.poll(Duration::from_millis(300)).is_none(), "nothing twice");
    let growth_mb = peak.saturating_sub(before) / 1024;
    assert!(
        growth_mb < 40,
        "server memory grew {growth_mb} MB during a 60 MB catch-up"
    );
}
