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
//! The tick processed last (the cursor) is aged again and again while time stays inside it (the
//! datapath ages at every batch, tens to a millisecond). Its elements are kept apart, each with
//! its deadline, so such a revisit looks only at those due by then: not at sessions due later in
//! the same millisecond, and not at the elements of the cursor's bucket, which are all armed for
//! later turns of the wheel once the cursor's tick has been visited.
//!
//! Memory: a `Vec` header per bucket (1.5 MiB in all) and 4 bytes per element waiting (16 for
//! an element of the cursor's tick); a bucket's buffer is freed when the bucket is drained, the
//! cursor's when it is emptied (beyond a thousand elements' room).
//!
//! A pass over the due buckets can be cut into steps of bounded work
//! ([`TimerWheel::advance_bounded`]): a step that runs out of budget keeps the rest of the
//! bucket it was visiting, so the next step goes on exactly where it stopped.

pub(crate) const TICK_NS: u64 = 1_000_000;
/// How many visits ahead [`TimerWheel::advance_bounded`] names the element to come, to its
/// `ahead` callback and, nearer, to the visit.
pub(crate) const AHEAD: usize = 12;
pub(crate) const NEAR: usize = 6;
const BUCKETS: usize = 1 << 16;

pub(crate) struct TimerWheel {
    buckets: Vec<Vec<u32>>,
    /// The tick processed last (the current tick is revisited until time moves past it).
    cursor: Option<u64>,
    /// The pass under way, if a call ran out of budget: the bucket being visited (taken out of
    /// it, so re-arms into that bucket land in a fresh one) and how far, in the order its
    /// elements were armed; the tick those elements were armed for, and the buckets still to
    /// visit.
    pending: Vec<u32>,
    pending_at: usize,
    pending_tick: Option<u64>,
    pass: Option<Pass>,
    /// The elements armed for the cursor's tick, with their deadlines (ns), in no order; and
    /// the least of those deadlines (`u64::MAX` when there are none).
    soon: Vec<(u64, u32)>,
    soon_min: u64,
}

/// The buckets a pass still has to visit.
#[derive(Clone, Copy)]
enum Pass {
    /// Ticks `next..=last`, in order.
    Ticks { next: u64, last: u64 },
    /// After a jump longer than the wheel: every bucket once, from `next`.
    Sweep { next: usize },
}

/// What [`TimerWheel::advance_bounded`] hands to the table for each element of a due bucket.
pub(crate) struct Due {
    pub handle: u32,
    /// The tick this element was armed for; `None` after a jump longer than the wheel, when
    /// every bucket is visited once and the tick cannot be told.
    pub tick: Option<u64>,
    /// The element to be visited [`NEAR`] visits later, if it is of this bucket.
    pub near: Option<u32>,
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
        TimerWheel {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            cursor: None,
            pending: Vec::new(),
            pending_at: 0,
            pending_tick: None,
            pass: None,
            soon: Vec::new(),
            soon_min: u64::MAX,
        }
    }

    /// Puts `handle` in the bucket of `deadline_ns` and returns the tick it sits in.
    pub(crate) fn arm(&mut self, handle: u32, deadline_ns: u64, now_ns: u64) -> u64 {
        let cursor = *self.cursor.get_or_insert(tick_of(now_ns));
        let tick = tick_of(deadline_ns).max(cursor);
        if tick == cursor {
            self.soon.push((deadline_ns, handle));
            self.soon_min = self.soon_min.min(deadline_ns);
        } else {
            self.buckets[(tick % BUCKETS as u64) as usize].push(handle);
        }
        tick
    }

    /// Would [`TimerWheel::advance_bounded`] to `now_ns` visit nothing? True when no pass is
    /// under way (then no element is pending either), time is still in the cursor's tick and no
    /// element armed for that tick is due by `now_ns` (as for most of the datapath's batches,
    /// many to a tick).
    pub(crate) fn nothing_due(&self, now_ns: u64) -> bool {
        self.pass.is_none() && self.cursor == Some(tick_of(now_ns)) && now_ns < self.soon_min
    }

    /// Takes out the elements of the cursor's tick due by `until_ns`; `None` when there are none.
    fn take_soon(&mut self, until_ns: u64) -> Option<Vec<u32>> {
        if until_ns < self.soon_min {
            return None;
        }
        let (mut due, mut least) = (Vec::new(), u64::MAX);
        self.soon.retain(|&(deadline, handle)| {
            if deadline <= until_ns {
                due.push(handle);
                false
            } else {
                least = least.min(deadline);
                true
            }
        });
        self.soon_min = least;
        if self.soon.is_empty() && self.soon.capacity() > 1024 {
            // As a drained bucket's: the room a mass expiry needed is not kept.
            self.soon = Vec::new();
        }
        Some(due)
    }

    /// Makes `elements`, armed for `tick`, the ones to visit next, their first entries requested.
    fn load(&mut self, elements: Vec<u32>, tick: Option<u64>, ahead: &impl Fn(u32)) {
        elements.iter().take(AHEAD).for_each(|&h| ahead(h));
        self.pending = elements;
        self.pending_at = 0;
        self.pending_tick = tick;
    }

    /// Visits elements that may be due at `now_ns`, at most `*budget` of them (counted down):
    /// `true` once every one was visited, `false` when the budget ran out first. A pass that
    /// ran out is taken up where it stopped by the next call (whose `now_ns` must be the same:
    /// the table finishes a pass before it starts one for a later time): the elements of a
    /// bucket not visited yet are kept apart, never dropped. `visit` decides for each element;
    /// it may re-arm the session through the `&mut TimerWheel` it is given.
    ///
    /// `ahead` is told the handle of the element to be visited [`AHEAD`] visits later (so the
    /// caller can request its entry from memory in time).
    pub(crate) fn advance_bounded(
        &mut self,
        now_ns: u64,
        budget: &mut usize,
        ahead: impl Fn(u32),
        mut visit: impl FnMut(&mut TimerWheel, Due),
    ) -> bool {
        if self.pass.is_none() {
            let now_tick = tick_of(now_ns);
            let cursor = *self.cursor.get_or_insert(now_tick);
            if now_tick < cursor {
                return true;
            }
            // The old cursor's bucket was visited when the cursor came to it, and holds elements
            // of later turns only; its own tick's elements are in `soon`, all due once time has
            // left the tick (visited first), otherwise those due by now (visited last, with any
            // armed for the tick during the pass).
            if now_tick > cursor {
                if let Some(due) = self.take_soon(u64::MAX) {
                    self.load(due, Some(cursor), &ahead);
                }
            }
            self.cursor = Some(now_tick);
            self.pass = Some(if now_tick - cursor >= BUCKETS as u64 {
                Pass::Sweep { next: 0 }
            } else {
                Pass::Ticks { next: cursor + 1, last: now_tick }
            });
        }
        loop {
            while let Some(&handle) = self.pending.get(self.pending_at) {
                if *budget == 0 {
                    return false;
                }
                *budget -= 1;
                if let Some(&far) = self.pending.get(self.pending_at + AHEAD) {
                    ahead(far);
                }
                let near = self.pending.get(self.pending_at + NEAR).copied();
                self.pending_at += 1;
                visit(self, Due { handle, tick: self.pending_tick, near });
            }
            // The bucket's allocation goes with its elements: a drained bucket holds no memory,
            // so the wheel holds what its live elements need, not the fullest turn each of its
            // 65,536 buckets ever saw (which grew by ~0.2 MB a minute for ten minutes and more
            // under a steady load, as buckets were used one after the other).
            self.pending = Vec::new();
            self.pending_at = 0;
            let (elements, tick) = match self.pass {
                Some(Pass::Sweep { next }) if next < BUCKETS => {
                    self.pass = Some(Pass::Sweep { next: next + 1 });
                    (std::mem::take(&mut self.buckets[next]), None)
                }
                Some(Pass::Ticks { next, last }) if next <= last => {
                    self.pass = Some(Pass::Ticks { next: next + 1, last });
                    (std::mem::take(&mut self.buckets[(next % BUCKETS as u64) as usize]), Some(next))
                }
                // The buckets are done: the cursor's elements due by the pass's time last, until
                // none is left (a visit re-arms into the cursor's tick only sessions due after
                // that time, so a second look finds none).
                _ => match self.take_soon(now_ns) {
                    Some(due) => (due, self.cursor),
                    None => {
                        self.pass = None;
                        return true;
                    }
                },
            };
            self.load(elements, tick, &ahead);
        }
    }
}
