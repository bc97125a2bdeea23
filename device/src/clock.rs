//! The one clock abstraction of the device.
//!
//! The table never reads time itself; the shells pass it `Clock::now()`. Real mode uses
//! [`SystemClock`]: monotonic, anchored to the wall clock once at start so its readings are
//! also the wall times reported on the wire. Tests and simulations use [`ManualClock`], whose
//! time moves only when told, so time-dependent behaviour is exact and instant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use opof_proto::domain::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// Monotonic time, expressed as wall time from the moment the clock was made.
pub struct SystemClock {
    wall_at_start: u64,
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        SystemClock { wall_at_start: wall, start: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.wall_at_start.saturating_add(self.start.elapsed().as_nanos() as u64))
    }
}

/// Virtual time: it moves only through [`ManualClock::set`] and [`ManualClock::advance_secs`],
/// and never backwards.
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(AtomicU64::new(start.0))
    }
    /// Moves the clock to `t` (a time earlier than now is ignored).
    pub fn set(&self, t: Timestamp) {
        self.0.fetch_max(t.0, Ordering::SeqCst);
    }
    pub fn advance_secs(&self, s: u64) {
        self.0.fetch_add(s.saturating_mul(1_000_000_000), Ordering::SeqCst);
    }
    pub fn advance_nanos(&self, n: u64) {
        self.0.fetch_add(n, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}
