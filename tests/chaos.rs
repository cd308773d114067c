//! Chaos: subscribers that drop and resubscribe with their last delta_id at random, while
//! posters post with retries keyed by `client_msg_id`. Every subscriber must end with
//! exactly the committed log, in order, no gap, no duplicate; the log must hold exactly
//! one delta per idempotent post.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, TestServer};
use serde_json::{json, Value};

/// xorshift: enough randomness for a test, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

fn seed(i: u64) -> Rng {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    Rng(t ^ (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
}

/// The whole committed log of a server, via SYNC pages.
fn full_log(c: &mut Client, server_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let r = c.request(
            "SYNC",
            json!({"server_id": server_id, "client_delta_id": cursor, "limit": 1000}),
        );
        let d = &r["data"];
        assert_eq!(d["status"], "success", "{r}");
        for delta in d["missing_deltas"].as_array().unwrap() {
            cursor = delta["delta_id"].as_i64().unwrap();
            out.push(delta.clone());
        }
        if !d["has_more"].as_bool().unwrap() {
            return out;
        }
    }
}

fn auth(addr: std::net::SocketAddr, token: &str) -> Client {
    let mut c = Client::connect(addr);
    let r = c.request("AUTH", json!({"token": token}));
    assert_eq!(r["data"]["status"], "success", "{r}");
    c
}

#[test]
fn reconnecting_subscribers_get_the_exact_log_and_retried_posts_land_once() {
    const POSTERS: usize = 3;
    const POSTS: usize = 120;
    const SUBSCRIBERS: usize = 4;

    let server = TestServer::start();
    let addr = server.addr();
    let mut owner = Client::connect(addr);
    owner.register(&common::unique("owner"));
    let created = owner.request("CREATE_SERVER", json!({"name": "chaos", "is_public": true}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let channel_id = created["data"]["channel_id"].as_str().unwrap().to_string();

    let mut tokens = Vec::new();
    for i in 0..POSTERS + SUBSCRIBERS {
        let mut c = Client::connect(addr);
        let (_, token) = c.register(&common::unique(&format!("u{i}")));
        let r = c.request("JOIN_SERVER", json!({"server_id": server_id}));
        assert_eq!(r["data"]["status"], "success", "{r}");
        tokens.push(token);
    }

    let done_head = Arc::new(AtomicI64::new(i64::MAX));
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|i| {
            let token = tokens[POSTERS + i].clone();
            let server_id = server_id.clone();
            let done_head = done_head.clone();
            std::thread::spawn(move || {
                let mut rng = seed(100 + i as u64);
                let mut got: Vec<i64> = Vec::new();
                let mut reconnects = 0;
                let deadline = Instant::now() + Duration::from_secs(120);
                'outer: while Instant::now() < deadline {
                    let mut c = auth(addr, &token);
                    let cursor = got.last().copied().unwrap_or(0);
                    let r = c.request("SUBSCRIBE", json!({"server_id": server_id, "client_delta_id": cursor}));
                    assert_eq!(r["data"]["status"], "success", "{r}");
                    loop {
                        if got.last().copied().unwrap_or(0) >= done_head.load(Ordering::Acquire) {
                            break 'outer;
                        }
                        let Some(m) = c.poll(Duration::from_millis(200)) else {
                            continue;
                        };
                        assert_eq!(m["action"], "PUBLISH_DELTA", "unexpected frame {m}");
                        got.push(m["data"]["delta"]["delta_id"].as_i64().unwrap());
                        if rng.chance(40) {
                            reconnects += 1;
                            continue 'outer; // drop the connection mid-stream
                        }
                    }
                }
                (got, reconnects)
            })
        })
        .collect();

    let posters: Vec<_> = (0..POSTERS)
        .map(|p| {
            let token = tokens[p].clone();
            let channel_id = channel_id.clone();
            std::thread::spawn(move || {
                let mut rng = seed(p as u64);
                let mut c = auth(addr, &token);
                let mut acked = HashMap::new();
                for n in 0..POSTS {
                    let key = format!("p{p}-m{n}");
                    let frame = json!({"channel_id": channel_id, "content": format!("message {n} from {p}"), "client_msg_id": key});
                    // Sometimes the "network" fails after sending: reconnect and retry the same key.
                    if rng.chance(8) {
                        c.send(&json!({"action": "POST_MESSAGE", "data": frame}));
                        c = auth(addr, &token);
                    }
                    let r = c.request("POST_MESSAGE", frame.clone());
                    assert_eq!(r["data"]["status"], "success", "{r}");
                    if rng.chance(10) {
                        let again = c.request("POST_MESSAGE", frame);
                        assert_eq!(again["data"]["delta_id"], r["data"]["delta_id"], "retry must return the first result");
                        assert_eq!(again["data"]["message_id"], r["data"]["message_id"]);
                    }
                    acked.insert(key, r["data"]["delta_id"].as_i64().unwrap());
                }
                acked
            })
        })
        .collect();

    let mut acked = HashMap::new();
    for p in posters {
        acked.extend(p.join().expect("poster thread"));
    }
    let log = full_log(&mut owner, &server_id);
    let head = log.last().unwrap()["delta_id"].as_i64().unwrap();
    done_head.store(head, Ordering::Release);

    // The log: strictly increasing ids, exactly one message delta per client_msg_id.
    let ids: Vec<i64> = log.iter().map(|d| d["delta_id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "log ids must increase");
    let messages: Vec<&Value> = log.iter().filter(|d| d["type"] == "message").collect();
    assert_eq!(messages.len(), POSTERS * POSTS, "one message delta per idempotent post");
    let mut contents = HashSet::new();
    for m in &messages {
        assert!(
            contents.insert(m["content"].as_str().unwrap().to_string()),
            "duplicate message {m}"
        );
    }
    for (key, delta_id) in &acked {
        assert!(
            ids.contains(delta_id),
            "acked post {key} (delta {delta_id}) is in the log"
        );
    }

    let mut total_reconnects = 0;
    for s in subscribers {
        let (got, reconnects) = s.join().expect("subscriber thread");
        total_reconnects += reconnects;
        assert_eq!(
            got, ids,
            "a subscriber must end with exactly the committed log, in order"
        );
    }
    assert!(total_reconnects > 0, "the test must actually reconnect subscribers");
}
