//! The README's netcat session, replayed against a real server: every line the README
//! says the server prints must be what the server prints (values written `"..."` only
//! need to be present).

mod common;

use common::{ping, Client, TestServer};
use serde_json::Value;

/// One step of the session: a line typed, then the lines the server prints for it.
struct Step {
    typed: String,
    printed: Vec<Value>,
}

/// A line the server prints: a JSON object whose action ends in `_RESPONSE` or is `ERROR`.
fn server_line(line: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(line).ok()?;
    let action = v.get("action")?.as_str()?;
    (action.ends_with("_RESPONSE") || action == "ERROR").then_some(v)
}

/// The fenced block that starts with `$ nc ...`, cut into steps.
fn session() -> Vec<Step> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("read README.md");
    let mut lines = readme.lines();
    let mut block = None;
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with("```") {
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.trim_start().starts_with("```"))
                .collect();
            if body.first().is_some_and(|f| f.starts_with("$ nc ")) {
                block = Some(body);
                break;
            }
        }
    }
    let block = block.expect("README.md has no fenced block starting with `$ nc 127.0.0.1 7700`");
    let mut steps: Vec<Step> = Vec::new();
    for line in &block[1..] {
        match server_line(line) {
            Some(v) => steps
                .last_mut()
                .unwrap_or_else(|| panic!("README session prints {line} before anything is typed"))
                .printed
                .push(v),
            None => steps.push(Step {
                typed: line.to_string(),
                printed: Vec::new(),
            }),
        }
    }
    assert!(
        steps.len() >= 5,
        "README session is too short: {} typed lines",
        steps.len()
    );
    steps
}

/// Whether `actual` matches `expected`: same structure and values, except that the
/// string `"..."` in `expected` matches any value.
fn check(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(s), _) if s == "..." => Ok(()),
        (Value::Object(e), Value::Object(a)) => {
            for k in e.keys().chain(a.keys()) {
                match (e.get(k), a.get(k)) {
                    (Some(ev), Some(av)) => check(ev, av, &format!("{path}.{k}"))?,
                    (Some(_), None) => return Err(format!("{path}.{k} is missing")),
                    (None, Some(av)) => return Err(format!("{path}.{k} = {av} is not in the README")),
                    (None, None) => unreachable!(),
                }
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .try_for_each(|(i, (ev, av))| check(ev, av, &format!("{path}[{i}]"))),
        _ if expected == actual => Ok(()),
        _ => Err(format!("{path}: README says {expected}, server says {actual}")),
    }
}

fn expect(step: &Step, expected: &Value, actual: &Value) {
    if let Err(e) = check(expected, actual, "") {
        panic!("after typing {}\nREADME: {expected}\nserver: {actual}\n{e}", step.typed);
    }
}

#[test]
fn readme_netcat_session_replayed_line_by_line_matches() {
    let steps = session();
    let srv = TestServer::start();
    let mut c = Client::connect(srv.addr());
    for step in &steps {
        c.send_raw(format!("{}\n", step.typed).as_bytes());
        for expected in &step.printed {
            let actual = c.recv();
            expect(step, expected, &actual);
        }
    }
    // Nothing else was printed: the next frame is the answer to this PING.
    ping(&mut c);
}

#[test]
fn readme_netcat_session_sent_in_one_write_matches() {
    let steps = session();
    let srv = TestServer::start();
    let mut c = Client::connect(srv.addr());
    let all: String = steps.iter().map(|s| format!("{}\n", s.typed)).collect();
    c.send_raw(all.as_bytes());
    for step in &steps {
        for expected in &step.printed {
            let actual = c.recv();
            expect(step, expected, &actual);
        }
    }
    ping(&mut c);
}
