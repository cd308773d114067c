//! Abuse limits, as pure state machines: the poll loop owns one of each, passes the time in
//! and applies the verdicts (after ergo's fakelag and ngIRCd's accept checks). Nothing here
//! reads a clock, sleeps or touches a socket, so the tests run in microseconds.
//!
//! - [`TokenBucket`]: `rate` tokens per second up to `burst`; a take that does not fit says
//!   how long to wait (`retry_after_ms`).
//! - [`ConnLimits`]: one per connection. Separate buckets for reads, writes and logins
//!   (which actions are which: [`class`]); a rejection answers `rate_limited` with
//!   `retry_after_ms`; a client that keeps sending into rejections is a flooder and gets
//!   [`Verdict::Disconnect`].
//! - [`LoginThrottle`]: failed logins per account (doubling delay after a few free
//!   failures) and per client address (a bucket of failures).
//! - [`Admission`]: connections in total and per client address, checked at accept.
//! - [`BodyClock`]: the slowloris clock of an HTTP request body (progress, not total time).
//!
//! Client addresses are grouped by [`IpKey`]: an IPv4 address (also when it arrives
//! IPv4-mapped on an IPv6 socket) is its own group; an IPv6 address counts as its /64,
//! because one host or home routinely gets a whole /64 and can pick any address in it.
//!
//! Wiring, in order: at accept `admission.try_admit(ip)` (a refusal: one error frame,
//! close; `admission.is_full()` pauses accepting) and `ConnLimits::new(&policy)`; per frame
//! `limits.check(class(action), now)`; after a credential check
//! `throttle.record_failure/record_success`, and before one `throttle.check`; at close
//! `admission.release(ip)`; now and then `throttle.sweep(now)`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::chat::accounts::username_key;
use crate::config::Config;
use crate::protocol::Action;

// ---------------------------------------------------------------------------------------
// Token bucket

/// `rate` tokens per second, holding at most `burst`; starts full.
///
/// A rate that is not positive (or not finite) never refills; a burst of 0 admits nothing.
/// A take costing more than the burst waits for a full bucket and then empties it (it could
/// never fit otherwise).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    /// When `tokens` was last brought up to date; `None` until the first take (full).
    at: Option<Instant>,
}

/// Milliseconds a caller is told to wait when the wait has no end (a bucket that never
/// refills): a day, which no client will honour literally but every client can parse.
pub const RETRY_NEVER_MS: u64 = 86_400_000;

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        let burst = if burst.is_finite() { burst.max(0.0) } else { 0.0 };
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { 0.0 };
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: None,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            // A clock that went backwards (it cannot, with Instant; a caller's mistake)
            // adds nothing rather than panicking.
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        if self.at.is_none_or(|at| now > at) {
            self.at = Some(now);
        }
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Takes `cost` tokens, or tells how many milliseconds until they will be there
    /// (at least 1; [`RETRY_NEVER_MS`] if never). Nothing is taken on `Err`.
    pub fn try_take(&mut self, now: Instant, cost: f64) -> Result<(), u64> {
        self.refill(now);
        let cost = cost.max(0.0);
        if self.burst <= 0.0 && cost > 0.0 {
            return Err(RETRY_NEVER_MS); // an empty bucket that can never hold anything
        }
        let cost = cost.min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            return Ok(());
        }
        if self.rate <= 0.0 {
            return Err(RETRY_NEVER_MS);
        }
        // Rounded up to whole milliseconds; the nanosecond of slack keeps float noise
        // (0.999 tokens short of 1 is 1.0000000000000009 ms) from adding a millisecond.
        let ms = ((cost - self.tokens) / self.rate * 1000.0 - 1e-6).ceil();
        Err((ms as u64).clamp(1, RETRY_NEVER_MS))
    }

    /// Puts back `n` tokens taken earlier (never above the burst).
    pub fn put_back(&mut self, now: Instant, n: f64) {
        self.refill(now);
        if n.is_finite() && n > 0.0 {
            self.tokens = (self.tokens + n).min(self.burst);
        }
    }

    /// Whether the bucket is full at `now` (then it holds no information worth keeping).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.available(now) >= self.burst
    }
}

// ---------------------------------------------------------------------------------------
// Per-connection request limits

/// Which budget an action is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Reads state or only touches the caller's own connection: queries, subscriptions,
    /// catch-up, PING. Also what a frame whose action is unknown or unreadable costs, and
    /// an HTTP file download, backup, `/healthz` or `/metrics` request, and a WebSocket ping.
    Read,
    /// Changes shared state or reaches other users: posts, edits, membership, roles,
    /// typing, voice and call signalling, logout; an HTTP file upload.
    Write,
    /// Checks credentials (Argon2 for REGISTER and LOGIN, a token lookup for AUTH).
    Login,
}

/// The budget `action` is charged to. Every action is listed (no wildcard), so a new
/// action does not compile until it is classified.
pub fn class(action: Action) -> Class {
    use Action::*;
    match action {
        Register | Login | Auth => Class::Login,
        Ping | ListServers | DiscoverServers | ListMembers | ListChannels | GetMessages | Subscribe | Unsubscribe
        | Sync | RestoreHistory | TurnCredentials => Class::Read,
        Logout | CreateServer | JoinServer | CreateInvite | LeaveServer | SetRole | Kick | DeleteServer
        | CreateChannel | DeleteChannel | OpenDm | PostMessage | EditMessage | DeleteMessage | Typing | JoinVoice
        | LeaveVoice | CallSignal => Class::Write,
    }
}

/// A budget: `per_second` refill, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    pub fn bucket(self) -> TokenBucket {
        TokenBucket::new(self.per_second, self.burst)
    }
}

/// The request-rate policy every connection gets (from [`Config`]: `write_rate`,
/// `write_burst`, `read_*`, `login_*`, `flood_disconnect_after`, `flood_window_s`,
/// `rate_limits`).
#[derive(Debug, Clone, PartialEq)]
pub struct RatePolicy {
    /// `false` (`--rate-limits off`): every request is allowed.
    pub enabled: bool,
    pub read: Rate,
    pub write: Rate,
    pub login: Rate,
    /// Rejections a connection may collect within `flood_window` (at an even pace, or
    /// all at once) before it is disconnected.
    pub flood_disconnect_after: u32,
    pub flood_window: Duration,
}

impl RatePolicy {
    pub fn from_config(cfg: &Config) -> RatePolicy {
        RatePolicy {
            enabled: cfg.rate_limits,
            read: Rate {
                per_second: cfg.read_rate,
                burst: f64::from(cfg.read_burst),
            },
            write: Rate {
                per_second: cfg.write_rate,
                burst: f64::from(cfg.write_burst),
            },
            login: Rate {
                per_second: cfg.login_rate,
                burst: f64::from(cfg.login_burst),
            },
            flood_disconnect_after: cfg.flood_disconnect_after,
            flood_window: Duration::from_secs(cfg.flood_window_s),
        }
    }
}

impl Default for RatePolicy {
    fn default() -> RatePolicy {
        RatePolicy::from_config(&Config::default())
    }
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within budget: run it.
    Allow,
    /// Over budget: answer `rate_limited` with this `retry_after_ms`, do not run it.
    Reject { retry_after_ms: u64 },
    /// Over budget again and again: answer `rate_limited` if you like, then close.
    Disconnect,
}

/// One connection's budgets.
///
/// Flood detection is a bucket of strikes: each rejection takes one; it holds
/// `flood_disconnect_after` and refills that many per `flood_window`. So a client that
/// overshoots now and then (and backs off when told) is never cut off, while one that
/// keeps sending into rejections runs out of strikes within about a window, however it
/// paces them (a plain count of consecutive rejections would miss a flooder whose every
/// tenth request squeezes through).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    enabled: bool,
    read: TokenBucket,
    write: TokenBucket,
    login: TokenBucket,
    strikes: TokenBucket,
    rejected: u64,
}

impl ConnLimits {
    pub fn new(policy: &RatePolicy) -> ConnLimits {
        let strikes = f64::from(policy.flood_disconnect_after.max(1));
        let window = policy.flood_window.as_secs_f64().max(0.001);
        ConnLimits {
            enabled: policy.enabled,
            read: policy.read.bucket(),
            write: policy.write.bucket(),
            login: policy.login.bucket(),
            strikes: TokenBucket::new(strikes / window, strikes),
            rejected: 0,
        }
    }

    /// Charges one request of `class` at `now`.
    pub fn check(&mut self, class: Class, now: Instant) -> Verdict {
        self.check_cost(class, 1.0, now)
    }

    /// Charges a request costing `cost` tokens (a batch, a large upload) at `now`.
    pub fn check_cost(&mut self, class: Class, cost: f64, now: Instant) -> Verdict {
        if !self.enabled {
            return Verdict::Allow;
        }
        let bucket = match class {
            Class::Read => &mut self.read,
            Class::Write => &mut self.write,
            Class::Login => &mut self.login,
        };
        match bucket.try_take(now, cost) {
            Ok(()) => Verdict::Allow,
            Err(retry_after_ms) => {
                self.rejected += 1;
                if self.strikes.try_take(now, 1.0).is_err() {
                    Verdict::Disconnect
                } else {
                    Verdict::Reject { retry_after_ms }
                }
            }
        }
    }

    /// Gives back one request of `class` that was charged and allowed (work that turned
    /// out to cost nothing worth limiting). Strikes are not given back.
    pub fn refund(&mut self, class: Class, now: Instant) {
        let bucket = match class {
            Class::Read => &mut self.read,
            Class::Write => &mut self.write,
            Class::Login => &mut self.login,
        };
        bucket.put_back(now, 1.0);
    }

    /// Requests rejected on this connection so far (for logs and metrics).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

// ---------------------------------------------------------------------------------------
// Client address groups

/// A client address as the limits count it: IPv4 as is (IPv4-mapped IPv6 included),
/// IPv6 by its /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpKey {
    V4(Ipv4Addr),
    /// The first 64 bits of the address.
    V6Net64(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4),
                None => IpKey::V6Net64((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl std::fmt::Display for IpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IpKey::V4(v4) => write!(f, "{v4}"),
            IpKey::V6Net64(net) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*net) << 64)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Failed logins

/// Failed-login throttling policy (from [`Config`]: `login_fail_ip_burst`,
/// `login_fail_ip_per_min`, `login_fail_account_free`, `login_fail_account_max_delay_s`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoginPolicy {
    /// Failures one address group may have at once; 0 turns the per-address throttle off.
    pub ip_burst: u32,
    /// Failures forgiven per minute per address group.
    pub ip_per_min: f64,
    /// Failures of one account before its delay starts.
    pub account_free: u32,
    /// Cap of the account delay (1 s after the first failure past the free ones, doubling
    /// with each further one); zero turns the per-account throttle off.
    pub account_max_delay: Duration,
    /// Accounts and address groups tracked at most (memory bound); past it the entry
    /// least worth keeping is forgotten.
    pub max_tracked: usize,
}

impl LoginPolicy {
    pub fn from_config(cfg: &Config) -> LoginPolicy {
        LoginPolicy {
            ip_burst: cfg.login_fail_ip_burst,
            ip_per_min: cfg.login_fail_ip_per_min,
            account_free: cfg.login_fail_account_free,
            account_max_delay: Duration::from_secs(cfg.login_fail_account_max_delay_s),
            max_tracked: 100_000,
        }
    }
}

impl Default for LoginPolicy {
    fn default() -> LoginPolicy {
        LoginPolicy::from_config(&Config::default())
    }
}

#[derive(Debug, Clone, Copy)]
struct AccountFailures {
    /// Failures since the last success.
    count: u32,
    /// No attempt before this.
    until: Instant,
    last: Instant,
}

/// Throttles credential guessing.
///
/// - Per account (keyed case-insensitively, like usernames): the first `account_free`
///   failures cost nothing; each further one locks the account's logins for 1 s, 2 s,
///   4 s, ... up to `account_max_delay`. A success resets the account. The cap keeps the
///   damage small when someone fails logins on purpose to lock a victim out.
/// - Per address group ([`IpKey`]): a bucket of `ip_burst` failures refilling
///   `ip_per_min` per minute. A success does not refill it: one valid account must not
///   launder an address's guesses at other accounts. A failed AUTH (bad token) counts
///   here (no account).
///
/// The caller asks [`LoginThrottle::check`] before the credential check (so a throttled
/// attempt costs no Argon2 hash) and reports the outcome afterwards.
#[derive(Debug)]
pub struct LoginThrottle {
    policy: LoginPolicy,
    accounts: HashMap<String, AccountFailures>,
    ips: HashMap<IpKey, TokenBucket>,
}

/// Doubling delay: 1 s for the first failure past the free ones, capped.
fn account_delay(failures_past_free: u32, cap: Duration) -> Duration {
    let shift = failures_past_free.saturating_sub(1).min(30);
    Duration::from_secs(1u64 << shift).min(cap)
}

impl LoginThrottle {
    pub fn new(policy: LoginPolicy) -> LoginThrottle {
        LoginThrottle {
            policy,
            accounts: HashMap::new(),
            ips: HashMap::new(),
        }
    }

    fn ip_bucket(&self) -> TokenBucket {
        TokenBucket::new(self.policy.ip_per_min / 60.0, f64::from(self.policy.ip_burst))
    }

    /// Whether an attempt from `ip` (on `account`, if it names one) may go ahead now;
    /// `Err(retry_after_ms)` if not. Charges nothing.
    pub fn check(&mut self, ip: IpAddr, account: Option<&str>, now: Instant) -> Result<(), u64> {
        let mut wait = 0u64;
        if self.policy.ip_burst > 0 {
            if let Some(b) = self.ips.get_mut(&IpKey::from(ip)) {
                if b.available(now) < 1.0 {
                    // What a take would say, without taking.
                    wait = wait.max(b.clone().try_take(now, 1.0).err().unwrap_or(1));
                }
            }
        }
        if let Some(a) = account.and_then(|a| self.accounts.get(&username_key(a))) {
            if a.until > now {
                let ms = a.until.duration_since(now).as_millis();
                wait = wait.max(u64::try_from(ms).unwrap_or(u64::MAX).max(1));
            }
        }
        if wait == 0 {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Records a failed credential check from `ip` (on `account`, if any).
    pub fn record_failure(&mut self, ip: IpAddr, account: Option<&str>, now: Instant) {
        if self.policy.ip_burst > 0 {
            let key = IpKey::from(ip);
            if !self.ips.contains_key(&key) {
                self.make_room(now);
            }
            let fresh = self.ip_bucket();
            // Empty already: the attempt was let through by a caller that did not check;
            // nothing more to take.
            let _ = self.ips.entry(key).or_insert(fresh).try_take(now, 1.0);
        }
        if let (Some(account), false) = (account, self.policy.account_max_delay.is_zero()) {
            let key = username_key(account);
            if !self.accounts.contains_key(&key) {
                self.make_room(now);
            }
            let free = self.policy.account_free;
            let cap = self.policy.account_max_delay;
            let a = self.accounts.entry(key).or_insert(AccountFailures {
                count: 0,
                until: now,
                last: now,
            });
            a.count = a.count.saturating_add(1);
            a.last = a.last.max(now);
            if a.count > free {
                a.until = a.until.max(now + account_delay(a.count - free, cap));
            }
        }
    }

    /// Records a successful login: the account starts afresh; the address does not.
    pub fn record_success(&mut self, _ip: IpAddr, account: &str, _now: Instant) {
        self.accounts.remove(&username_key(account));
    }

    /// Forgets what no longer matters: full address buckets, and accounts whose delay has
    /// passed and whose last failure is a full `account_max_delay` (at least a minute) ago.
    pub fn sweep(&mut self, now: Instant) {
        self.ips.retain(|_, b| !b.is_full(now));
        let keep_for = self.policy.account_max_delay.max(Duration::from_secs(60));
        self.accounts
            .retain(|_, a| a.until > now || now.saturating_duration_since(a.last) < keep_for);
    }

    /// Entries tracked (accounts, address groups).
    pub fn tracked(&self) -> (usize, usize) {
        (self.accounts.len(), self.ips.len())
    }

    /// Keeps the tables within `max_tracked`: sweep, and if that is not enough, forget an
    /// arbitrary entry of the fuller table (memory stays bounded whatever names an
    /// attacker makes up; the per-address bucket still limits its guessing).
    fn make_room(&mut self, now: Instant) {
        let max = self.policy.max_tracked.max(1);
        if self.accounts.len() < max && self.ips.len() < max {
            return;
        }
        self.sweep(now);
        if self.accounts.len() >= max {
            if let Some(k) = self.accounts.keys().next().cloned() {
                self.accounts.remove(&k);
            }
        }
        if self.ips.len() >= max {
            if let Some(k) = self.ips.keys().next().copied() {
                self.ips.remove(&k);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Request bodies

/// Body bytes a client must deliver within each timeout for its request body to count as
/// progressing (the rest of the body, if less is left, ends it anyway). A byte now and
/// then does not: a trickle of one byte every few seconds would hold a connection for days.
pub const BODY_MIN_PROGRESS: u64 = 1024;

/// The slowloris clock of an HTTP request body: a body that does not bring
/// [`BODY_MIN_PROGRESS`] bytes within `timeout` (since it became due, or since the last
/// such progress) has stalled.
///
/// The clock runs only while the body is due from the client. The loop pauses it whenever
/// the server itself holds the body back (an upload chunk waiting on a worker, output over
/// its limit, an AUTH or UploadBegin job in flight), so time spent waiting on the server
/// never counts against the client; a paused clock restarts from scratch.
#[derive(Debug, Clone, Default)]
pub struct BodyClock {
    /// Start of the current window; `None` while paused.
    since: Option<Instant>,
    /// Body bytes in the current window.
    got: u64,
}

impl BodyClock {
    /// The body is due from the client: starts a window at `now` unless one is running.
    pub fn run(&mut self, now: Instant) {
        if self.since.is_none() {
            self.since = Some(now);
            self.got = 0;
        }
    }

    /// Nothing is due from the client (no body, or the server holds it): stops the clock.
    pub fn pause(&mut self) {
        self.since = None;
        self.got = 0;
    }

    /// `n` body bytes arrived at `now`; once the window has [`BODY_MIN_PROGRESS`] of them
    /// a new window starts. Bytes taken while paused change nothing.
    pub fn progress(&mut self, n: u64, now: Instant) {
        if self.since.is_none() {
            return;
        }
        self.got = self.got.saturating_add(n);
        if self.got >= BODY_MIN_PROGRESS {
            self.since = Some(now);
            self.got = 0;
        }
    }

    /// Whether the current window has lasted `timeout` without enough progress.
    pub fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        self.since.is_some_and(|t| now.saturating_duration_since(t) >= timeout)
    }
}

// ---------------------------------------------------------------------------------------
// Admission

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The global connection limit is reached.
    Global,
    /// This client's address group has its limit of connections.
    PerIp,
}

impl Refusal {
    /// The message for the error frame sent before closing.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Global => "server full: too many connections",
            Refusal::PerIp => "too many connections from your address",
        }
    }
}

/// Connection counts, in total and per address group ([`IpKey`]).
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    /// `None`: no per-address limit (`--rate-limits off`, or `max_connections_per_ip = 0`).
    per_ip: Option<usize>,
    total: usize,
    by_ip: HashMap<IpKey, usize>,
}

impl Admission {
    pub fn new(max_total: usize, per_ip: Option<usize>) -> Admission {
        Admission {
            max_total,
            per_ip,
            total: 0,
            by_ip: HashMap::new(),
        }
    }

    /// From the config: `max_total` is the effective global limit (`max_connections`, or
    /// the one derived from the open-files limit); the per-address limit is
    /// `max_connections_per_ip`, lifted by `rate_limits = false` or a value of 0.
    pub fn from_config(cfg: &Config, max_total: usize) -> Admission {
        let per_ip = (cfg.rate_limits && cfg.max_connections_per_ip > 0).then_some(cfg.max_connections_per_ip);
        Admission::new(max_total, per_ip)
    }

    /// Counts a new connection from `ip`, or says why not (then nothing is counted).
    pub fn try_admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.total >= self.max_total {
            return Err(Refusal::Global);
        }
        let key = IpKey::from(ip);
        let n = self.by_ip.get(&key).copied().unwrap_or(0);
        if self.per_ip.is_some_and(|max| n >= max) {
            return Err(Refusal::PerIp);
        }
        self.by_ip.insert(key, n + 1);
        self.total += 1;
        Ok(())
    }

    /// Forgets a closed connection from `ip`. Returns false (and changes nothing) if none
    /// was counted for that address group: a bookkeeping bug, never a panic.
    pub fn release(&mut self, ip: IpAddr) -> bool {
        let key = IpKey::from(ip);
        match self.by_ip.get_mut(&key) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.by_ip.remove(&key);
            }
            None => return false,
        }
        self.total = self.total.saturating_sub(1);
        true
    }

    /// Whether the global limit is reached (pause accepting until a release).
    pub fn is_full(&self) -> bool {
        self.total >= self.max_total
    }

    /// Connections counted.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Connections counted for `ip`'s address group.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.by_ip.get(&IpKey::from(ip)).copied().unwrap_or(0)
    }

    /// Address groups with at least one connection.
    pub fn groups(&self) -> usize {
        self.by_ip.len()
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    pub fn per_ip(&self) -> Option<usize> {
        self.per_ip
    }

    /// New limits (a reload). Connections already admitted stay; new ones see the new
    /// limits.
    pub fn set_limits(&mut self, max_total: usize, per_ip: Option<usize>) {
        self.max_total = max_total;
        self.per_ip = per_ip;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // ---- TokenBucket ----------------------------------------------------------------

    #[test]
    fn bucket_starts_full_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0);
        for _ in 0..5 {
            assert_eq!(b.try_take(t0, 1.0), Ok(()));
        }
        assert_eq!(b.try_take(t0, 1.0), Err(100), "one token takes 100 ms at 10/s");
        assert_eq!(b.try_take(t0 + ms(50), 1.0), Err(50));
        assert_eq!(b.try_take(t0 + ms(100), 1.0), Ok(()));
        // Long idle: capped at the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.available(later), 5.0);
        for _ in 0..5 {
            assert_eq!(b.try_take(later, 1.0), Ok(()));
        }
        assert!(b.try_take(later, 1.0).is_err());
    }

    #[test]
    fn bucket_rejection_takes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, 3.0);
        b.try_take(t0, 2.5).unwrap();
        assert_eq!(b.try_take(t0, 1.0), Err(500));
        assert_eq!(b.try_take(t0, 1.0), Err(500), "the failed take did not drain it");
        assert_eq!(b.try_take(t0, 0.5), Ok(()));
    }

    #[test]
    fn bucket_retry_after_is_never_zero_and_bounded() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1e9, 1.0);
        b.try_take(t0, 1.0).unwrap();
        assert_eq!(b.try_take(t0, 1.0), Err(1), "sub-millisecond waits round up to 1");
        let mut slow = TokenBucket::new(1e-12, 1.0);
        slow.try_take(t0, 1.0).unwrap();
        assert_eq!(slow.try_take(t0, 1.0), Err(RETRY_NEVER_MS));
    }

    #[test]
    fn bucket_odd_parameters_do_not_panic() {
        let t0 = Instant::now();
        for (rate, burst) in [
            (0.0, 0.0),
            (-1.0, 5.0),
            (f64::NAN, f64::NAN),
            (f64::INFINITY, f64::INFINITY),
            (1.0, -3.0),
        ] {
            let mut b = TokenBucket::new(rate, burst);
            for i in 0..4 {
                let _ = b.try_take(t0 + ms(i * 1000), 1.0);
                let _ = b.try_take(t0, f64::NAN);
                let _ = b.try_take(t0, -1.0);
            }
        }
        // No refill: once empty, empty for good.
        let mut b = TokenBucket::new(0.0, 2.0);
        b.try_take(t0, 2.0).unwrap();
        assert_eq!(
            b.try_take(t0 + Duration::from_secs(1_000_000), 1.0),
            Err(RETRY_NEVER_MS)
        );
        // Zero burst: nothing fits, ever (only free takes pass).
        let mut z = TokenBucket::new(1.0, 0.0);
        assert_eq!(z.try_take(t0, 1.0), Err(RETRY_NEVER_MS));
        assert_eq!(z.try_take(t0, 0.0), Ok(()));
    }

    #[test]
    fn bucket_cost_above_burst_waits_for_a_full_bucket() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 4.0);
        b.try_take(t0, 1.0).unwrap();
        assert_eq!(b.try_take(t0, 100.0), Err(500), "needs the bucket full: 1 token at 2/s");
        assert_eq!(b.try_take(t0 + ms(500), 100.0), Ok(()));
        assert_eq!(b.available(t0 + ms(500)), 0.0);
    }

    #[test]
    fn bucket_ignores_time_going_backwards() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1.0, 1.0);
        b.try_take(t0, 1.0).unwrap();
        assert!(b.try_take(t0 - Duration::from_secs(5), 1.0).is_err());
        // The later instant stays the reference: no double refill.
        assert_eq!(b.try_take(t0 + ms(999), 1.0), Err(1));
        assert_eq!(b.try_take(t0 + ms(1000), 1.0), Ok(()));
    }

    // ---- class -------------------------------------------------------------------------

    #[test]
    fn every_action_has_a_class() {
        use Action::*;
        assert_eq!(class(Login), Class::Login);
        assert_eq!(class(Register), Class::Login);
        assert_eq!(class(Auth), Class::Login);
        assert_eq!(class(Ping), Class::Read);
        assert_eq!(class(Sync), Class::Read);
        assert_eq!(class(GetMessages), Class::Read);
        assert_eq!(class(PostMessage), Class::Write);
        assert_eq!(class(Typing), Class::Write);
        assert_eq!(class(CallSignal), Class::Write);
        assert_eq!(class(Logout), Class::Write);
        // Open (pre-session) actions other than PING are all logins.
        for name in ["PING", "REGISTER", "LOGIN", "AUTH"] {
            let a = Action::from_name(name).unwrap();
            assert!(a.open());
            assert_eq!(class(a) == Class::Login, name != "PING", "{name}");
        }
    }

    // ---- ConnLimits --------------------------------------------------------------------

    fn policy() -> RatePolicy {
        RatePolicy {
            enabled: true,
            read: Rate {
                per_second: 10.0,
                burst: 10.0,
            },
            write: Rate {
                per_second: 2.0,
                burst: 3.0,
            },
            login: Rate {
                per_second: 0.5,
                burst: 2.0,
            },
            flood_disconnect_after: 5,
            flood_window: Duration::from_secs(10),
        }
    }

    #[test]
    fn budgets_are_separate() {
        let t0 = Instant::now();
        let mut l = ConnLimits::new(&policy());
        for _ in 0..3 {
            assert_eq!(l.check(Class::Write, t0), Verdict::Allow);
        }
        assert_eq!(l.check(Class::Write, t0), Verdict::Reject { retry_after_ms: 500 });
        // Writes exhausted; reads and logins untouched.
        for _ in 0..10 {
            assert_eq!(l.check(Class::Read, t0), Verdict::Allow);
        }
        assert_eq!(l.check(Class::Login, t0), Verdict::Allow);
        assert_eq!(l.check(Class::Login, t0), Verdict::Allow);
        assert_eq!(l.check(Class::Login, t0), Verdict::Reject { retry_after_ms: 2000 });
        assert_eq!(l.rejected(), 2);
        assert_eq!(l.check(Class::Write, t0 + ms(500)), Verdict::Allow);
    }

    #[test]
    fn flooder_is_disconnected_after_its_strikes() {
        let t0 = Instant::now();
        let mut l = ConnLimits::new(&policy());
        for _ in 0..3 {
            l.check(Class::Write, t0);
        }
        // Five rejections are tolerated, the sixth at once disconnects.
        for i in 0..5 {
            assert!(
                matches!(l.check(Class::Write, t0), Verdict::Reject { .. }),
                "rejection {i}"
            );
        }
        assert_eq!(l.check(Class::Write, t0), Verdict::Disconnect);
    }

    #[test]
    fn flooder_pacing_past_the_limit_is_still_caught() {
        // Sends 10 writes per second against a budget of 2/s: 8 of 10 rejected, forever.
        let t0 = Instant::now();
        let mut l = ConnLimits::new(&policy());
        let mut disconnected_at = None;
        for i in 0..1000u64 {
            let now = t0 + ms(i * 100);
            if l.check(Class::Write, now) == Verdict::Disconnect {
                disconnected_at = Some(now - t0);
                break;
            }
        }
        let at = disconnected_at.expect("a steady flooder is disconnected");
        assert!(at <= Duration::from_secs(3), "caught after {at:?}");
    }

    #[test]
    fn occasional_overshoot_is_never_disconnected() {
        // A client that overshoots its write burst by one every 3 s: one rejection per
        // 3 s, below the strike refill (5 per 10 s), so it is told to wait but never cut off.
        let t0 = Instant::now();
        let mut l = ConnLimits::new(&policy());
        let mut now = t0;
        for _ in 0..1000 {
            for _ in 0..4 {
                // Burst of 4 against 3 tokens: one rejection.
                assert_ne!(l.check(Class::Write, now), Verdict::Disconnect);
            }
            now += Duration::from_secs(3);
        }
        assert_eq!(l.rejected(), 1000);
    }

    #[test]
    fn limits_off_allow_everything() {
        let t0 = Instant::now();
        let mut l = ConnLimits::new(&RatePolicy {
            enabled: false,
            ..policy()
        });
        for _ in 0..10_000 {
            assert_eq!(l.check(Class::Login, t0), Verdict::Allow);
        }
        assert_eq!(l.rejected(), 0);
    }

    #[test]
    fn policy_from_config() {
        let cfg = Config {
            write_rate: 7.0,
            write_burst: 9,
            flood_window_s: 4,
            rate_limits: false,
            ..Config::default()
        };
        let p = RatePolicy::from_config(&cfg);
        assert!(!p.enabled);
        assert_eq!(
            p.write,
            Rate {
                per_second: 7.0,
                burst: 9.0
            }
        );
        assert_eq!(p.flood_window, Duration::from_secs(4));
        let d = RatePolicy::default();
        assert!(d.enabled && d.read.burst >= 1.0 && d.login.per_second > 0.0);
    }

    #[test]
    fn refund_gives_a_unit_back_up_to_the_burst() {
        let mut l = ConnLimits::new(&policy());
        let t0 = Instant::now();
        assert_eq!(l.check(Class::Login, t0), Verdict::Allow);
        assert_eq!(l.check(Class::Login, t0), Verdict::Allow);
        l.refund(Class::Login, t0);
        assert_eq!(l.check(Class::Login, t0), Verdict::Allow);
        assert!(matches!(l.check(Class::Login, t0), Verdict::Reject { .. }));
        // Never above the burst.
        let mut fresh = ConnLimits::new(&policy());
        fresh.refund(Class::Login, t0);
        fresh.refund(Class::Login, t0);
        assert_eq!(fresh.check(Class::Login, t0), Verdict::Allow);
        assert_eq!(fresh.check(Class::Login, t0), Verdict::Allow);
        assert!(matches!(fresh.check(Class::Login, t0), Verdict::Reject { .. }));
    }

    #[test]
    fn check_cost_charges_several_tokens() {
        let t0 = Instant::now();
        let mut l = ConnLimits::new(&policy());
        assert_eq!(l.check_cost(Class::Read, 8.0, t0), Verdict::Allow);
        assert_eq!(
            l.check_cost(Class::Read, 3.0, t0),
            Verdict::Reject { retry_after_ms: 100 }
        );
    }

    // ---- IpKey ---------------------------------------------------------------------------

    #[test]
    fn ipv6_groups_by_64_and_mapped_v4_is_v4() {
        assert_eq!(
            IpKey::from(ip("2001:db8:1:2::1")),
            IpKey::from(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(IpKey::from(ip("2001:db8:1:2::1")), IpKey::from(ip("2001:db8:1:3::1")));
        assert_eq!(IpKey::from(ip("::ffff:192.0.2.7")), IpKey::from(ip("192.0.2.7")));
        assert_ne!(IpKey::from(ip("192.0.2.7")), IpKey::from(ip("192.0.2.8")));
        assert_eq!(IpKey::from(ip("2001:db8:1:2::1")).to_string(), "2001:db8:1:2::/64");
        assert_eq!(IpKey::from(ip("::ffff:10.0.0.1")).to_string(), "10.0.0.1");
        // ::1 is its own /64 (with everything else in ::/64); loopback v4 is itself.
        assert_eq!(IpKey::from(ip("::1")), IpKey::V6Net64(0));
    }

    // ---- LoginThrottle ---------------------------------------------------------------------

    fn login_policy() -> LoginPolicy {
        LoginPolicy {
            ip_burst: 10,
            ip_per_min: 6.0,
            account_free: 3,
            account_max_delay: Duration::from_secs(60),
            max_tracked: 1000,
        }
    }

    #[test]
    fn account_delay_doubles_after_the_free_failures_and_is_capped() {
        let cap = Duration::from_secs(60);
        let got: Vec<u64> = (1..=9).map(|n| account_delay(n, cap).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(account_delay(u32::MAX, cap), cap);
    }

    #[test]
    fn account_is_throttled_and_success_resets_it() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::new(login_policy());
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(t.check(a, Some("Alice"), t0), Ok(()));
            t.record_failure(a, Some("Alice"), t0);
        }
        assert_eq!(t.check(a, Some("alice"), t0), Ok(()), "three free failures");
        t.record_failure(a, Some("alice"), t0);
        assert_eq!(t.check(a, Some("ALICE"), t0), Err(1000), "case-insensitive, 1 s");
        assert_eq!(t.check(a, Some("bob"), t0), Ok(()), "other accounts unaffected");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.check(a, Some("alice"), t1), Ok(()));
        t.record_failure(a, Some("alice"), t1);
        assert_eq!(t.check(a, Some("alice"), t1), Err(2000), "doubles");
        // The same account from another address: the account's delay applies there too.
        assert_eq!(t.check(ip("198.51.100.9"), Some("alice"), t1), Err(2000));
        t.record_success(a, "Alice", t1 + Duration::from_secs(2));
        assert_eq!(t.check(a, Some("alice"), t1 + Duration::from_secs(2)), Ok(()));
        t.record_failure(a, Some("alice"), t1 + Duration::from_secs(2));
        assert_eq!(
            t.check(a, Some("alice"), t1 + Duration::from_secs(2)),
            Ok(()),
            "the count started again"
        );
    }

    #[test]
    fn address_is_throttled_and_success_does_not_reset_it() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::new(login_policy());
        let a = ip("2001:db8::1");
        // Ten failures spread over ten accounts (none reaches its own limit).
        for i in 0..10 {
            assert_eq!(t.check(a, Some(&format!("user{i}")), t0), Ok(()));
            t.record_failure(a, Some(&format!("user{i}")), t0);
        }
        // 6 per minute: one forgiven every 10 s.
        assert_eq!(t.check(a, Some("user99"), t0), Err(10_000));
        assert_eq!(t.check(a, None, t0), Err(10_000), "AUTH from there too");
        assert_eq!(
            t.check(ip("2001:db8::ffff"), None, t0),
            Err(10_000),
            "same /64, same bucket"
        );
        assert_eq!(t.check(ip("2001:db8:0:1::1"), None, t0), Ok(()), "another /64");
        t.record_success(a, "user0", t0);
        assert_eq!(
            t.check(a, None, t0),
            Err(10_000),
            "a success does not refill the address"
        );
        assert_eq!(t.check(a, None, t0 + Duration::from_secs(10)), Ok(()));
    }

    #[test]
    fn throttles_can_be_turned_off() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::new(LoginPolicy {
            ip_burst: 0,
            account_max_delay: Duration::ZERO,
            ..login_policy()
        });
        let a = ip("192.0.2.1");
        for _ in 0..1000 {
            t.record_failure(a, Some("alice"), t0);
        }
        assert_eq!(t.check(a, Some("alice"), t0), Ok(()));
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn sweep_forgets_settled_entries() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::new(login_policy());
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            t.record_failure(a, Some("alice"), t0);
        }
        t.record_failure(ip("192.0.2.2"), None, t0);
        assert_eq!(t.tracked(), (1, 2));
        t.sweep(t0 + Duration::from_secs(5));
        assert_eq!(t.tracked(), (1, 2), "nothing settled yet");
        // 10 s refills one failure: 192.0.2.2's bucket is full again.
        t.sweep(t0 + Duration::from_secs(10));
        assert_eq!(t.tracked(), (1, 1));
        t.sweep(t0 + Duration::from_secs(120));
        assert_eq!(t.tracked(), (0, 0));
    }

    #[test]
    fn tables_stay_bounded() {
        let t0 = Instant::now();
        let mut t = LoginThrottle::new(LoginPolicy {
            max_tracked: 50,
            ..login_policy()
        });
        for i in 0..10_000u32 {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            t.record_failure(addr, Some(&format!("u{i}")), t0);
        }
        let (accounts, ips) = t.tracked();
        assert!(accounts <= 50 && ips <= 50, "{accounts} accounts, {ips} addresses");
    }

    // ---- Admission ---------------------------------------------------------------------------

    #[test]
    fn admission_global_and_per_ip() {
        let mut adm = Admission::new(4, Some(2));
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        assert_eq!(adm.try_admit(a), Ok(()));
        assert_eq!(adm.try_admit(a), Ok(()));
        assert_eq!(adm.try_admit(a), Err(Refusal::PerIp));
        assert_eq!(adm.count(a), 2, "a refusal counts nothing");
        assert_eq!(adm.try_admit(b), Ok(()));
        assert!(!adm.is_full());
        assert_eq!(adm.try_admit(c), Ok(()));
        assert!(adm.is_full());
        assert_eq!(adm.try_admit(ip("192.0.2.4")), Err(Refusal::Global));
        assert_eq!(adm.try_admit(a), Err(Refusal::Global), "global is checked first");
        assert!(adm.release(a));
        assert!(!adm.is_full());
        assert_eq!(adm.try_admit(ip("192.0.2.4")), Ok(()));
        assert_eq!(adm.total(), 4);
        assert_eq!(adm.groups(), 4);
    }

    #[test]
    fn admission_release_is_exact_and_never_underflows() {
        let mut adm = Admission::new(10, Some(3));
        let a = ip("2001:db8::1");
        assert!(!adm.release(a), "nothing to release");
        assert_eq!(adm.total(), 0);
        adm.try_admit(a).unwrap();
        adm.try_admit(ip("2001:db8::2")).unwrap();
        assert_eq!(adm.count(a), 2, "one /64");
        assert!(adm.release(ip("2001:db8::2")));
        assert!(adm.release(a));
        assert!(!adm.release(a));
        assert_eq!((adm.total(), adm.groups()), (0, 0), "the table empties");
    }

    #[test]
    fn admission_per_ip_lifted_by_rate_limits_off_or_zero() {
        let off = Config {
            rate_limits: false,
            ..Config::default()
        };
        let mut adm = Admission::from_config(&off, 100);
        assert_eq!(adm.per_ip(), None);
        for _ in 0..100 {
            adm.try_admit(ip("127.0.0.1")).unwrap();
        }
        assert_eq!(
            adm.try_admit(ip("127.0.0.1")),
            Err(Refusal::Global),
            "the global limit stays"
        );
        let zero = Config {
            max_connections_per_ip: 0,
            ..Config::default()
        };
        assert_eq!(Admission::from_config(&zero, 100).per_ip(), None);
        let on = Admission::from_config(&Config::default(), 100);
        assert_eq!(on.per_ip(), Some(Config::default().max_connections_per_ip));
    }

    // ---- BodyClock -------------------------------------------------------------------

    #[test]
    fn body_clock_cuts_a_stall_and_a_trickle_but_not_progress() {
        let t0 = Instant::now();
        let timeout = ms(1000);
        // Stalled: nothing for the timeout.
        let mut c = BodyClock::default();
        assert!(!c.stalled(t0 + ms(5000), timeout), "not running: never stalled");
        c.run(t0);
        assert!(!c.stalled(t0 + ms(999), timeout));
        assert!(c.stalled(t0 + ms(1000), timeout));
        // A trickle: a byte every 100 ms is not enough progress.
        let mut c = BodyClock::default();
        c.run(t0);
        for i in 1..10 {
            c.progress(1, t0 + ms(100 * i));
        }
        assert!(c.stalled(t0 + ms(1000), timeout));
        // Progress: BODY_MIN_PROGRESS bytes in pieces start a new window.
        let mut c = BodyClock::default();
        c.run(t0);
        c.progress(BODY_MIN_PROGRESS / 2, t0 + ms(400));
        c.progress(BODY_MIN_PROGRESS / 2, t0 + ms(800));
        assert!(!c.stalled(t0 + ms(1700), timeout));
        assert!(c.stalled(t0 + ms(1800), timeout));
        // `run` on a running clock keeps its window.
        c.run(t0 + ms(1750));
        assert!(c.stalled(t0 + ms(1800), timeout));
    }

    #[test]
    fn body_clock_does_not_count_time_the_server_holds_the_body() {
        let t0 = Instant::now();
        let timeout = ms(1000);
        let mut c = BodyClock::default();
        c.run(t0);
        c.pause(); // the server holds the body (a chunk waiting on a worker)
        assert!(!c.stalled(t0 + ms(5000), timeout));
        c.progress(10 * BODY_MIN_PROGRESS, t0 + ms(5000)); // taken while paused: no window
        assert!(!c.stalled(t0 + ms(9000), timeout));
        c.run(t0 + ms(5000)); // due again: a fresh window
        assert!(!c.stalled(t0 + ms(5999), timeout));
        assert!(c.stalled(t0 + ms(6000), timeout));
    }

    #[test]
    fn admission_reload_keeps_counts() {
        let mut adm = Admission::new(3, Some(3));
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            adm.try_admit(a).unwrap();
        }
        adm.set_limits(10, Some(1));
        assert_eq!(adm.try_admit(a), Err(Refusal::PerIp));
        assert_eq!(adm.try_admit(ip("192.0.2.2")), Ok(()));
        assert_eq!(adm.max_total(), 10);
        assert!(!Refusal::Global.message().is_empty() && !Refusal::PerIp.message().is_empty());
    }
}
