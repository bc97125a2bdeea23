//! Idle-timeout timers: a hashed timer wheel of 1 ms ticks with lazy re-arming.
//!
//! Each session has one element in the wheel, in the bucket of the tick of its deadline as it
//! was when armed. Packets only move a session's `last_seen`; they never touch the wheel. When a
//! bucket comes due, each of its sessions is checked against its exact deadline: expired ones
//! close, the others (they saw traffic) are re-armed at their new deadline. The cost therefore
//! follows expiries and re-arms, not the size of the table; an element costs one `u32`.
//!
//! Elements are not removed when a session is deleted; the entry's `armed` tick tells a live
//! element from a stale one (see [`super::SessionTable::advance`]).
//!
//! Memory: a `Vec` header per bucket (1.5 MiB in all) and 4 bytes per element waiting; a
//! bucket's buffer is freed when the bucket is drained.

pub(crate) const TICK_NS: u64 = 1_000_000;
const BUCKETS: usize = 1 << 16;

pub(crate) struct TimerWheel {
    buckets: Vec<Vec<u32>>,
    /// The tick processed last (the current tick is revisited until time moves past it).
    cursor: Option<u64>,
}

/// What [`TimerWheel::advance`] hands to the table for each element of a due bucket.
pub(crate) struct Due {
    pub handle: u32,
    /// The tick this element was armed for; `None` after a jump longer than the wheel, when
    /// every bucket is visited once and the tick cannot be told.
    pub tick: Option<u64>,
}

/// Do two ticks this far apart share a bucket?
pub(crate) fn same_bucket(distance: u64) -> bool {
    distance.is_multiple_of(BUCKETS as u64)
}

pub(crate) fn tick_of(ns: u64) -> u64 {
    ns / TICK_NS
}

impl TimerWheel {
    pub(crate) fn new() -> Self {
        TimerWheel { buckets: (0..BUCKETS).map(|_| Vec::new()).collect(), cursor: None }
    }

    /// Puts `handle` in the bucket of `deadline_ns` and returns the tick it sits in.
    pub(crate) fn arm(&mut self, handle: u32, deadline_ns: u64, now_ns: u64) -> u64 {
        let cursor = *self.cursor.get_or_insert(tick_of(now_ns));
        let tick = tick_of(deadline_ns).max(cursor);
        self.buckets[(tick % BUCKETS as u64) as usize].push(handle);
        tick
    }

    /// Visits every element that may be due at `now_ns`. `visit` decides for each: it may
    /// re-arm the session through the `&mut TimerWheel` it is given.
    pub(crate) fn advance(&mut self, now_ns: u64, mut visit: impl FnMut(&mut TimerWheel, Due)) {
        let now_tick = tick_of(now_ns);
        let cursor = *self.cursor.get_or_insert(now_tick);
        if now_tick < cursor {
            return;
        }
        self.cursor = Some(now_tick);
        if now_tick - cursor >= BUCKETS as u64 {
            for b in 0..BUCKETS {
                self.drain(b, None, &mut visit);
            }
        } else {
            for t in cursor..=now_tick {
                self.drain((t % BUCKETS as u64) as usize, Some(t), &mut visit);
            }
        }
    }

    fn drain(&mut self, b: usize, tick: Option<u64>, visit: &mut impl FnMut(&mut TimerWheel, Due)) {
        if self.buckets[b].is_empty() {
            return;
        }
        // The bucket's allocation goes with its elements: a drained bucket holds no memory, so
        // the wheel holds what its live elements need, not the fullest turn every one of its
        // 65,536 buckets ever saw (which grew by ~0.2 MB a minute for ten minutes and more
        // under a steady load as buckets were used one after the other).
        let taken = std::mem::take(&mut self.buckets[b]);
        for &handle in &taken {
            visit(self, Due { handle, tick });
        }
    }
}
