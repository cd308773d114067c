//! The bundled load tester end to end: a small `fanout` (20 subscribers, 4 publishers x 500
//! posts = 2,000 posts) run through `scripts/flood.sh` against a real chimed. Every
//! subscriber must get every acknowledged post exactly once and in order.
//!
//! `FLOOD_BIN` points flood.sh at the `flood` binary cargo built for this test run, so the test
//! does not start a release build of its own.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::Value;

/// The whole run (setup, connect, 2,000 posts, drain) must finish well within this.
const RUN_BOUND: Duration = Duration::from_secs(240);

#[test]
fn small_fanout_through_flood_sh_is_exactly_once() {
    let server = TestServer::start_with(&["--rate-limits", "off"], None);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/flood.sh");
    let addr = server.addr().to_string();
    let pid = server.pid().to_string();
    let mut child = Command::new("bash")
        .arg(&script)
        .args(["fanout", "--addr", &addr, "--server-pid", &pid])
        .args(["--subscribers", "20", "--publishers", "4", "--messages", "500"])
        .args(["--duration", "120", "--drain-timeout", "20", "--setup-timeout", "60"])
        .env("FLOOD_BIN", env!("CARGO_BIN_EXE_flood"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/flood.sh");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for flood.sh") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let status = status.unwrap_or_else(|| panic!("flood.sh did not finish within {RUN_BOUND:?}; stderr:\n{stderr}"));
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line of stdout is not JSON ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("report has no number {k}: {report}"))
    };
    assert_eq!(report["scenario"], "fanout", "{report}");
    assert_eq!(n("connect_failed"), 0, "{report}\n{stderr}");
    assert_eq!(n("connected"), 24, "{report}");
    assert_eq!(n("posts_acked"), 2_000, "every post is acknowledged: {report}");
    assert_eq!(n("lost"), 0, "{report}");
    assert_eq!(n("duplicated"), 0, "{report}");
    assert_eq!(n("reordered"), 0, "{report}");
    assert_eq!(n("unexpected"), 0, "{report}");
    assert_eq!(n("malformed"), 0, "{report}");
    assert_eq!(n("deliveries"), 20 * 2_000, "{report}");
    assert_eq!(n("deliveries_expected"), 20 * 2_000, "{report}");
    assert!(report["latency_us"]["p99"].as_f64().is_some(), "{report}");
    assert_eq!(report["ok"], true, "{report}");
    assert!(
        status.success(),
        "flood.sh exited with {status}; stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("exactly once"),
        "the human table comes before the JSON line: {stdout}"
    );
}

/// `scripts/flood.sh --help` documents every scenario, target and the sections the issue asks
/// for (clap lists every flag with its default).
#[test]
fn flood_sh_help_documents_every_scenario_and_flag() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/flood.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--help")
        .env("FLOOD_BIN", env!("CARGO_BIN_EXE_flood"))
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/flood.sh --help");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "connect",
        "fanout",
        "ingest",
        "churn",
        "chimed",
        "irc",
        "redis",
        "SCENARIOS",
        "TARGETS",
        "OUTPUT",
        "LIMITS",
        "PACING",
    ] {
        assert!(help.contains(word), "--help does not mention {word}:\n{help}");
    }
    for flag in [
        "--target",
        "--addr",
        "--threads",
        "--connections",
        "--subscribers",
        "--publishers",
        "--messages",
        "--size",
        "--window",
        "--rate",
        "--servers",
        "--channels",
        "--users",
        "--duration",
        "--setup-timeout",
        "--drain-timeout",
        "--hold",
        "--server-pid",
        "--concurrency",
        "--handshakes",
        "--source-ips",
        "--source-first",
        "--source-threshold",
        "--channel",
        "--channel-members",
        "--quiet",
    ] {
        assert!(help.contains(flag), "--help does not document {flag}");
    }
}
