//! scripts/chimed.service and scripts/install.sh, checked without touching the system:
//!
//! - the unit has what issue 7 asks of it (Type=notify, LimitNOFILE, a dedicated user,
//!   state under /var/lib/chimed, hardening), and `systemd-analyze verify` accepts it
//!   where systemd-analyze is installed (with ExecStart pointed at the test binary);
//! - install.sh stages everything under a DESTDIR in a temp dir (binary, unit with its
//!   ExecStart, a config that loads, the state dir), keeps an existing config on a second
//!   run, and refuses a real install without `--yes` and DESTDIR=/ outright.
//!
//! The script is never run without DESTDIR and `--yes` here; the refusal test also passes
//! `--no-build` and a binary path that does not exist, so even a broken guard would stop
//! before writing anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chimed::config::{Args, Config};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("scripts/chimed.service")).expect("read scripts/chimed.service")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("chimed-install-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `key=value` lines of the unit (comments and sections left out).
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn unit_has_what_a_daemon_needs() {
    let set = settings(&unit_text());
    let has = |k: &str, v: &str| set.iter().any(|(a, b)| a == k && b == v);
    for (k, v) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("User", "chimed"),
        ("Group", "chimed"),
        ("StateDirectory", "chimed"),
        ("WorkingDirectory", "/var/lib/chimed"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestartPreventExitStatus", "2"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert!(has(k, v), "scripts/chimed.service lacks {k}={v}");
    }
    let nofile: u64 = set
        .iter()
        .find(|(k, _)| k == "LimitNOFILE")
        .and_then(|(_, v)| v.parse().ok())
        .expect("LimitNOFILE=<number>");
    assert!(nofile >= 65_536, "LimitNOFILE={nofile}");
    assert!(
        set.iter()
            .any(|(k, v)| k == "ExecStart" && v.starts_with("/usr/local/bin/chimed ")),
        "install.sh rewrites ExecStart=/usr/local/bin/chimed ...; keep that form"
    );
}

fn systemd_analyze() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file())
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!("systemd-analyze not installed: only the static checks ran");
        return;
    };
    let dir = temp_dir("verify");
    let unit = unit_text().replace(
        "ExecStart=/usr/local/bin/chimed ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_chimed")),
    );
    let path = dir.join("chimed.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{stderr}",
        out.status
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs install.sh with `args`, never with the caller's DESTDIR; `target` is the
/// CARGO_TARGET_DIR it takes `release/chimed` from.
fn install(args: &[&str], target: &Path, destdir_env: Option<&str>) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/install.sh"))
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("DESTDIR");
    if let Some(d) = destdir_env {
        cmd.env("DESTDIR", d);
    }
    cmd.output().expect("run bash scripts/install.sh")
}

#[test]
fn install_script_stages_under_destdir() {
    let dir = temp_dir("stage");
    let target = dir.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_chimed"), target.join("release/chimed")).unwrap();
    let stage = dir.join("stage");
    let stage_arg = stage.to_str().unwrap();

    let out = install(&["--no-build", "--destdir", stage_arg], &target, None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let bin = stage.join("usr/local/bin/chimed");
    assert!(bin.is_file());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&bin), 0o755);
    let unit = std::fs::read_to_string(stage.join("etc/systemd/system/chimed.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/local/bin/chimed --config /etc/chimed/chimed.toml\n"));
    let conf = stage.join("etc/chimed/chimed.toml");
    assert_eq!(mode(&conf), 0o640, "the config may hold secrets");
    let text = std::fs::read_to_string(&conf).unwrap();
    let cfg: Config = toml::from_str(&text).expect("installed config parses");
    assert_eq!(cfg.db, "sqlite:///var/lib/chimed/chimed.db");
    assert_eq!(cfg.files_dir, PathBuf::from("/var/lib/chimed/files"));
    Config::load(&Args {
        config: Some(conf.clone()),
        ..Args::default()
    })
    .expect("installed config validates");
    assert_eq!(mode(&stage.join("var/lib/chimed")), 0o750);
    assert!(stage.join("var/lib/chimed/files").is_dir());

    // Again, through the environment: the edited config is kept, the new one goes beside it.
    std::fs::write(&conf, format!("{text}\n# edited by the operator\n")).unwrap();
    let out = install(&["--no-build"], &target, Some(stage_arg));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&conf)
        .unwrap()
        .ends_with("# edited by the operator\n"));
    assert!(stage.join("etc/chimed/chimed.toml.example").is_file());

    // Nothing but the staged tree was written.
    let mut top: Vec<String> = std::fs::read_dir(&stage)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["etc", "usr", "var"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn install_script_refuses_a_real_install_without_yes() {
    let nowhere = Path::new("/nonexistent/chimed-install-test");
    let out = install(&["--no-build"], nowhere, None);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));

    for args in [
        &["--no-build", "--destdir", "/"][..],
        &["--no-build", "--destdir=//./"][..],
    ] {
        let out = install(args, nowhere, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = install(&["--no-build"], nowhere, Some("/"));
    assert_eq!(out.status.code(), Some(2), "DESTDIR=/");
    let out = install(&["--no-build", "--destdir="], nowhere, None);
    assert_eq!(out.status.code(), Some(2), "--destdir=");
    let out = install(&["--no-build", "--prefix", "/opt/a b"], nowhere, None);
    assert_eq!(out.status.code(), Some(2), "a prefix with a space");
}
