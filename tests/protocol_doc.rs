//! docs/PROTOCOL.md, run: every ```text block of the page is one part of a single story,
//! replayed in order against one real server, one connection per named person.
//!
//! In a block, `NAME> LINE` is typed on NAME's connection and `NAME< JSON` is printed on
//! it. Lines typed one after another are sent together; every printed line below them must
//! then arrive (responses in order, pushes in order) before the next line is typed. In a
//! printed line `"..."` matches any value and `"$x"` binds the value on first sight and
//! must match it afterwards; in a typed line `"$x"` is replaced by the bound value. After
//! each block no connection may have an unexpected frame waiting.
//!
//! Also checked: every action of the action table (`src/protocol/action.rs`) has a
//! `#### NAME` section with at least one example, and the variants the page promises
//! (JOIN_SERVER by id and by invite, SUBSCRIBE with and without a cursor, a repeated
//! `client_msg_id`) are among the examples.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use common::{Client, TestServer};
use serde_json::Value;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
const ACTION_TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/protocol/action.rs");

/// The configuration the story runs with: TURN as shown under TURN_CREDENTIALS.
const CONFIG: &str = r#"
turn_secret = "protocol-doc-secret"
turn_uris = ["turn:turn.example.org:3478", "turns:turn.example.org:5349"]
"#;

/// How long a printed line may take to arrive.
const FRAME_WAIT: Duration = Duration::from_secs(10);
/// How long to wait after a block before checking that nothing else arrived.
const QUIET: Duration = Duration::from_millis(150);

/// One line of an example block, with its line number in the page (1-based).
#[derive(Debug, Clone)]
enum Line {
    Typed { line: usize, conn: String, text: String },
    Printed { line: usize, conn: String, frame: Value },
}

#[derive(Debug)]
struct Block {
    /// Line number of the opening fence.
    line: usize,
    /// The nearest heading above the block.
    heading: String,
    lines: Vec<Line>,
}

/// Lines typed together, then the lines printed for them.
#[derive(Debug, Default)]
struct Step {
    typed: Vec<(usize, String, String)>,
    printed: Vec<(usize, String, Value)>,
}

fn read_doc() -> String {
    std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("cannot read {DOC}: {e}"))
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `ann> {...}` / `ann< {...}`.
fn parse_line(line: usize, text: &str) -> Result<Line, String> {
    let cut = text
        .find(['>', '<'])
        .ok_or_else(|| format!("line {line}: expected `NAME> typed` or `NAME< printed`, got {text:?}"))?;
    let (conn, rest) = text.split_at(cut);
    if !is_name(conn) {
        return Err(format!("line {line}: {conn:?} is not a connection name (a-z, 0-9, _)"));
    }
    let body = rest[1..]
        .strip_prefix(' ')
        .ok_or_else(|| format!("line {line}: a space must follow `{conn}{}`", &rest[..1]))?;
    if rest.starts_with('>') {
        return Ok(Line::Typed {
            line,
            conn: conn.to_string(),
            text: body.to_string(),
        });
    }
    let frame: Value =
        serde_json::from_str(body).map_err(|e| format!("line {line}: printed line is not JSON ({e}): {body}"))?;
    if !frame.get("action").is_some_and(Value::is_string) {
        return Err(format!("line {line}: printed frame has no action: {body}"));
    }
    Ok(Line::Printed {
        line,
        conn: conn.to_string(),
        frame,
    })
}

/// Every ```text block of the page; other fenced blocks (```json, ...) are prose.
fn blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut heading = String::from("(top)");
    let mut lines = doc.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((n, l)) = lines.next() {
        let t = l.trim_start();
        if t.starts_with('#') {
            heading = t.trim_start_matches('#').trim().to_string();
            continue;
        }
        let Some(lang) = t.strip_prefix("```") else { continue };
        let body: Vec<(usize, &str)> = lines
            .by_ref()
            .take_while(|(_, l)| !l.trim_start().starts_with("```"))
            .collect();
        if lang.trim() != "text" {
            continue;
        }
        let parsed = body
            .iter()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| parse_line(*i, l))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("docs/PROTOCOL.md: example block at line {n} ({heading}): {e}"));
        assert!(
            parsed.first().is_some_and(|l| matches!(l, Line::Typed { .. })),
            "docs/PROTOCOL.md: example block at line {n} ({heading}) must start with a typed line"
        );
        out.push(Block {
            line: n,
            heading: heading.clone(),
            lines: parsed,
        });
    }
    assert!(!out.is_empty(), "docs/PROTOCOL.md has no ```text example blocks");
    out
}

fn steps(block: &Block) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for l in &block.lines {
        match l.clone() {
            Line::Typed { line, conn, text } => {
                if out.last().is_none_or(|s| !s.printed.is_empty()) {
                    out.push(Step::default());
                }
                out.last_mut().unwrap().typed.push((line, conn, text));
            }
            Line::Printed { line, conn, frame } => out.last_mut().unwrap().printed.push((line, conn, frame)),
        }
    }
    out
}

/// A frame the server sent unasked: no `id`, and not a response or `ERROR`.
fn is_push(frame: &Value) -> bool {
    let action = frame["action"].as_str().unwrap_or("");
    frame.get("id").is_none() && !action.ends_with("_RESPONSE") && action != "ERROR"
}

fn placeholder(s: &str) -> Option<&str> {
    s.strip_prefix('$').filter(|n| {
        n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Whether `actual` matches `expected`: same structure and values; `"..."` matches any
/// value, `"$x"` binds (or must equal) `binds[x]`.
fn check(expected: &Value, actual: &Value, binds: &mut HashMap<String, Value>, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(s), _) if s == "..." => Ok(()),
        (Value::String(s), _) if placeholder(s).is_some() => {
            let name = placeholder(s).unwrap_or_default();
            match binds.get(name) {
                Some(v) if v == actual => Ok(()),
                Some(v) => Err(format!("{path}: ${name} was {v} earlier, server says {actual}")),
                None => {
                    binds.insert(name.to_string(), actual.clone());
                    Ok(())
                }
            }
        }
        (Value::Object(e), Value::Object(a)) => {
            for k in e.keys().chain(a.keys().filter(|k| !e.contains_key(*k))) {
                match (e.get(k), a.get(k)) {
                    (Some(ev), Some(av)) => check(ev, av, binds, &format!("{path}.{k}"))?,
                    (Some(_), None) => return Err(format!("{path}.{k} is missing")),
                    (None, Some(av)) => return Err(format!("{path}.{k} = {av} is not in the doc")),
                    (None, None) => {}
                }
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .try_for_each(|(i, (ev, av))| check(ev, av, binds, &format!("{path}[{i}]"))),
        _ if expected == actual => Ok(()),
        _ => Err(format!("{path}: doc says {expected}, server says {actual}")),
    }
}

/// A typed line with every `"$x"` replaced by the JSON of `binds[x]`.
fn substitute(line: usize, text: &str, binds: &HashMap<String, Value>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("\"$") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let token = &after[..end];
        match placeholder(token) {
            Some(name) => {
                let v = binds.get(name).unwrap_or_else(|| {
                    panic!("docs/PROTOCOL.md line {line}: ${name} is used before a printed line names it")
                });
                out.push_str(&v.to_string());
            }
            None => out.push_str(&rest[start..start + 1 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The wire names of the action table in src/protocol/action.rs.
fn table_actions() -> Vec<String> {
    let src = std::fs::read_to_string(ACTION_TABLE).unwrap_or_else(|e| panic!("cannot read {ACTION_TABLE}: {e}"));
    let start = src.find("const TABLE").expect("action.rs has a `const TABLE`");
    let table = &src[start..];
    let table = &table[..table.find("];").expect("TABLE ends with `];`")];
    let names: Vec<String> = table
        .lines()
        .filter_map(|l| l.trim().strip_prefix("(\"")?.split('"').next().map(str::to_string))
        .collect();
    assert!(
        names.len() >= 30,
        "read only {} actions from the action table",
        names.len()
    );
    names
}

/// The canonical name of a typed action (`post` -> `POST_MESSAGE`).
fn canonical(action: &str) -> String {
    match action.to_ascii_uppercase().as_str() {
        "POST" => "POST_MESSAGE".into(),
        "RESTORE" => "RESTORE_HISTORY".into(),
        a => a.to_string(),
    }
}

/// Every typed frame that is JSON with an action: (canonical action, data).
fn typed_requests(blocks: &[Block]) -> Vec<(String, Value)> {
    blocks
        .iter()
        .flat_map(|b| &b.lines)
        .filter_map(|l| match l {
            Line::Typed { text, .. } => serde_json::from_str::<Value>(text).ok(),
            Line::Printed { .. } => None,
        })
        .filter_map(|v| {
            Some((
                canonical(v.get("action")?.as_str()?),
                v.get("data").cloned().unwrap_or(Value::Null),
            ))
        })
        .collect()
}

#[test]
fn every_action_has_a_section_and_an_example() {
    let doc = read_doc();
    let blocks = blocks(&doc);
    let requests = typed_requests(&blocks);
    let headings: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("#### "))
        .map(str::trim)
        .collect();
    let typed: BTreeSet<&str> = requests.iter().map(|(a, _)| a.as_str()).collect();
    let mut missing = Vec::new();
    for name in table_actions() {
        if !headings.contains(name.as_str()) {
            missing.push(format!("{name}: no `#### {name}` section"));
        }
        if !typed.contains(name.as_str()) {
            missing.push(format!("{name}: no example request"));
        }
    }
    let has = |action: &str, pred: &dyn Fn(&Value) -> bool| requests.iter().any(|(a, d)| a == action && pred(d));
    if !has("JOIN_SERVER", &|d| d.get("server_id").is_some()) {
        missing.push("JOIN_SERVER by server_id: no example".into());
    }
    if !has("JOIN_SERVER", &|d| d.get("invite_code").is_some()) {
        missing.push("JOIN_SERVER by invite_code: no example".into());
    }
    if !has("SUBSCRIBE", &|d| d.get("client_delta_id").is_some()) {
        missing.push("SUBSCRIBE with client_delta_id: no example".into());
    }
    if !has("SUBSCRIBE", &|d| d.get("client_delta_id").is_none()) {
        missing.push("SUBSCRIBE without client_delta_id: no example".into());
    }
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    for (a, d) in &requests {
        if let (true, Some(k)) = (a == "POST_MESSAGE", d.get("client_msg_id")) {
            *keys.entry(k.to_string()).or_default() += 1;
        }
    }
    if !keys.values().any(|n| *n >= 2) {
        missing.push("POST_MESSAGE repeating a client_msg_id: no example".into());
    }
    assert!(
        missing.is_empty(),
        "docs/PROTOCOL.md is incomplete:\n{}",
        missing.join("\n")
    );
}

/// Runs the printed lines of one step for one connection.
struct Expect<'a> {
    conn: &'a str,
    responses: VecDeque<(usize, Value)>,
    pushes: VecDeque<(usize, Value)>,
    /// The connection typed a SUBSCRIBE in this step: no PUBLISH_DELTA before its answer.
    subscribing: bool,
}

fn run_expect(e: Expect, client: &mut Client, binds: &mut HashMap<String, Value>, typed: &str) {
    let Expect {
        conn,
        mut responses,
        mut pushes,
        mut subscribing,
    } = e;
    let deadline = Instant::now() + FRAME_WAIT;
    while !responses.is_empty() || !pushes.is_empty() {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let Some(frame) = client.poll(left) else {
            let waiting: Vec<String> = responses
                .iter()
                .chain(&pushes)
                .map(|(l, v)| format!("  line {l}: {v}"))
                .collect();
            panic!(
                "after typing\n{typed}\n{conn} got nothing within {FRAME_WAIT:?}; still expected:\n{}",
                waiting.join("\n")
            );
        };
        let push = is_push(&frame);
        if push && subscribing && frame["action"] == "PUBLISH_DELTA" {
            panic!("after typing\n{typed}\n{conn} got a catch-up delta before the SUBSCRIBE answer: {frame}");
        }
        if !push && frame["action"] == "SUBSCRIBE_RESPONSE" {
            subscribing = false;
        }
        let queue = if push { &mut pushes } else { &mut responses };
        let kind = if push { "push" } else { "response" };
        let Some((line, expected)) = queue.pop_front() else {
            panic!("after typing\n{typed}\n{conn} got an unexpected {kind}: {frame}");
        };
        let mut scratch = binds.clone();
        if let Err(why) = check(&expected, &frame, &mut scratch, "") {
            panic!(
                "docs/PROTOCOL.md line {line} does not match the server.\nafter typing\n{typed}\n\
                 {conn} doc:    {expected}\n{conn} server: {frame}\n{why}"
            );
        }
        *binds = scratch;
    }
}

#[test]
fn protocol_doc_examples_run_against_a_real_server() {
    let doc = read_doc();
    let blocks = blocks(&doc);
    let srv = TestServer::start_with(&[], Some(CONFIG));
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    let mut binds: HashMap<String, Value> = HashMap::new();
    let mut ran = 0;
    for block in &blocks {
        for step in steps(block) {
            let mut typed_desc = Vec::new();
            let mut subscribing = BTreeSet::new();
            for (line, conn, text) in &step.typed {
                let sent = substitute(*line, text, &binds);
                if serde_json::from_str::<Value>(&sent)
                    .ok()
                    .and_then(|v| v.get("action").and_then(Value::as_str).map(canonical))
                    .is_some_and(|a| a == "SUBSCRIBE")
                {
                    subscribing.insert(conn.as_str());
                }
                typed_desc.push(format!("  line {line}: {conn}> {sent}"));
                clients
                    .entry(conn.clone())
                    .or_insert_with(|| srv.client())
                    .send_raw(format!("{sent}\n").as_bytes());
                ran += 1;
            }
            let typed = typed_desc.join("\n");
            // Per connection, in order of first appearance.
            let mut order: Vec<&str> = Vec::new();
            let mut expects: HashMap<&str, Expect> = HashMap::new();
            for (line, conn, frame) in &step.printed {
                let e = expects.entry(conn.as_str()).or_insert_with(|| {
                    order.push(conn.as_str());
                    Expect {
                        conn: conn.as_str(),
                        responses: VecDeque::new(),
                        pushes: VecDeque::new(),
                        subscribing: subscribing.contains(conn.as_str()),
                    }
                });
                if is_push(frame) {
                    e.pushes.push_back((*line, frame.clone()));
                } else {
                    e.responses.push_back((*line, frame.clone()));
                }
            }
            for conn in order {
                let e = expects.remove(conn).expect("collected above");
                let client = clients.entry(conn.to_string()).or_insert_with(|| srv.client());
                run_expect(e, client, &mut binds, &typed);
            }
        }
        // Nothing else may be waiting on any connection.
        std::thread::sleep(QUIET);
        for (conn, client) in clients.iter_mut() {
            if let Some(frame) = client.poll(Duration::from_millis(1)) {
                panic!(
                    "docs/PROTOCOL.md block at line {} ({}): {conn} got a frame the doc does not show: {frame}",
                    block.line, block.heading
                );
            }
        }
    }
    assert!(ran >= 90, "only {ran} lines typed: is the story complete?");
}

#[test]
fn the_matcher_binds_and_rejects() {
    let mut binds = HashMap::new();
    let e: Value = serde_json::json!({"a": "$x", "b": "...", "c": [1, "$x"]});
    check(
        &e,
        &serde_json::json!({"a": "7", "b": 1, "c": [1, "7"]}),
        &mut binds,
        "",
    )
    .unwrap();
    assert_eq!(binds["x"], "7");
    assert!(check(
        &e,
        &serde_json::json!({"a": "7", "b": 1, "c": [1, "8"]}),
        &mut binds,
        ""
    )
    .is_err());
    assert!(check(&e, &serde_json::json!({"a": "7", "c": [1, "7"]}), &mut binds, "").is_err());
    assert!(check(
        &e,
        &serde_json::json!({"a": "7", "b": 1, "c": [1, "7"], "d": 0}),
        &mut binds,
        ""
    )
    .is_err());
    assert!(check(
        &serde_json::json!({"n": 2}),
        &serde_json::json!({"n": 3}),
        &mut binds,
        ""
    )
    .is_err());
    assert_eq!(
        substitute(1, r#"{"id":"$x","y":"$5"}"#, &binds),
        r#"{"id":"7","y":"$5"}"#
    );
}
