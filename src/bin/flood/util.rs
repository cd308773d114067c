//! Small pieces: the shared clock, message bodies, bit sets, /proc readings, rlimits.

use std::io::Write;

use crate::cli::HEADER_LEN;

/// Nanoseconds of CLOCK_MONOTONIC: one clock for every thread of the process (system-wide on
/// Linux), so a delivery's latency is `now_ns() - the send time in the message`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Appends a message body of exactly `size` bytes: `<sent_ns:020>:<publisher:08>:<seq:010>:`
/// then `x` padding. ASCII only, so it is the same bytes in JSON, IRC and RESP.
pub fn write_body(out: &mut Vec<u8>, sent_ns: u64, publisher: u64, seq: u64, size: usize) {
    let start = out.len();
    let _ = write!(
        out,
        "{:020}:{:08}:{:010}:",
        sent_ns,
        publisher % 100_000_000,
        seq % 10_000_000_000
    );
    let written = out.len() - start;
    if size > written {
        out.resize(start + size, b'x');
    }
}

/// What a delivered body says: (sent_ns, publisher, seq). `None` if it is not one of ours.
pub fn parse_body(b: &[u8]) -> Option<(u64, u64, u64)> {
    if b.len() < HEADER_LEN || b[20] != b':' || b[29] != b':' || b[40] != b':' {
        return None;
    }
    Some((digits(&b[0..20])?, digits(&b[21..29])?, digits(&b[30..40])?))
}

fn digits(b: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    Some(v)
}

/// A fixed-size set of small integers.
#[derive(Clone, Debug, Default)]
pub struct Bits {
    words: Vec<u64>,
    len: usize,
}

impl Bits {
    pub fn new(len: usize) -> Bits {
        Bits {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// Sets bit `i`; returns whether it was already set. Out of range: `None`.
    pub fn set(&mut self, i: usize) -> Option<bool> {
        if i >= self.len {
            return None;
        }
        let w = self.words.get_mut(i / 64)?;
        let m = 1u64 << (i % 64);
        let was = *w & m != 0;
        *w |= m;
        Some(was)
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Bits set both in `self`'s words from `word_from` on and in `other` (all of it).
    pub fn count_and_at(&self, word_from: usize, other: &Bits) -> u64 {
        let mine = self.words.get(word_from..).unwrap_or(&[]);
        mine.iter()
            .zip(&other.words)
            .map(|(a, b)| u64::from((a & b).count_ones()))
            .sum()
    }

    /// Bits set in `self` over `words` words from `word_from` on.
    pub fn count_at(&self, word_from: usize, words: usize) -> u64 {
        let end = (word_from + words).min(self.words.len());
        self.words
            .get(word_from.min(end)..end)
            .unwrap_or(&[])
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }
}

/// VmRSS of a process in KiB, from /proc/PID/status.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
pub fn cpu_s(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which is in parentheses and may hold spaces).
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) / if hz > 0 { hz as f64 } else { 100.0 })
}

/// CPU seconds this process has used so far.
pub fn own_cpu_s() -> f64 {
    cpu_s(std::process::id()).unwrap_or(0.0)
}

/// Raises the soft open-files limit to the hard one; returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// `12345678` -> `12.3M`, for the progress line.
pub fn human(n: f64) -> String {
    let a = n.abs();
    if a >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trip() {
        let mut v = Vec::new();
        write_body(&mut v, 123_456_789, 7, 42, 128);
        assert_eq!(v.len(), 128);
        assert_eq!(parse_body(&v), Some((123_456_789, 7, 42)));
        assert_eq!(parse_body(b"hello"), None);
        let mut w = Vec::new();
        write_body(&mut w, 1, 2, 3, HEADER_LEN);
        assert_eq!(w.len(), HEADER_LEN);
        assert_eq!(parse_body(&w), Some((1, 2, 3)));
    }

    #[test]
    fn bits() {
        let mut b = Bits::new(130);
        assert_eq!(b.set(129), Some(false));
        assert_eq!(b.set(129), Some(true));
        assert_eq!(b.set(130), None);
        assert_eq!(b.count(), 1);
        let mut o = Bits::new(64);
        o.set(1);
        assert_eq!(b.count_and_at(2, &o), 1);
        o.set(2);
        assert_eq!(b.count_and_at(2, &o), 1);
        assert_eq!(b.count_at(2, 1), 1);
        assert_eq!(b.count_at(0, 2), 0);
        assert_eq!(b.count_at(5, 2), 0);
    }

    #[test]
    fn own_cpu_is_readable() {
        assert!(cpu_s(std::process::id()).is_some());
    }
}
