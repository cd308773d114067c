//! SPEC §5 guarantee 4 on MySQL/MariaDB, against a real database that goes away: chimed
//! runs on a throwaway `mariadbd` of its own (own datadir from `mariadb-install-db`, own
//! port; never the shared server on 3306), which the test stalls (SIGSTOP), crashes
//! (SIGKILL) and shuts down (SIGTERM) mid-run and starts again. Each time:
//!
//! - chimed stays up; PING on another connection answers within [`PING_BOUND`] while a
//!   write is pending;
//! - writes answer `unavailable` within [`WRITE_BOUND`], and nothing is acknowledged that
//!   was not written;
//! - once the database is back, writes succeed again without restarting chimed, and every
//!   acknowledged post is in the log (SYNC from 0).
//!
//! And after a clean restart (SIGTERM, start) every worker's connection is stale, yet the
//! first reads and the first write succeed (each stale connection is replaced at once).
//!
//! Runs whatever `CHIMED_TEST_BACKEND` says (it is about MySQL). Needs the MariaDB server
//! binaries (`mariadb-install-db`, `mariadbd`; Debian: `apt-get install mariadb-server`,
//! which `.ci/run` does): without them it fails, it does not skip.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{error, ping_within, success, unique, Client, TestServer};
use serde_json::{json, Value};

/// How long a PING may take while the database is down.
const PING_BOUND: Duration = Duration::from_secs(1);
/// How long a write may take to answer `unavailable` while the database is down.
const WRITE_BOUND: Duration = Duration::from_secs(15);
/// chimed's storage timeout in this test.
const STORAGE_TIMEOUT_MS: u64 = 2000;
/// How long writes may take to succeed again once the database is back.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);
/// How long `mariadb-install-db` and a `mariadbd` start or stop may take.
const MARIADB_BOUND: Duration = Duration::from_secs(90);

/// A program from PATH or the usual sbin directories (mariadbd lives in /usr/sbin, which
/// is not on every user's PATH).
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/sbin",
        "/usr/local/sbin",
        "/usr/local/mysql/bin",
        "/usr/local/bin",
        "/usr/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    names
        .iter()
        .flat_map(|n| dirs.iter().map(move |d| d.join(n)))
        .find(|p| p.is_file())
}

fn require_program(names: &[&str]) -> PathBuf {
    find_program(names).unwrap_or_else(|| {
        panic!(
            "this test needs the MariaDB server binaries ({}) and found none on PATH or in /usr/sbin: install \
             them (Debian/Ubuntu: `apt-get install mariadb-server`; `bash .ci/run` does it)",
            names.join(" or ")
        )
    })
}

/// The name of the user we run as (mariadbd wants `--user`, and refuses root without it).
fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("run `id -un`");
    assert!(out.status.success(), "`id -un` failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", std::io::Error::last_os_error());
}

/// A throwaway MariaDB server: its own datadir under a temp dir, its own port. Killed and
/// removed on drop.
struct Mariadb {
    dir: PathBuf,
    port: u16,
    mariadbd: PathBuf,
    user: String,
    child: Option<Child>,
}

impl Mariadb {
    /// Installs a fresh datadir (root without a password) and starts the server on it.
    fn install_and_start() -> Mariadb {
        let install = require_program(&["mariadb-install-db", "mysql_install_db"]);
        let mariadbd = require_program(&["mariadbd", "mysqld"]);
        let user = current_user();
        let dir = common::unique_dir("mariadb");
        let mut db = Mariadb {
            dir,
            port: free_port(),
            mariadbd,
            user,
            child: None,
        };
        let t = Instant::now();
        let log = std::fs::File::create(db.dir.join("install.log")).expect("create install.log");
        let mut child = Command::new(&install)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", db.datadir().display()))
            .arg(format!("--user={}", db.user))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            // Passed on to the bootstrap mariadbd: two instances installing at once in the
            // shared /tmp collided on their temporary tables ("Unknown table
            // 'mysql.tmp_user_sys'"), so each gets a tmpdir of its own.
            .arg(format!("--tmpdir={}", db.tmpdir().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", install.display()));
        let status = wait_bounded(&mut child, MARIADB_BOUND)
            .unwrap_or_else(|| panic!("{} did not finish within {MARIADB_BOUND:?}", install.display()));
        assert!(
            status.success(),
            "{} failed ({status}):\n{}",
            install.display(),
            tail(&db.dir.join("install.log"))
        );
        eprintln!("mariadb-install-db: {:?}", t.elapsed());
        db.start();
        db
    }

    fn datadir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The instance's own temporary directory (created on first use).
    fn tmpdir(&self) -> PathBuf {
        let dir = self.dir.join("tmp");
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    /// The server URL, without a database.
    fn server_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.server_url())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("mariadbd is not running").id()
    }

    /// Starts mariadbd on the datadir and port, and waits until it answers.
    fn start(&mut self) {
        assert!(self.child.is_none(), "mariadbd is already running");
        let t = Instant::now();
        let log = self.dir.join("mariadbd.log");
        let child = Command::new(&self.mariadbd)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.datadir().display()))
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!("--pid-file={}", self.dir.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--tmpdir={}", self.tmpdir().display()))
            .arg("--bind-address=127.0.0.1")
            .arg("--skip-networking=0")
            .arg(format!("--user={}", self.user))
            .arg("--skip-log-bin")
            .arg("--innodb-buffer-pool-size=64M")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.mariadbd.display()));
        self.child = Some(child);
        let deadline = Instant::now() + MARIADB_BOUND;
        loop {
            if chimed::store::open(&self.server_url(), Duration::from_secs(2)).is_ok() {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("wait for mariadbd") {
                self.child = None;
                panic!("mariadbd exited ({status}) before answering; log:\n{}", tail(&log));
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not answer on port {} within {MARIADB_BOUND:?}; log:\n{}",
                self.port,
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("mariadbd started on port {} in {:?}", self.port, t.elapsed());
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing (a wedged database).
    fn freeze(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    fn thaw(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// Sends `sig` (SIGKILL: a crash; SIGTERM: a shutdown) and waits for the exit.
    fn stop(&mut self, sig: libc::c_int) {
        let mut child = self.child.take().expect("mariadbd is not running");
        signal(child.id(), sig);
        let t = Instant::now();
        if wait_bounded(&mut child, MARIADB_BOUND).is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mariadbd did not exit within {MARIADB_BOUND:?} of signal {sig}");
        }
        eprintln!("mariadbd stopped by signal {sig} in {:?}", t.elapsed());
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL also ends a stopped process
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- throwaway mariadbd log ({}) ----\n{}",
                self.dir.display(),
                tail(&self.dir.join("mariadbd.log"))
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_bounded(child: &mut Child, bound: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The chat under test: one community, one channel, and the posts chimed acknowledged.
struct Chat {
    token: String,
    server_id: String,
    channel_id: String,
    /// delta_id -> content of every acknowledged post.
    acked: BTreeMap<i64, String>,
    /// Contents of posts answered `unavailable` when the database was certainly down
    /// before they were sent: none of them may be in the log.
    refused: HashSet<String>,
}

impl Chat {
    fn post_frame(&self, id: &str, key: &str) -> Value {
        json!({"action": "POST_MESSAGE", "id": id,
            "data": {"channel_id": self.channel_id, "content": format!("post {key}"), "client_msg_id": key}})
    }

    /// Records a POST_MESSAGE response; returns whether it succeeded. Anything other than
    /// success or `unavailable` fails the test.
    fn record(&mut self, r: &Value, key: &str) -> bool {
        assert_eq!(r["action"], "POST_MESSAGE_RESPONSE", "{r}");
        if r["data"]["status"] == "success" {
            let delta_id = r["data"]["delta_id"].as_i64().expect("delta_id");
            self.acked.insert(delta_id, format!("post {key}"));
            true
        } else {
            error(r, "POST_MESSAGE_RESPONSE", "unavailable");
            false
        }
    }

    /// Posts `n` messages (keys `tag-0..`), each of which must succeed.
    fn post_ok(&mut self, c: &mut Client, tag: &str, n: usize) {
        for i in 0..n {
            let key = format!("{tag}-{i}");
            let r = c.request("POST_MESSAGE", self.post_frame("", &key)["data"].clone());
            assert!(self.record(&r, &key), "post {key} failed with the database up: {r}");
        }
    }

    /// Posts with the database down: sends the post on `writer`, PINGs on `other` until it
    /// is answered (each PING within [`PING_BOUND`]); the answer must be `unavailable`
    /// within [`WRITE_BOUND`]. Returns how long the write took.
    fn post_refused(&mut self, writer: &mut Client, other: &mut Client, key: &str) -> Duration {
        writer.send(&self.post_frame(key, key));
        let start = Instant::now();
        let mut pings = 0;
        let mut slowest_ping = Duration::ZERO;
        let r = loop {
            slowest_ping = slowest_ping.max(ping_within(other, PING_BOUND));
            pings += 1;
            if let Some(frame) = writer.poll(Duration::from_millis(100)) {
                break frame;
            }
            assert!(
                start.elapsed() < WRITE_BOUND,
                "POST {key}: no answer within {WRITE_BOUND:?} with the database down"
            );
        };
        let took = start.elapsed();
        assert_eq!(r["id"], json!(key), "{r}");
        assert!(
            !self.record(&r, key),
            "POST {key} succeeded with the database down: {r}"
        );
        self.refused.insert(format!("post {key}"));
        eprintln!("  {key}: unavailable after {took:?}; {pings} PINGs meanwhile, slowest {slowest_ping:?}");
        took
    }

    /// Retries one post (same `client_msg_id`, so it lands at most once) until it
    /// succeeds; the first attempts after the database returns may still be `unavailable`.
    /// Returns how long it took.
    fn post_until_ok(&mut self, c: &mut Client, key: &str) -> Duration {
        let start = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let r = c.request("POST_MESSAGE", self.post_frame("", key)["data"].clone());
            if self.record(&r, key) {
                let took = start.elapsed();
                eprintln!("  {key}: success after {took:?} ({attempts} attempts)");
                return took;
            }
            assert!(
                start.elapsed() < RECOVERY_BOUND,
                "writes did not succeed again within {RECOVERY_BOUND:?} of the database's return: {r}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The whole log via SYNC pages (reads retried while the database settles), checked
    /// against what was acknowledged and refused.
    fn check_log(&self, c: &mut Client) {
        let mut present: BTreeMap<i64, String> = BTreeMap::new();
        let mut cursor = 0;
        let start = Instant::now();
        let mut refused_reads = 0;
        loop {
            let r = c.request(
                "SYNC",
                json!({"server_id": self.server_id, "client_delta_id": cursor, "limit": 1000}),
            );
            if r["data"]["status"] != "success" {
                error(&r, "SYNC_RESPONSE", "unavailable");
                assert!(start.elapsed() < RECOVERY_BOUND, "SYNC keeps failing: {r}");
                refused_reads += 1;
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            for d in r["data"]["missing_deltas"].as_array().unwrap() {
                let id = d["delta_id"].as_i64().unwrap();
                assert!(id > cursor, "delta ids out of order: {id} after {cursor}");
                cursor = id;
                if d["type"] == "message" {
                    present.insert(id, d["content"].as_str().unwrap().to_string());
                }
            }
            if !r["data"]["has_more"].as_bool().unwrap() {
                break;
            }
        }
        for (delta_id, content) in &self.acked {
            assert_eq!(
                present.get(delta_id),
                Some(content),
                "acknowledged post {content:?} (delta {delta_id}) is not in the log"
            );
        }
        let mut seen = HashSet::new();
        for content in present.values() {
            assert!(
                !self.refused.contains(content),
                "{content:?} was answered `unavailable` but is in the log"
            );
            assert!(seen.insert(content), "{content:?} is in the log twice");
        }
        eprintln!(
            "  log: {} messages, all {} acknowledged posts present ({refused_reads} SYNCs answered `unavailable` first)",
            present.len(),
            self.acked.len()
        );
    }
}

#[test]
fn mariadb_stalled_crashed_and_shut_down_then_back_without_restarting_chimed() {
    // Declared first, so it is dropped last: chimed goes before its database.
    let mut db = Mariadb::install_and_start();
    let config = format!("storage_timeout_ms = {STORAGE_TIMEOUT_MS}\n");
    let srv = TestServer::start_with_db(&db.url("chimed_outage"), &["--rate-limits", "off"], Some(&config));
    let chimed_pid = srv.pid();

    let mut owner = srv.client();
    let (_, token) = owner.register(&unique("owner"));
    let created = owner.request("CREATE_SERVER", json!({"name": "outage"}));
    let d = success(&created, "CREATE_SERVER");
    let mut chat = Chat {
        token,
        server_id: d["server_id"].as_str().unwrap().to_string(),
        channel_id: d["channel_id"].as_str().unwrap().to_string(),
        acked: BTreeMap::new(),
        refused: HashSet::new(),
    };
    let mut writer = srv.client();
    success(&writer.request("AUTH", json!({"token": chat.token})), "AUTH");
    let mut other = srv.client();
    chat.post_ok(&mut writer, "before", 50);

    // ---- 1. stall: SIGSTOP, the server keeps its connections but answers nothing ----
    eprintln!("phase 1: mariadbd stalled (SIGSTOP)");
    db.freeze();
    let mut slowest = Duration::ZERO;
    for key in ["stall-a", "stall-b"] {
        slowest = slowest.max(chat.post_refused(&mut writer, &mut other, key));
    }
    // A REGISTER (a read, then a write) is refused too, and a new connection is served.
    let mut fresh = srv.client();
    let name = unique("stalled");
    let t = Instant::now();
    let r = fresh.request("REGISTER", json!({"username": name, "password": common::PASSWORD}));
    error(&r, "REGISTER_RESPONSE", "unavailable");
    eprintln!("  REGISTER: unavailable after {:?}", t.elapsed());
    ping_within(&mut fresh, PING_BOUND);
    db.thaw();
    eprintln!("phase 1: mariadbd resumed (SIGCONT)");
    chat.post_until_ok(&mut writer, "after-stall");
    chat.post_ok(&mut writer, "stall-ok", 20);
    // Nothing of the refused REGISTER was written: the name is free.
    let r = fresh.request("REGISTER", json!({"username": name, "password": common::PASSWORD}));
    success(&r, "REGISTER");
    chat.check_log(&mut owner);

    // ---- 2. crash: SIGKILL in the middle of a burst of pipelined posts ----
    eprintln!("phase 2: mariadbd killed (SIGKILL) mid-burst");
    const BURST: usize = 300;
    let mut burst = Vec::new();
    for i in 0..BURST {
        let key = format!("burst-{i}");
        burst.extend_from_slice(chat.post_frame(&key, &key).to_string().as_bytes());
        burst.push(b'\n');
    }
    writer.send_raw(&burst);
    for i in 0..BURST {
        if i == 40 {
            db.stop(libc::SIGKILL);
        }
        let r = writer.recv();
        let key = r["id"].as_str().expect("string id").to_string();
        assert_eq!(key, format!("burst-{i}"), "answers come in order: {r}");
        // Success or `unavailable`; which ones made it is not knowable in advance (a
        // COMMIT in flight when the server died), so they are not counted as refused.
        chat.record(&r, &key);
    }
    let burst_acked = chat.acked.values().filter(|c| c.starts_with("post burst-")).count();
    eprintln!("  burst: {burst_acked} of {BURST} acknowledged");
    for key in ["down-a", "down-b"] {
        slowest = slowest.max(chat.post_refused(&mut writer, &mut other, key));
    }
    db.start();
    chat.post_until_ok(&mut writer, "after-crash");
    chat.post_ok(&mut writer, "crash-ok", 20);
    chat.check_log(&mut owner);

    // ---- 3. shutdown: SIGTERM, the server closes its connections and exits ----
    eprintln!("phase 3: mariadbd shut down (SIGTERM)");
    db.stop(libc::SIGTERM);
    for key in ["term-a", "term-b"] {
        slowest = slowest.max(chat.post_refused(&mut writer, &mut other, key));
    }
    db.start();
    chat.post_until_ok(&mut writer, "after-shutdown");
    chat.post_ok(&mut writer, "term-ok", 20);
    chat.check_log(&mut owner);

    // chimed was never restarted.
    assert_eq!(srv.pid(), chimed_pid);
    ping_within(&mut other, PING_BOUND);
    eprintln!("slowest `unavailable` answer: {slowest:?} (bound {WRITE_BOUND:?})");
}

/// Sends `n` read requests at once on `c` (so every reader thread gets some) and returns
/// the responses, in order.
fn pipelined_reads(c: &mut Client, n: usize, server_id: &str, channel_id: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    for i in 0..n {
        let f = match i % 3 {
            0 => json!({"action": "LIST_SERVERS", "id": i, "data": {}}),
            1 => json!({"action": "GET_MESSAGES", "id": i, "data": {"channel_id": channel_id}}),
            _ => json!({"action": "SYNC", "id": i, "data": {"server_id": server_id, "client_delta_id": 0}}),
        };
        frames.extend_from_slice(f.to_string().as_bytes());
        frames.push(b'\n');
    }
    c.send_raw(&frames);
    (0..n)
        .map(|i| {
            let r = c.recv();
            assert_eq!(r["id"], json!(i), "answers come in order: {r}");
            r
        })
        .collect()
}

#[test]
fn the_first_requests_after_a_graceful_restart_succeed() {
    // After a clean shutdown and start of the database, every worker's connection is
    // stale: the server closed it. A read (or the writer's START TRANSACTION) that finds
    // its connection closed outside a transaction is retried once on a new connection, so
    // clients see no error at all.
    let mut db = Mariadb::install_and_start();
    let config = format!("storage_timeout_ms = {STORAGE_TIMEOUT_MS}\n");
    let srv = TestServer::start_with_db(&db.url("chimed_restart"), &["--rate-limits", "off"], Some(&config));
    let mut c = srv.client();
    c.register(&unique("ann"));
    let (server_id, channel_id) = c.create_server("restart");
    let post = json!({"channel_id": channel_id, "content": "before"});
    success(&c.request("POST_MESSAGE", post), "POST_MESSAGE");
    // Every reader has used its connection just now (well within the idle time after
    // which a connection is pinged before use, which would hide the stale connection).
    for r in pipelined_reads(&mut c, 30, &server_id, &channel_id) {
        assert_eq!(r["data"]["status"], "success", "{r}");
    }

    let t = Instant::now();
    db.stop(libc::SIGTERM);
    db.start();
    eprintln!("mariadbd restarted in {:?}", t.elapsed());

    for r in pipelined_reads(&mut c, 30, &server_id, &channel_id) {
        assert_eq!(r["data"]["status"], "success", "a read after the restart failed: {r}");
    }
    let post = json!({"channel_id": channel_id, "content": "after"});
    success(&c.request("POST_MESSAGE", post), "POST_MESSAGE");
    let r = c.request("GET_MESSAGES", json!({"channel_id": channel_id}));
    let contents: Vec<&str> = success(&r, "GET_MESSAGES")["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.len(), 2, "{r}");
    assert!(contents.contains(&"before") && contents.contains(&"after"), "{r}");
}
