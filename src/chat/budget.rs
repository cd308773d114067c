//! The history budget (SPEC §5): RESTORE_HISTORY (and, later, backups) cost deltas, charged
//! against a per-user token bucket that refills at `rate` deltas per second up to `burst`.
//! Under load the bucket shrinks: at full load a user gets a quarter of the normal rate
//! and burst, so bulk history reads give way to live traffic.
//!
//! Pure: the caller passes the time and the load, so tests need no sleeps.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct Budget {
    rate: f64,
    burst: f64,
    users: HashMap<i64, Bucket>,
}

impl Budget {
    /// `rate` deltas per second, at most `burst` at once.
    pub fn new(rate: f64, burst: f64) -> Budget {
        Budget {
            rate: rate.max(1.0),
            burst: burst.max(1.0),
            users: HashMap::new(),
        }
    }

    /// Charges `cost` to `user`. `load` is how busy the server is, 0.0 (idle) to 1.0.
    /// Over budget: `Err(milliseconds until the charge would fit)`, nothing charged.
    pub fn charge(&mut self, user: i64, cost: f64, now: Instant, load: f64) -> Result<(), u64> {
        let scale = 1.0 - 0.75 * load.clamp(0.0, 1.0);
        let (rate, burst) = (self.rate * scale, self.burst * scale);
        let b = self.users.entry(user).or_insert(Bucket { tokens: burst, at: now });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        let cost = cost.min(burst); // a request bigger than the burst waits for a full bucket
        if b.tokens >= cost {
            b.tokens -= cost;
            Ok(())
        } else {
            Err(((cost - b.tokens) / rate * 1000.0).ceil() as u64)
        }
    }

    /// Forgets users whose bucket has refilled (keeps the table small).
    pub fn sweep(&mut self, now: Instant) {
        let full = Duration::from_secs_f64(self.burst / self.rate);
        self.users.retain(|_, b| now.saturating_duration_since(b.at) < full);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_over_time_and_reports_the_wait() {
        let t0 = Instant::now();
        let mut b = Budget::new(100.0, 500.0);
        assert!(b.charge(1, 500.0, t0, 0.0).is_ok());
        assert_eq!(b.charge(1, 100.0, t0, 0.0), Err(1000));
        assert!(b.charge(2, 100.0, t0, 0.0).is_ok(), "budgets are per user");
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.charge(1, 100.0, t1, 0.0).is_ok());
        assert!(b.charge(1, 1.0, t1, 0.0).is_err());
    }

    #[test]
    fn shrinks_under_load() {
        let t0 = Instant::now();
        let mut b = Budget::new(100.0, 400.0);
        // At full load the burst is a quarter: 100.
        assert!(b.charge(1, 100.0, t0, 1.0).is_ok());
        assert_eq!(b.charge(1, 50.0, t0, 1.0), Err(2000), "25 deltas/s at full load");
        let mut idle = Budget::new(100.0, 400.0);
        assert!(idle.charge(1, 400.0, t0, 0.0).is_ok());
    }

    #[test]
    fn sweep_forgets_full_buckets() {
        let t0 = Instant::now();
        let mut b = Budget::new(100.0, 100.0);
        b.charge(1, 10.0, t0, 0.0).unwrap();
        b.sweep(t0 + Duration::from_millis(500));
        assert_eq!(b.users.len(), 1);
        b.sweep(t0 + Duration::from_secs(2));
        assert!(b.users.is_empty());
    }
}
