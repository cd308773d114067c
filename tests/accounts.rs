//! Accounts and sessions (SPEC §4 "Session"): REGISTER, LOGIN, AUTH, LOGOUT.

mod common;

use common::{error, success, unique, TestServer, PASSWORD};
use serde_json::json;

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether the connection has a session: a session-only action is not refused as
/// `unauthenticated` (whatever else it answers).
fn has_session(c: &mut common::Client) -> bool {
    let r = c.request("LIST_SERVERS", json!({}));
    r["data"]["code"] != "unauthenticated"
}

#[test]
fn register_returns_user_id_username_and_a_64_hex_token() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let name = unique("ann");
    let r = c.request("REGISTER", json!({"username": name, "password": PASSWORD}));
    let d = success(&r, "REGISTER");
    assert!(
        d["user_id"].as_str().is_some_and(|s| !s.is_empty()),
        "user_id is a non-empty string: {r}"
    );
    assert_eq!(d["username"], json!(name));
    let token = d["token"].as_str().expect("token is a string");
    assert!(is_hex64(token), "token is 64 hex characters: {token:?}");
    assert!(has_session(&mut c), "REGISTER gives the connection a session");
}

#[test]
fn login_with_the_right_password_works() {
    let srv = TestServer::start();
    let name = unique("bob");
    let (user_id, token) = srv.client().register(&name);
    let mut c = srv.client();
    let r = c.request("LOGIN", json!({"username": name, "password": PASSWORD}));
    let d = success(&r, "LOGIN");
    assert_eq!(d["user_id"], json!(user_id));
    assert_eq!(d["username"], json!(name));
    let t = d["token"].as_str().unwrap();
    assert!(is_hex64(t));
    assert_ne!(t, token, "each LOGIN issues a new token");
    assert!(has_session(&mut c));
}

#[test]
fn login_with_wrong_password_or_unknown_user_gives_identical_unauthenticated() {
    let srv = TestServer::start();
    let name = unique("cat");
    srv.client().register(&name);
    let mut c = srv.client();
    let wrong = c.request("LOGIN", json!({"username": name, "password": "not the password"}));
    let m1 = error(&wrong, "LOGIN_RESPONSE", "unauthenticated").to_string();
    let unknown = c.request("LOGIN", json!({"username": unique("nobody"), "password": PASSWORD}));
    let m2 = error(&unknown, "LOGIN_RESPONSE", "unauthenticated").to_string();
    assert_eq!(m1, m2, "the two failures must not be told apart");
    assert_eq!(wrong["data"], unknown["data"]);
    let malformed = c.request("LOGIN", json!({"username": "no such user!", "password": PASSWORD}));
    assert_eq!(
        wrong["data"], malformed["data"],
        "a malformed username fails the same way"
    );
    assert!(!has_session(&mut c));
}

#[test]
fn auth_with_the_token_on_a_new_connection_gives_the_session() {
    let srv = TestServer::start();
    let name = unique("dan");
    let (user_id, token) = srv.client().register(&name);
    let mut c = srv.client();
    assert!(!has_session(&mut c));
    let r = c.request("AUTH", json!({"token": token}));
    let d = success(&r, "AUTH");
    assert_eq!(d["user_id"], json!(user_id));
    assert_eq!(d["username"], json!(name));
    assert!(has_session(&mut c));
}

#[test]
fn auth_with_a_bad_token_gives_unauthenticated() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let r = c.request("AUTH", json!({"token": "0".repeat(64)}));
    error(&r, "AUTH_RESPONSE", "unauthenticated");
    let r = c.request("AUTH", json!({"token": "short"}));
    error(&r, "AUTH_RESPONSE", "unauthenticated");
    assert!(!has_session(&mut c));
}

#[test]
fn duplicate_username_in_another_case_gives_conflict() {
    let srv = TestServer::start();
    let name = unique("eve");
    srv.client().register(&name);
    let mut c = srv.client();
    let r = c.request(
        "REGISTER",
        json!({"username": name.to_uppercase(), "password": PASSWORD}),
    );
    error(&r, "REGISTER_RESPONSE", "conflict");
    let r = c.request("REGISTER", json!({"username": name, "password": PASSWORD}));
    error(&r, "REGISTER_RESPONSE", "conflict");
    assert!(!has_session(&mut c));
}

#[test]
fn after_logout_the_token_gives_unauthenticated_to_auth() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let (_, token) = c.register(&unique("fay"));
    let r = c.request("LOGOUT", json!({}));
    success(&r, "LOGOUT");
    assert!(!has_session(&mut c), "LOGOUT ends the session of its connection");
    let mut d = srv.client();
    let r = d.request("AUTH", json!({"token": token}));
    error(&r, "AUTH_RESPONSE", "unauthenticated");
    assert!(!has_session(&mut d));
}

#[test]
fn logout_ends_the_session_of_another_connection_with_the_same_token() {
    let srv = TestServer::start();
    let mut a = srv.client();
    let (_, token) = a.register(&unique("gus"));
    let mut b = srv.client();
    success(&b.request("AUTH", json!({"token": token})), "AUTH");
    assert!(has_session(&mut b));
    success(&a.request("LOGOUT", json!({})), "LOGOUT");
    assert!(!has_session(&mut b), "the other connection lost its session");
}

#[test]
fn logout_keeps_other_tokens_of_the_same_user() {
    let srv = TestServer::start();
    let name = unique("hal");
    let mut a = srv.client();
    a.register(&name);
    let mut b = srv.client();
    success(
        &b.request("LOGIN", json!({"username": name, "password": PASSWORD})),
        "LOGIN",
    );
    success(&a.request("LOGOUT", json!({})), "LOGOUT");
    assert!(
        has_session(&mut b),
        "a LOGIN token is not revoked by another token's LOGOUT"
    );
}

#[test]
fn register_pipelined_with_a_session_action_in_one_write_works() {
    let srv = TestServer::start();
    let mut c = srv.client();
    let name = unique("ivy");
    let frames = format!(
        "{}\n{}\n{}\n",
        json!({"action": "REGISTER", "id": 1, "data": {"username": name, "password": PASSWORD}}),
        json!({"action": "LIST_SERVERS", "id": 2}),
        json!({"action": "LOGOUT", "id": 3}),
    );
    c.send_raw(frames.as_bytes());
    let r = c.recv();
    assert_eq!(r["id"], 1);
    success(&r, "REGISTER");
    let r = c.recv();
    assert_eq!(r["id"], 2);
    assert_ne!(
        r["data"]["code"], "unauthenticated",
        "a frame pipelined after REGISTER runs under its session: {r}"
    );
    let r = c.recv();
    assert_eq!(r["id"], 3);
    success(&r, "LOGOUT");
}

#[test]
fn failed_register_pipelined_with_a_session_action_leaves_no_session() {
    let srv = TestServer::start();
    let name = unique("jon");
    srv.client().register(&name);
    let mut c = srv.client();
    let frames = format!(
        "{}\n{}\n",
        json!({"action": "REGISTER", "id": 1, "data": {"username": name, "password": PASSWORD}}),
        json!({"action": "LIST_SERVERS", "id": 2}),
    );
    c.send_raw(frames.as_bytes());
    let r = c.recv();
    assert_eq!(r["id"], 1);
    error(&r, "REGISTER_RESPONSE", "conflict");
    let r = c.recv();
    assert_eq!(r["id"], 2);
    error(&r, "LIST_SERVERS_RESPONSE", "unauthenticated");
}

#[test]
fn register_with_a_malformed_username_or_short_password_gives_bad_request() {
    let srv = TestServer::start();
    let mut c = srv.client();
    for data in [
        json!({"username": "has space", "password": PASSWORD}),
        json!({"username": "", "password": PASSWORD}),
        json!({"username": "x".repeat(33), "password": PASSWORD}),
        json!({"username": unique("kai"), "password": "short"}),
        json!({"username": unique("kai")}),
    ] {
        let r = c.request("REGISTER", data);
        error(&r, "REGISTER_RESPONSE", "bad_request");
    }
    assert!(!has_session(&mut c));
}
