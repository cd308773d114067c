//! chimed setup before a run: users, servers, channels, memberships. A plain blocking client;
//! every read has a timeout and every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Lines read while waiting for one response (pushes are skipped) before giving up.
const MAX_SKIPPED: usize = 100_000;

pub struct Blocking {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_id: u64,
}

impl Blocking {
    pub fn connect(addr: SocketAddr) -> Result<Blocking, String> {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Blocking {
            reader: BufReader::new(s),
            writer,
            next_id: 1,
        })
    }

    /// Sends a request and returns the `data` of its success response.
    pub fn request(&mut self, action: &str, data: Value) -> Result<Map<String, Value>, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line =
            serde_json::to_vec(&json!({"action": action, "id": id, "data": data})).map_err(|e| e.to_string())?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| format!("{action}: write: {e}"))?;
        let deadline = Instant::now() + TIMEOUT;
        let mut buf = Vec::new();
        for _ in 0..MAX_SKIPPED {
            if Instant::now() > deadline {
                break;
            }
            buf.clear();
            let n = (&mut self.reader)
                .take(8 << 20)
                .read_until(b'\n', &mut buf)
                .map_err(|e| format!("{action}: read: {e}"))?;
            if n == 0 {
                return Err(format!("{action}: the server closed the connection"));
            }
            let Ok(Value::Object(mut frame)) = serde_json::from_slice::<Value>(&buf) else {
                return Err(format!(
                    "{action}: the server sent a line that is not a JSON object: {:?}",
                    String::from_utf8_lossy(&buf[..buf.len().min(200)])
                ));
            };
            if frame.get("id") != Some(&json!(id)) {
                continue; // a push, or an answer to something else
            }
            let Some(Value::Object(d)) = frame.remove("data") else {
                return Err(format!("{action}: response without data"));
            };
            if d.get("status") != Some(&json!("success")) {
                return Err(format!("{action} failed: {}", Value::Object(d)));
            }
            return Ok(d);
        }
        Err(format!("{action}: no response within {TIMEOUT:?}"))
    }
}

fn string(d: &Map<String, Value>, key: &str, action: &str) -> Result<String, String> {
    d.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{action}: response has no string {key}"))
}

/// What the connections of a run share.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub tokens: Vec<String>,
    pub server_ids: Vec<String>,
    /// `channels[s]`: the text channels of server `s`.
    pub channels: Vec<Vec<String>>,
    /// `heads[s]`: server `s`'s delta_id after setup (the cursor churn subscribes with).
    pub heads: Vec<i64>,
}

/// Registers `users` users, has the first create `servers` public servers with `channels`
/// text channels each, and has the others join them.
pub fn prepare(addr: SocketAddr, users: usize, servers: usize, channels: usize) -> Result<World, String> {
    let run = format!("{:x}{:x}", std::process::id(), crate::util::now_ns() % 0xff_ffff);
    let mut w = World::default();
    let mut owner = Blocking::connect(addr)?;
    let mut others = Vec::new();
    for i in 0..users {
        let mut c = if i == 0 { None } else { Some(Blocking::connect(addr)?) };
        let name = format!("flood{run}u{i}");
        let d = c
            .as_mut()
            .unwrap_or(&mut owner)
            .request("REGISTER", json!({"username": name, "password": "flood-password-1"}))?;
        w.tokens.push(string(&d, "token", "REGISTER")?);
        if let Some(c) = c {
            others.push(c);
        }
    }
    for s in 0..servers {
        let d = owner.request(
            "CREATE_SERVER",
            json!({"name": format!("flood {run} {s}"), "is_public": true}),
        )?;
        let server_id = string(&d, "server_id", "CREATE_SERVER")?;
        let mut chans = vec![string(&d, "channel_id", "CREATE_SERVER")?];
        for c in 1..channels {
            let d = owner.request(
                "CREATE_CHANNEL",
                json!({"server_id": server_id, "name": format!("flood-{c}"), "type": "text"}),
            )?;
            chans.push(string(&d, "channel_id", "CREATE_CHANNEL")?);
        }
        for o in &mut others {
            o.request("JOIN_SERVER", json!({"server_id": server_id}))?;
        }
        w.server_ids.push(server_id);
        w.channels.push(chans);
    }
    let d = owner.request("LIST_SERVERS", json!({}))?;
    let list = d.get("servers").and_then(Value::as_array).cloned().unwrap_or_default();
    for sid in &w.server_ids {
        let head = list
            .iter()
            .find(|s| s.get("server_id").and_then(Value::as_str) == Some(sid.as_str()))
            .and_then(|s| s.get("server_delta_id"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        w.heads.push(head);
    }
    Ok(w)
}
