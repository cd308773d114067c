//! Who may do what: every server action tried by an outsider, a member, a moderator, an
//! admin and the owner; and the privacy of direct messages.

mod common;

use std::time::Duration;

use common::{Client, TestServer};
use serde_json::{json, Value};

struct World {
    addr: std::net::SocketAddr,
    owner: Client,
    server_id: String,
    channel_id: String,
}

const ROLES: [&str; 5] = ["outsider", "member", "moderator", "admin", "owner"];

impl World {
    /// A fresh member of the server (a kick/role/leave target).
    fn new_member(&mut self) -> (Client, String) {
        let mut c = Client::connect(self.addr);
        let (id, _) = c.register(&common::unique("victim"));
        let r = c.request("JOIN_SERVER", json!({"server_id": self.server_id}));
        assert_eq!(r["data"]["status"], "success", "{r}");
        (c, id)
    }

    fn owner_post(&mut self) -> String {
        let r = self.owner.request(
            "POST_MESSAGE",
            json!({"channel_id": self.channel_id, "content": "by the owner"}),
        );
        r["data"]["message_id"].as_str().unwrap().to_string()
    }

    fn owner_channel(&mut self) -> String {
        let r = self.owner.request(
            "CREATE_CHANNEL",
            json!({"server_id": self.server_id, "name": "tmp", "type": "text"}),
        );
        r["data"]["channel_id"].as_str().unwrap().to_string()
    }
}

fn status(r: &Value) -> String {
    let d = &r["data"];
    if d["status"] == "success" {
        "ok".into()
    } else {
        d["code"].as_str().unwrap_or("?").to_string()
    }
}

#[test]
fn every_action_for_every_role() {
    let server = TestServer::start();
    let addr = server.addr();
    let mut owner = Client::connect(addr);
    let (owner_id, _) = owner.register(&common::unique("owner"));
    let created = owner.request("CREATE_SERVER", json!({"name": "authz", "is_public": true}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let channel_id = created["data"]["channel_id"].as_str().unwrap().to_string();
    let mut w = World {
        addr,
        owner,
        server_id: server_id.clone(),
        channel_id: channel_id.clone(),
    };

    // One client per role; index 4 is the owner (w.owner).
    let mut clients: Vec<Client> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for role in &ROLES[..4] {
        let mut c = Client::connect(addr);
        let (id, _) = c.register(&common::unique(role));
        if *role != "outsider" {
            assert_eq!(status(&c.request("JOIN_SERVER", json!({"server_id": server_id}))), "ok");
            if *role != "member" {
                let r = w
                    .owner
                    .request("SET_ROLE", json!({"server_id": server_id, "user_id": id, "role": role}));
                assert_eq!(status(&r), "ok", "{r}");
            }
        }
        clients.push(c);
        ids.push(id);
    }

    // (action, expected result for outsider, member, moderator, admin, owner, make data)
    type Make = Box<dyn Fn(&mut World) -> Value>;
    let sid = server_id.clone();
    let cid = channel_id.clone();
    let table: Vec<(&str, [&str; 5], Make)> = vec![
        (
            "LIST_CHANNELS",
            ["forbidden", "ok", "ok", "ok", "ok"],
            Box::new({
                let s = sid.clone();
                move |_| json!({"server_id": s})
            }),
        ),
        (
            "LIST_MEMBERS",
            ["forbidden", "ok", "ok", "ok", "ok"],
            Box::new({
                let s = sid.clone();
                move |_| json!({"server_id": s})
            }),
        ),
        (
            "GET_MESSAGES",
            ["forbidden", "ok", "ok", "ok", "ok"],
            Box::new({
                let c = cid.clone();
                move |_| json!({"channel_id": c})
            }),
        ),
        (
            "POST_MESSAGE",
            ["forbidden", "ok", "ok", "ok", "ok"],
            Box::new({
                let c = cid.clone();
                move |_| json!({"channel_id": c, "content": "hi"})
            }),
        ),
        (
            "SYNC",
            ["forbidden", "ok", "ok", "ok", "ok"],
            Box::new({
                let s = sid.clone();
                move |_| json!({"server_id": s, "client_delta_id": 0})
            }),
        ),
        (
            "RESTORE_HISTORY",
            ["forbidden", "ok", "ok", "ok", "ok"],
            Box::new({
                let c = cid.clone();
                move |_| json!({"channel_id": c})
            }),
        ),
        (
            "TYPING",
            ["forbidden", "ok", "ok", "ok", "ok"],
            Box::new({
                let c = cid.clone();
                move |_| json!({"channel_id": c})
            }),
        ),
        (
            "SUBSCRIBE",
            ["forbidden", "ok", "ok", "ok", "ok"],
            Box::new({
                let s = sid.clone();
                move |_| json!({"server_id": s})
            }),
        ),
        (
            "CREATE_INVITE",
            ["forbidden", "forbidden", "ok", "ok", "ok"],
            Box::new({
                let s = sid.clone();
                move |_| json!({"server_id": s})
            }),
        ),
        (
            "CREATE_CHANNEL",
            ["forbidden", "forbidden", "forbidden", "ok", "ok"],
            Box::new({
                let s = sid.clone();
                move |_| json!({"server_id": s, "name": "new", "type": "voice"})
            }),
        ),
        (
            "DELETE_CHANNEL",
            ["forbidden", "forbidden", "forbidden", "ok", "ok"],
            Box::new(|w: &mut World| json!({"channel_id": w.owner_channel()})),
        ),
        (
            "EDIT_MESSAGE",
            ["forbidden", "forbidden", "forbidden", "forbidden", "ok"],
            Box::new(|w: &mut World| json!({"message_id": w.owner_post(), "content": "edited"})),
        ),
        (
            "DELETE_MESSAGE",
            ["forbidden", "forbidden", "ok", "ok", "ok"],
            Box::new(|w: &mut World| json!({"message_id": w.owner_post()})),
        ),
        (
            "KICK",
            ["forbidden", "forbidden", "ok", "ok", "ok"],
            Box::new({
                let s = sid.clone();
                move |w: &mut World| json!({"server_id": s, "user_id": w.new_member().1})
            }),
        ),
        (
            "SET_ROLE",
            ["forbidden", "forbidden", "forbidden", "ok", "ok"],
            Box::new({
                let s = sid.clone();
                move |w: &mut World| json!({"server_id": s, "user_id": w.new_member().1, "role": "moderator"})
            }),
        ),
        (
            "DELETE_SERVER",
            ["forbidden", "forbidden", "forbidden", "forbidden", "skip"],
            Box::new({
                let s = sid.clone();
                move |_| json!({"server_id": s})
            }),
        ),
    ];
    for (action, expected, make) in &table {
        for (i, want) in expected.iter().enumerate() {
            if *want == "skip" {
                continue;
            }
            let data = make(&mut w);
            let r = if i == 4 {
                w.owner.request(action, data)
            } else {
                clients[i].request(action, data)
            };
            assert_eq!(status(&r), *want, "{action} by the {}: {r}", ROLES[i]);
        }
    }

    // Acting on a member of equal or higher rank is refused, whatever the action.
    let (mod_id, admin_id) = (ids[2].clone(), ids[3].clone());
    let r = clients[2].request("KICK", json!({"server_id": server_id, "user_id": admin_id}));
    assert_eq!(status(&r), "forbidden", "a moderator cannot kick an admin");
    let r = clients[3].request(
        "SET_ROLE",
        json!({"server_id": server_id, "user_id": mod_id, "role": "admin"}),
    );
    assert_eq!(status(&r), "forbidden", "an admin cannot grant admin");
    let r = clients[3].request("KICK", json!({"server_id": server_id, "user_id": owner_id}));
    assert_eq!(status(&r), "forbidden", "nobody kicks the owner");
    let r = w.owner.request("LEAVE_SERVER", json!({"server_id": server_id}));
    assert_eq!(status(&r), "conflict", "the owner cannot leave");
    let (mut leaver, _) = w.new_member();
    assert_eq!(
        status(&leaver.request("LEAVE_SERVER", json!({"server_id": server_id}))),
        "ok"
    );
    assert_eq!(
        status(&leaver.request("GET_MESSAGES", json!({"channel_id": channel_id}))),
        "forbidden",
        "left means out"
    );

    // Private servers need an invite; invites work once per use.
    let private = w.owner.request("CREATE_SERVER", json!({"name": "private"}));
    let private_id = private["data"]["server_id"].as_str().unwrap().to_string();
    assert_eq!(
        status(&clients[0].request("JOIN_SERVER", json!({"server_id": private_id}))),
        "forbidden"
    );
    let inv = w
        .owner
        .request("CREATE_INVITE", json!({"server_id": private_id, "max_uses": 1}));
    let code = inv["data"]["invite_code"].as_str().unwrap().to_string();
    assert_eq!(
        status(&clients[0].request("JOIN_SERVER", json!({"invite_code": code}))),
        "ok"
    );
    assert_eq!(
        status(&clients[1].request("JOIN_SERVER", json!({"invite_code": code}))),
        "not_found",
        "used up"
    );

    // The owner deletes the server: afterwards it is gone for everyone.
    assert_eq!(
        status(&w.owner.request("DELETE_SERVER", json!({"server_id": server_id}))),
        "ok"
    );
    assert_eq!(
        status(&clients[1].request("LIST_CHANNELS", json!({"server_id": server_id}))),
        "not_found"
    );
    assert_eq!(
        status(
            &w.owner
                .request("POST_MESSAGE", json!({"channel_id": channel_id, "content": "x"}))
        ),
        "not_found"
    );
}

#[test]
fn direct_messages_are_private() {
    let server = TestServer::start();
    let addr = server.addr();
    let (mut a, mut b, mut c) = (Client::connect(addr), Client::connect(addr), Client::connect(addr));
    let (a_id, _) = a.register(&common::unique("a"));
    let (b_id, _) = b.register(&common::unique("b"));
    let (c_id, _) = c.register(&common::unique("c"));

    let dm = a.request("OPEN_DM", json!({"user_ids": [b_id]}));
    assert_eq!(status(&dm), "ok", "{dm}");
    let (dm_server, dm_channel) = (
        dm["data"]["server_id"].as_str().unwrap().to_string(),
        dm["data"]["channel_id"].as_str().unwrap().to_string(),
    );
    let again = b.request("OPEN_DM", json!({"user_ids": [a_id]}));
    assert_eq!(
        again["data"]["server_id"], dm["data"]["server_id"],
        "the same pair always gets the same DM"
    );
    assert_eq!(
        status(&b.request("POST_MESSAGE", json!({"channel_id": dm_channel, "content": "psst"}))),
        "ok"
    );
    let listed = a.request("LIST_SERVERS", json!({}));
    assert!(listed["data"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["server_id"] == dm_server && s["kind"] == "dm"));

    for (action, data) in [
        ("GET_MESSAGES", json!({"channel_id": dm_channel})),
        ("POST_MESSAGE", json!({"channel_id": dm_channel, "content": "hi"})),
        ("SUBSCRIBE", json!({"server_id": dm_server})),
        ("SYNC", json!({"server_id": dm_server, "client_delta_id": 0})),
        ("RESTORE_HISTORY", json!({"channel_id": dm_channel})),
        ("LIST_MEMBERS", json!({"server_id": dm_server})),
        ("LIST_CHANNELS", json!({"server_id": dm_server})),
        ("JOIN_SERVER", json!({"server_id": dm_server})),
    ] {
        assert_eq!(
            status(&c.request(action, data)),
            "forbidden",
            "an outsider's {action} on a DM"
        );
    }
    assert_eq!(
        status(&a.request("CREATE_INVITE", json!({"server_id": dm_server}))),
        "forbidden",
        "no invites into a DM"
    );
    let disc = c.request("DISCOVER_SERVERS", json!({}));
    assert!(
        !disc["data"]["servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["server_id"] == dm_server),
        "DMs are never listed"
    );

    // Call signalling only between users who share a server or DM.
    assert_eq!(
        status(&c.request(
            "CALL_SIGNAL",
            json!({"to_user_id": a_id, "call_id": "x", "payload": {}})
        )),
        "forbidden"
    );
    let r = a.request(
        "CALL_SIGNAL",
        json!({"to_user_id": b_id, "call_id": "call-1", "payload": {"sdp": "offer"}}),
    );
    assert_eq!(status(&r), "ok", "{r}");
    let push = b.poll(Duration::from_secs(5)).expect("the signal reaches the callee");
    assert_eq!(push["action"], "CALL_SIGNAL");
    assert_eq!(push["data"]["from_user_id"], a_id.as_str());
    assert_eq!(push["data"]["payload"]["sdp"], "offer");

    // A group DM: up to 10 others; an 11th is refused.
    let group = a.request("OPEN_DM", json!({"user_ids": [b_id, c_id]}));
    assert_eq!(status(&group), "ok");
    let too_many: Vec<String> = (0..11).map(|i| format!("{}", 1000 + i)).collect();
    assert_eq!(
        status(&a.request("OPEN_DM", json!({"user_ids": too_many}))),
        "bad_request"
    );
}

#[test]
fn switching_user_on_a_connection_ends_the_old_users_subscriptions() {
    let server = TestServer::start();
    let addr = server.addr();
    let mut conn = Client::connect(addr);
    let (_, ann_token) = conn.register(&common::unique("ann"));
    let (_, eve_token) = Client::connect(addr).register(&common::unique("eve"));
    let created = conn.request("CREATE_SERVER", json!({"name": "private"}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let channel_id = created["data"]["channel_id"].as_str().unwrap().to_string();
    assert_eq!(
        status(&conn.request("SUBSCRIBE", json!({"server_id": server_id}))),
        "ok"
    );

    // The same connection becomes eve, who is not a member of ann's server.
    assert_eq!(status(&conn.request("AUTH", json!({"token": eve_token}))), "ok");
    let mut ann = Client::connect(addr);
    assert_eq!(status(&ann.request("AUTH", json!({"token": ann_token}))), "ok");
    let r = ann.request(
        "POST_MESSAGE",
        json!({"channel_id": channel_id, "content": "for members only"}),
    );
    assert_eq!(status(&r), "ok");
    // Fence: once eve's PING is answered, a leaked delta would already have been queued.
    assert_eq!(status(&conn.request("PING", json!({}))), "ok");
    assert!(
        conn.poll(Duration::from_millis(300)).is_none(),
        "eve must not receive ann's server"
    );

    // The same user authenticating again keeps its subscriptions.
    let mut again = Client::connect(addr);
    assert_eq!(status(&again.request("AUTH", json!({"token": ann_token}))), "ok");
    assert_eq!(
        status(&again.request("SUBSCRIBE", json!({"server_id": server_id}))),
        "ok"
    );
    assert_eq!(status(&again.request("AUTH", json!({"token": ann_token}))), "ok");
    ann.request(
        "POST_MESSAGE",
        json!({"channel_id": channel_id, "content": "still here"}),
    );
    let push = again
        .poll(Duration::from_secs(5))
        .expect("re-AUTH as the same user keeps the subscription");
    assert_eq!(push["data"]["delta"]["content"], "still here");
}

#[test]
fn messages_of_a_deleted_channel_are_frozen() {
    let server = TestServer::start();
    let mut ann = Client::connect(server.addr());
    ann.register(&common::unique("ann"));
    let created = ann.request("CREATE_SERVER", json!({"name": "s"}));
    let server_id = created["data"]["server_id"].as_str().unwrap().to_string();
    let ch = ann.request(
        "CREATE_CHANNEL",
        json!({"server_id": server_id, "name": "tmp", "type": "text"}),
    );
    let channel_id = ch["data"]["channel_id"].as_str().unwrap().to_string();
    let posted = ann.request("POST_MESSAGE", json!({"channel_id": channel_id, "content": "hi"}));
    let message_id = posted["data"]["message_id"].as_str().unwrap().to_string();
    assert_eq!(
        status(&ann.request("DELETE_CHANNEL", json!({"channel_id": channel_id}))),
        "ok"
    );
    let r = ann.request("EDIT_MESSAGE", json!({"message_id": message_id, "content": "changed"}));
    assert_eq!(status(&r), "not_found");
    assert_eq!(
        status(&ann.request("DELETE_MESSAGE", json!({"message_id": message_id}))),
        "not_found"
    );
}
