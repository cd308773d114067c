//! Presence: TYPING and voice rooms, and what happens to them when a member is kicked.

mod common;

use std::time::Duration;

use common::{Client, TestServer};
use serde_json::{json, Value};

fn next_push(c: &mut Client, action: &str) -> Value {
    for _ in 0..20 {
        let m = c
            .poll(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no {action} push"));
        if m["action"] == action {
            return m;
        }
    }
    panic!("no {action} push among the next frames");
}

#[test]
fn a_kicked_member_leaves_the_voice_room_and_typing_is_for_text_channels() {
    let server = TestServer::start();
    let addr = server.addr();
    let mut owner = Client::connect(addr);
    owner.register(&common::unique("owner"));
    let created = owner.request("CREATE_SERVER", json!({"name": "voice", "is_public": true}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let voice = owner.request(
        "CREATE_CHANNEL",
        json!({"server_id": server_id, "name": "talk", "type": "voice"}),
    );
    let voice_id = voice["data"]["channel_id"].as_str().unwrap().to_string();
    owner.request("SUBSCRIBE", json!({"server_id": server_id}));

    let mut member = Client::connect(addr);
    let (member_id, _) = member.register(&common::unique("member"));
    member.request("JOIN_SERVER", json!({"server_id": server_id}));
    let r = member.request("JOIN_VOICE", json!({"channel_id": voice_id}));
    assert_eq!(r["data"]["status"], "success", "{r}");
    let state = next_push(&mut owner, "VOICE_STATE");
    assert_eq!(state["data"]["user_ids"], json!([member_id]));

    let r = member.request("TYPING", json!({"channel_id": voice_id}));
    assert_eq!(r["data"]["code"], "bad_request", "TYPING is for text channels: {r}");

    let r = owner.request("KICK", json!({"server_id": server_id, "user_id": member_id}));
    assert_eq!(r["data"]["status"], "success", "{r}");
    let state = next_push(&mut owner, "VOICE_STATE");
    assert_eq!(state["data"]["channel_id"], voice_id.as_str());
    assert_eq!(state["data"]["user_ids"], json!([]), "the kicked member left the room");
}
