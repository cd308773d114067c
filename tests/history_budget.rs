//! RESTORE_HISTORY is charged against a per-user budget (SPEC §5): over budget answers
//! `rate_limited` with `retry_after_ms`; `--rate-limits off` lifts it.

mod common;

use common::{Client, TestServer};
use serde_json::json;

fn setup(server: &TestServer) -> (Client, String) {
    let mut c = Client::connect(server.addr());
    c.register(&common::unique("reader"));
    let created = c.request("CREATE_SERVER", json!({"name": "h"}));
    let channel_id = created["data"]["channel_id"].as_str().unwrap().to_string();
    (c, channel_id)
}

#[test]
fn restore_history_over_budget_is_rate_limited() {
    let server = TestServer::start_with(&[], Some("history_rate = 10.0\nhistory_burst = 100.0\n"));
    let (mut c, channel_id) = setup(&server);
    let r = c.request("RESTORE_HISTORY", json!({"channel_id": channel_id, "limit": 100}));
    assert_eq!(r["data"]["status"], "success", "{r}");
    let r = c.request("RESTORE", json!({"channel_id": channel_id, "limit": 50}));
    assert_eq!(r["data"]["code"], "rate_limited", "{r}");
    let wait = r["data"]["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(
        (1000..=10_000).contains(&wait),
        "50 deltas at 10/s: about 5 s, got {wait} ms"
    );
    // Other actions are not affected.
    let r = c.request("GET_MESSAGES", json!({"channel_id": channel_id}));
    assert_eq!(r["data"]["status"], "success", "{r}");
}

#[test]
fn rate_limits_off_lifts_the_history_budget() {
    let server = TestServer::start_with(
        &["--rate-limits", "off"],
        Some("history_rate = 10.0\nhistory_burst = 100.0\n"),
    );
    let (mut c, channel_id) = setup(&server);
    for _ in 0..5 {
        let r = c.request("RESTORE_HISTORY", json!({"channel_id": channel_id, "limit": 100}));
        assert_eq!(r["data"]["status"], "success", "{r}");
    }
}
