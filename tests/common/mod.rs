//! Shared harness for the integration tests: a real `chimed` process per test and a
//! blocking line-protocol client.
//!
//! Every test file does `mod common;` and uses only what it needs, hence the
//! `dead_code` allowance.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How long a server may take to log its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long SIGTERM may take to stop the server.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Default read timeout of a [`Client`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines kept for a failing test to print.
const LOG_LINES: usize = 200;

/// The password every test user gets.
pub const PASSWORD: &str = "password123";

/// Which storage backend a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Mysql,
}

/// The backend chosen for this run: env `CHIMED_TEST_BACKEND` = `sqlite` (the default) or
/// `mysql`. Anything else fails the test rather than silently testing something else.
pub fn backend() -> Backend {
    match std::env::var("CHIMED_TEST_BACKEND") {
        Err(_) => Backend::Sqlite,
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "sqlite" => Backend::Sqlite,
            "mysql" | "mariadb" => Backend::Mysql,
            other => panic!("CHIMED_TEST_BACKEND={other:?}: expected `sqlite` or `mysql`"),
        },
    }
}

/// The MySQL/MariaDB server the `mysql` backend uses: env `CHIMED_TEST_MYSQL` (default
/// `mysql://root@127.0.0.1:3306`), an account that may create and drop databases. No
/// database in the URL: the harness adds its own per test.
pub fn mysql_server_url() -> String {
    std::env::var("CHIMED_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
        .trim_end_matches('/')
        .to_string()
}

/// How long the harness waits for MySQL when creating or dropping a test database.
const MYSQL_ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `server` (`mysql://USER:PASS@HOST:PORT[?opts]`) with `/db` inserted before the options.
fn mysql_url_with_db(server: &str, db: &str) -> String {
    match server.split_once('?') {
        Some((base, opts)) => format!("{}/{db}?{opts}", base.trim_end_matches('/')),
        None => format!("{server}/{db}"),
    }
}

/// Runs one statement on the MySQL server at `server_url` (no database selected).
fn mysql_admin(server_url: &str, sql: &str) -> Result<(), chimed::store::StoreError> {
    let mut db = chimed::store::open(server_url, MYSQL_ADMIN_TIMEOUT)?;
    db.execute(sql, &[]).map(|_| ())
}

/// The storage URL for a test server whose files live in `dir`, on the backend chosen by
/// [`backend`]. The one place that chooses the backend.
///
/// For `mysql` this creates a uniquely named database on [`mysql_server_url`] (and panics
/// with a clear message when the server cannot be reached: the MySQL half of the suite
/// fails, it never skips); [`TestServer`] drops the database when it goes.
pub fn db_url(dir: &Path) -> String {
    db_url_for(backend(), dir)
}

/// [`db_url`] on a given backend (for the few tests that must run on one backend).
pub fn db_url_for(backend: Backend, dir: &Path) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", sqlite_path(dir).display()),
        Backend::Mysql => {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("chimed_it_{}_{n}_{}", std::process::id(), nanos());
            let server = mysql_server_url();
            if let Err(e) = mysql_admin(
                &server,
                &format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"),
            ) {
                panic!(
                    "CHIMED_TEST_BACKEND=mysql: cannot create a test database on {server} ({e}). Start \
                     MariaDB/MySQL there (`bash .ci/run` does), or set CHIMED_TEST_MYSQL=mysql://USER:PASS@HOST:PORT \
                     to an account that may create and drop databases; unset CHIMED_TEST_BACKEND to test on SQLite"
                );
            }
            mysql_url_with_db(&server, &name)
        }
    }
}

/// Drops the database behind a `mysql://.../DB` URL made by [`db_url`] (best effort: a
/// failure is reported, not raised, since this runs in `Drop`).
fn drop_mysql_db(url: &str) {
    let server = mysql_server_url();
    let Some(name) = url.split('?').next().and_then(|u| u.rsplit('/').next()) else {
        return;
    };
    if let Err(e) = mysql_admin(&server, &format!("DROP DATABASE IF EXISTS `{name}`")) {
        eprintln!("test harness: cannot drop MySQL database {name} on {server}: {e}");
    }
}

/// The SQLite file behind [`db_url`] on the SQLite backend (for tests that poke at the
/// database directly; those start their server with [`TestServer::start_sqlite_with`]).
pub fn sqlite_path(dir: &Path) -> PathBuf {
    dir.join("chimed.db")
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn nanos() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A fresh, empty directory under the system temp dir.
pub fn unique_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("chimed-{tag}-{}-{n}-{}", std::process::id(), nanos()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A username no other call in this process returns (`unique("ann")` -> `ann_3_8123`).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{n}_{}", nanos() % 100_000)
}

type LogBuf = Arc<Mutex<VecDeque<String>>>;

fn push_log(log: &LogBuf, line: String) {
    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
    if l.len() >= LOG_LINES {
        l.pop_front();
    }
    l.push_back(line);
}

/// A running `chimed` with its own temp dir (database and files), on a free port.
pub struct TestServer {
    child: Option<Child>,
    addr: SocketAddr,
    dir: PathBuf,
    /// Every argument except `--listen`.
    args: Vec<String>,
    log: LogBuf,
    /// A MySQL database the harness created for this server (dropped with it).
    owned_mysql_db: Option<String>,
}

impl TestServer {
    /// A server with the default configuration.
    pub fn start() -> TestServer {
        TestServer::start_with(&[], None)
    }

    /// A server with extra flags and, if given, a config file with this TOML, on the
    /// backend chosen by [`backend`].
    pub fn start_with(extra_args: &[&str], config_toml: Option<&str>) -> TestServer {
        TestServer::start_on(backend(), extra_args, config_toml)
    }

    /// [`TestServer::start_with`] on SQLite whatever `CHIMED_TEST_BACKEND` says: for the
    /// tests that are about SQLite itself (they open the server's file with
    /// [`sqlite_path`]).
    pub fn start_sqlite_with(extra_args: &[&str], config_toml: Option<&str>) -> TestServer {
        TestServer::start_on(Backend::Sqlite, extra_args, config_toml)
    }

    /// A server on `backend`, with its own database (dropped with the server).
    pub fn start_on(backend: Backend, extra_args: &[&str], config_toml: Option<&str>) -> TestServer {
        let dir = unique_dir("srv");
        let url = db_url_for(backend, &dir);
        let owned = (backend == Backend::Mysql).then(|| url.clone());
        TestServer::start_in(dir, url, owned, extra_args, config_toml)
    }

    /// A server on a database the caller owns (`--db url`); the harness does not drop it.
    pub fn start_with_db(url: &str, extra_args: &[&str], config_toml: Option<&str>) -> TestServer {
        TestServer::start_in(unique_dir("srv"), url.to_string(), None, extra_args, config_toml)
    }

    fn start_in(
        dir: PathBuf,
        url: String,
        owned_mysql_db: Option<String>,
        extra_args: &[&str],
        config_toml: Option<&str>,
    ) -> TestServer {
        let mut args = vec![
            "--db".to_string(),
            url,
            "--files-dir".to_string(),
            dir.join("files").display().to_string(),
        ];
        if let Some(toml) = config_toml {
            let path = dir.join("chimed.toml");
            std::fs::write(&path, toml).expect("write config file");
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let log: LogBuf = Arc::new(Mutex::new(VecDeque::new()));
        let mut s = TestServer {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            args,
            log,
            owned_mysql_db,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chimed"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chimed");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let log = self.log.clone();
        // Drains stderr for the life of the process: a full pipe would block the server.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut tx = Some(tx);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if let Some(addr) = ready_addr(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                push_log(&log, line);
            }
        });
        let pid = child.id();
        self.child = Some(child);
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(addr) => self.addr = addr,
            Err(e) => {
                let status = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "chimed (pid {pid}) did not log its ready line within {READY_TIMEOUT:?} ({e}; exit status: \
                     {status:?}); log:\n{}",
                    self.log_tail()
                );
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is not running").id()
    }

    /// A new client connected to this server.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait (at most [`STOP_TIMEOUT`]) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is not running");
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed: {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for chimed") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chimed did not exit within {STOP_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same database and directory (a new port). A server
    /// that is still running is killed with SIGKILL first.
    pub fn restart(&mut self) {
        self.kill9();
        push_log(&self.log, "---- test harness: restart ----".into());
        self.spawn();
    }

    /// The last lines the server logged (at most 200), across restarts.
    pub fn log_tail(&self) -> String {
        let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        l.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- chimed log tail ({}) ----\n{}\n---- end of log ----",
                self.dir.display(),
                self.log_tail()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(url) = self.owned_mysql_db.take() {
            drop_mysql_db(&url);
        }
    }
}

/// The address in a ready line (`... listening on 127.0.0.1:PORT ...`).
fn ready_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let word = rest.split(|c: char| c.is_whitespace() || c == ',').next()?;
    word.parse().ok()
}

/// A blocking line-protocol client.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// Bytes of a line that has not fully arrived yet (kept across read timeouts).
    partial: Vec<u8>,
    timeout: Duration,
    next_id: u64,
    /// Frames without an `id` (server pushes) met while waiting for a response.
    pub pushes: VecDeque<Value>,
}

/// What one read of a line gave.
enum Line {
    Frame(Vec<u8>),
    Eof,
    TimedOut,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let writer = stream.try_clone().expect("clone stream");
        Client {
            reader: BufReader::new(stream),
            writer,
            partial: Vec::new(),
            timeout: READ_TIMEOUT,
            next_id: 1,
            pushes: VecDeque::new(),
        }
    }

    /// The socket (e.g. to write from another thread with `try_clone`).
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Changes the read timeout used by [`Client::recv`] and friends.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
        self.reader.get_ref().set_read_timeout(Some(t)).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .and_then(|_| self.writer.flush())
            .unwrap_or_else(|e| panic!("write to server failed: {e}"));
    }

    /// Sends one frame (the JSON followed by `\n`).
    pub fn send(&mut self, frame: &Value) {
        let mut bytes = serde_json::to_vec(frame).unwrap();
        bytes.push(b'\n');
        self.send_raw(&bytes);
    }

    /// Our half of the connection: no more frames from us.
    pub fn shutdown_write(&mut self) {
        let _ = self.writer.shutdown(Shutdown::Write);
    }

    fn read_line(&mut self) -> Line {
        match self.reader.read_until(b'\n', &mut self.partial) {
            Ok(0) => Line::Eof,
            // A reset closes the connection too; what the server sent before it is lost,
            // which tests notice as a missing frame.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Line::Eof,
            Ok(_) if self.partial.ends_with(b"\n") => Line::Frame(std::mem::take(&mut self.partial)),
            Ok(_) => Line::Eof, // a last line without its newline, then EOF
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Line::TimedOut,
            Err(e) if e.kind() == ErrorKind::Interrupted => self.read_line(),
            Err(e) => panic!("read from server failed: {e}"),
        }
    }

    fn parse(line: &[u8]) -> Value {
        serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "server sent a line that is not JSON ({e}): {:?}",
                String::from_utf8_lossy(line)
            )
        })
    }

    /// The next frame (pushes queued by [`Client::request`] first); panics on timeout or EOF.
    pub fn recv(&mut self) -> Value {
        if let Some(f) = self.pushes.pop_front() {
            return f;
        }
        self.recv_wire()
    }

    /// The next frame from the socket, ignoring queued pushes.
    fn recv_wire(&mut self) -> Value {
        match self.read_line() {
            Line::Frame(l) => Client::parse(&l),
            Line::Eof => panic!(
                "server closed the connection while a frame was expected (partial line: {:?})",
                String::from_utf8_lossy(&self.partial)
            ),
            Line::TimedOut => panic!("no frame from the server within {:?}", self.timeout),
        }
    }

    /// The next frame if one arrives within `wait`; `None` on timeout. Panics on EOF.
    pub fn poll(&mut self, wait: Duration) -> Option<Value> {
        if let Some(f) = self.pushes.pop_front() {
            return Some(f);
        }
        self.reader.get_ref().set_read_timeout(Some(wait)).unwrap();
        let line = self.read_line();
        self.reader.get_ref().set_read_timeout(Some(self.timeout)).unwrap();
        match line {
            Line::Frame(l) => Some(Client::parse(&l)),
            Line::Eof => panic!("server closed the connection while a frame was expected"),
            Line::TimedOut => None,
        }
    }

    /// Sends `{action, id, data}` with a fresh numeric id and returns the response with
    /// that id. Frames without an id met on the way are queued in `pushes`.
    pub fn request(&mut self, action: &str, data: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"action": action, "id": id, "data": data}));
        loop {
            let frame = self.recv_wire();
            match frame.get("id") {
                None => self.pushes.push_back(frame),
                Some(v) if *v == json!(id) => return frame,
                Some(_) => panic!("expected the response to {action} with id {id}, got {frame}"),
            }
        }
    }

    /// REGISTER with [`PASSWORD`]; returns `(user_id, token)`. The connection then has
    /// the session.
    pub fn register(&mut self, username: &str) -> (String, String) {
        let r = self.request("REGISTER", json!({"username": username, "password": PASSWORD}));
        let d = success(&r, "REGISTER");
        (
            d["user_id"].as_str().expect("user_id is a string").to_string(),
            d["token"].as_str().expect("token is a string").to_string(),
        )
    }

    /// CREATE_SERVER; returns `(server_id, channel_id)` of the new server and its `general`.
    pub fn create_server(&mut self, name: &str) -> (String, String) {
        let r = self.request("CREATE_SERVER", json!({"name": name}));
        let d = success(&r, "CREATE_SERVER");
        (
            d["server_id"].as_str().expect("server_id is a string").to_string(),
            d["channel_id"].as_str().expect("channel_id is a string").to_string(),
        )
    }

    /// Reads until the server closes the connection (EOF or reset, within the read
    /// timeout); returns the frames that came before the close. Panics if the connection
    /// stays open.
    pub fn expect_closed(&mut self) -> Vec<Value> {
        let deadline = Instant::now() + self.timeout;
        let mut frames = Vec::new();
        loop {
            match self.read_line() {
                Line::Frame(l) => frames.push(Client::parse(&l)),
                Line::Eof => return frames,
                Line::TimedOut if Instant::now() < deadline => {}
                Line::TimedOut => panic!(
                    "the server did not close the connection within {:?} (frames read: {frames:?})",
                    self.timeout
                ),
            }
        }
    }

    /// Reads raw bytes until EOF (for tests that expect no more frames).
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.partial);
        let _ = self.reader.read_to_end(&mut rest);
        rest
    }
}

/// The `data` of a success response for `action`; panics with the frame otherwise.
pub fn success<'a>(frame: &'a Value, action: &str) -> &'a Value {
    assert_eq!(
        frame["action"],
        json!(format!("{action}_RESPONSE")),
        "wrong response action: {frame}"
    );
    assert_eq!(frame["data"]["status"], "success", "{action} failed: {frame}");
    &frame["data"]
}

/// Asserts that `frame` is an error with `action` (e.g. `PING_RESPONSE` or `ERROR`) and
/// `code`; returns its message.
pub fn error<'a>(frame: &'a Value, action: &str, code: &str) -> &'a str {
    assert_eq!(frame["action"], json!(action), "wrong action: {frame}");
    assert_eq!(frame["data"]["status"], "error", "expected an error: {frame}");
    assert_eq!(frame["data"]["code"], json!(code), "wrong error code: {frame}");
    frame["data"]["message"].as_str().expect("error message is a string")
}

/// Sends PING and asserts that it is answered.
pub fn ping(c: &mut Client) {
    let r = c.request("PING", json!({}));
    success(&r, "PING");
}

/// PING on `c`, asserting that it is answered within `bound`; returns the time it took.
pub fn ping_within(c: &mut Client, bound: Duration) -> Duration {
    let t = Instant::now();
    ping(c);
    let took = t.elapsed();
    assert!(took < bound, "PING took {took:?} (bound {bound:?})");
    took
}

/// Resident memory of a process in KiB (VmRSS from /proc), 0 if unreadable.
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
