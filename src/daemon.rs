//! Living under a service manager: the open-files limit, and systemd's notification
//! protocol (sd_notify) without a dependency.
//!
//! sd_notify is one datagram of `KEY=VALUE` lines to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the Linux abstract namespace). Without the
//! variable (not started by systemd, or `Type=` other than notify) every call is a no-op
//! returning `Ok(false)`. Failures are for logging, never fatal: a daemon must keep running
//! whether or not its manager listens.
//!
//! What to send when (see the unit in scripts/chimed.service): [`ready`] once the listener
//! is bound and storage is migrated; [`stopping`] when SIGTERM arrives, before draining;
//! [`status`] for a one-line state in `systemctl status`; with `WatchdogSec=`,
//! [`watchdog`] from the poll loop every [`watchdog_interval`]; around a reload,
//! [`reloading`] then [`ready`].

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Raises the soft open-files limit (RLIMIT_NOFILE) to the hard limit, so the connection
/// limit is the kernel's (or the unit's `LimitNOFILE=`), not a default of 1024. Returns
/// `(soft, hard)` in force afterwards. If raising fails, the limits as they are.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    // rlim_t is u64 on Linux (and the BSDs); the conversion is for the rest.
    #[allow(clippy::useless_conversion)]
    Ok((u64::from(lim.rlim_cur), u64::from(lim.rlim_max)))
}

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when the variable is unset or empty (nothing to do), `Ok(true)` once sent.
pub fn notify(state: &str) -> io::Result<bool> {
    notify_socket(std::env::var_os("NOTIFY_SOCKET"), state)
}

fn notify_socket(socket: Option<OsString>, state: &str) -> io::Result<bool> {
    match socket {
        Some(s) if !s.is_empty() => notify_to(&s, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the notification socket `socket`: a filesystem path, or `@name` for
/// an abstract socket (Linux). Other forms (systemd's `vsock:`) are refused.
pub fn notify_to(socket: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = socket.as_bytes();
    let sock = UnixDatagram::unbound()?;
    let sent = match bytes.first() {
        Some(b'/') => sock.send_to(state.as_bytes(), socket)?,
        Some(b'@') => send_abstract(&sock, &bytes[1..], state.as_bytes())?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither an absolute path nor @abstract",
            ))
        }
    };
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "notification truncated"));
    }
    Ok(())
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sock: &UnixDatagram, name: &[u8], msg: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(msg, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

/// `READY=1`: startup is complete (systemd's `Type=notify` start job finishes). Sends
/// `MAINPID` too, which keeps it right should the notifying process ever be another.
pub fn ready() -> io::Result<bool> {
    notify(&format!("READY=1\nMAINPID={}", std::process::id()))
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `STATUS=...`: a free-form line shown by `systemctl status` (newlines become spaces).
pub fn status(text: &str) -> io::Result<bool> {
    notify(&status_message(text))
}

fn status_message(text: &str) -> String {
    format!("STATUS={}", text.replace(['\n', '\r'], " "))
}

/// `RELOADING=1` with `MONOTONIC_USEC` (systemd 253+ wants both for `Type=notify-reload`);
/// send [`ready`] when the reload is done.
pub fn reloading() -> io::Result<bool> {
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
}

/// `WATCHDOG=1`: the loop is alive. Send every [`watchdog_interval`].
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// How often to send [`watchdog`]: half of `$WATCHDOG_USEC`, if the watchdog is on and
/// meant for this process (`$WATCHDOG_PID` unset or ours); `None` otherwise.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// CLOCK_MONOTONIC in microseconds (what systemd compares MONOTONIC_USEC against).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the struct we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("chimed-daemon-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notify_to_a_path() {
        let dir = temp_dir("path");
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1\nSTATUS=listening").unwrap();
        assert_eq!(recv(&listener), "READY=1\nSTATUS=listening");
        assert!(notify_socket(Some(path.clone().into_os_string()), "STOPPING=1").unwrap());
        assert_eq!(recv(&listener), "STOPPING=1");
        assert!(notify_socket(Some(path.clone().into_os_string()), &status_message("a\nb")).unwrap());
        assert_eq!(recv(&listener), "STATUS=a b");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notify_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("chimed-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        assert_eq!(recv(&listener), "WATCHDOG=1");
    }

    #[test]
    fn unset_or_empty_socket_is_a_no_op() {
        assert!(!notify_socket(None, "READY=1").unwrap());
        assert!(!notify_socket(Some(OsString::new()), "READY=1").unwrap());
    }

    #[test]
    fn bad_or_missing_sockets_are_errors_not_panics() {
        let e = notify_to(OsStr::new("relative/path"), "READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(notify_to(OsStr::new("vsock:2:1234"), "READY=1").is_err());
        let dir = temp_dir("missing");
        assert!(notify_to(dir.join("nobody-listens").as_os_str(), "READY=1").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn watchdog_interval_is_half_and_only_for_us() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval_from(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
    }

    #[test]
    fn nofile_limit_is_raised_to_the_hard_limit() {
        let (soft, hard) = raise_nofile_limit().unwrap();
        assert!(soft <= hard);
        #[allow(clippy::useless_conversion)]
        if hard != u64::from(libc::RLIM_INFINITY) {
            assert_eq!(soft, hard);
        }
        assert!(soft >= 16);
        // Idempotent.
        assert_eq!(raise_nofile_limit().unwrap(), (soft, hard));
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_usec();
        assert!(a > 0);
        assert!(monotonic_usec() >= a);
    }
}
