//! The 5-tuple index: open addressing with linear probing over 8-byte slots, built for the
//! datapath's lookups.
//!
//! A slot holds the upper 32 bits of the key's hash (the tag) and the entry's handle. A
//! session's home slot is the tag masked to the table's size, so a lookup reads one cache
//! line of slots in the common case, compares tags there without touching entries, and
//! touches the one entry whose tag matches. [`TupleIndex::prefetch`] lets a batch of lookups
//! start every slot load before it needs the first one, so cache and TLB misses of many packets
//! overlap instead of adding up. Deletion shifts later entries back (no tombstones), so probe
//! lengths do not grow with churn.
//!
//! Sized once for the table's capacity at a load of at most 3/4 and never rehashed; on Linux
//! the slot array is backed by transparent huge pages when the system allows it (fewer TLB
//! misses on random lookups).

/// An empty slot. Slots hold the complement of `tag << 32 | handle` (no handle reaches
/// `u32::MAX`, so no occupied slot is 0): a new index is zeroed memory, which the allocator
/// maps lazily, so huge pages can back it as it fills.
const EMPTY: u64 = 0;

fn slot(tag: u32, handle: u32) -> u64 {
    !(u64::from(tag) << 32 | u64::from(handle))
}

fn slot_tag(s: u64) -> u32 {
    (!s >> 32) as u32
}

fn slot_handle(s: u64) -> u32 {
    !s as u32
}

pub(crate) struct TupleIndex {
    slots: Vec<u64>,
    mask: usize,
}

fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32
}

impl TupleIndex {
    /// An index for up to `capacity` entries.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let n = (capacity.saturating_mul(4) / 3 + 8).next_power_of_two();
        let slots = vec![EMPTY; n];
        // Zeroed memory comes untouched from the allocator: advise before the first write.
        advise_huge_pages(slots.as_ptr() as *const u8, n * 8);
        TupleIndex { slots, mask: n - 1 }
    }

    fn home(&self, hash: u64) -> usize {
        tag_of(hash) as usize & self.mask
    }

    /// Starts loading the home slot of `hash` into the cache.
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        prefetch(&self.slots[self.home(hash)]);
    }

    /// [`TupleIndex::prefetch`] for a removal: also the next line of slots, which the backward
    /// shift reads when the run goes on past the home slot's line (often, at half load).
    #[inline]
    pub(crate) fn prefetch_run(&self, hash: u64) {
        let home = self.home(hash);
        prefetch(&self.slots[home]);
        prefetch(&self.slots[(home + 8) & self.mask]);
    }

    /// The first handle whose tag matches `hash`, without looking at entries (a hint for
    /// prefetching the entry; [`TupleIndex::find_map`] decides).
    #[inline]
    pub(crate) fn first_candidate(&self, hash: u64) -> Option<u32> {
        self.find_map(hash, |_| Some(())).map(|(h, ())| h)
    }

    /// The first handle with this hash for which `f` answers something, with the answer (a
    /// lookup that learns more than yes or no from the entry it compares). The one probe of
    /// the index: every lookup goes through it.
    #[inline]
    pub(crate) fn find_map<T>(&self, hash: u64, mut f: impl FnMut(u32) -> Option<T>) -> Option<(u32, T)> {
        let tag = tag_of(hash);
        let mut i = self.home(hash);
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return None;
            }
            if slot_tag(s) == tag {
                if let Some(t) = f(slot_handle(s)) {
                    return Some((slot_handle(s), t));
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Adds a handle known to be absent. The index never fills: the table holds at most its
    /// capacity, and the index has room for 4/3 of it.
    pub(crate) fn insert(&mut self, hash: u64, handle: u32) {
        let mut i = self.home(hash);
        while self.slots[i] != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = slot(tag_of(hash), handle);
    }

    /// Removes `handle`, stored under `hash`; false when it is not there.
    pub(crate) fn remove(&mut self, hash: u64, handle: u32) -> bool {
        let want = slot(tag_of(hash), handle);
        let mut i = self.home(hash);
        loop {
            match self.slots[i] {
                EMPTY => return false,
                s if s == want => break,
                _ => i = (i + 1) & self.mask,
            }
        }
        // Backward shift: move later entries of the run into the hole when their home is not
        // between the hole and where they sit.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let s = self.slots[j];
            if s == EMPTY {
                break;
            }
            let home = slot_tag(s) as usize & self.mask;
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        true
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.slots.len() * 8
    }
}

/// Starts loading the cache line of `p`.
#[inline]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for transparent huge pages over the whole 2 MiB pages inside `[p, p + len)` (Linux;
/// a no-op where refused or elsewhere).
pub(crate) fn advise_huge_pages(p: *const u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (p as usize).next_multiple_of(HUGE);
        let end = (p as usize + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: advice on whole pages of an allocation this process owns; madvise does
            // not change the memory's contents or validity.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Against a map: inserts and removes in any order, with hashes crowded into few home
        /// slots so runs wrap around the end and shift back across it.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((any::<bool>(), 0u32..64, 0u64..8), 1..400)) {
            let mut idx = TupleIndex::with_capacity(48);
            let mut model: HashMap<u32, u64> = HashMap::new();
            for (insert, handle, h) in ops {
                // Tags 0..8 land in slots 0..8; a few land near the end to wrap.
                let hash = (if h < 6 { h } else { idx.mask as u64 - (h - 6) }) << 32 | u64::from(handle);
                if insert && !model.contains_key(&handle) && model.len() < 48 {
                    idx.insert(hash, handle);
                    model.insert(handle, hash);
                } else if let Some(hash) = model.remove(&handle) {
                    prop_assert!(idx.remove(hash, handle));
                }
                for (&hd, &hs) in &model {
                    prop_assert_eq!(idx.find_map(hs, |x| (x == hd).then_some(())), Some((hd, ())));
                }
                prop_assert_eq!(idx.find_map(7 << 32, |x| (x == 1000).then_some(())), None);
            }
        }
    }

    #[test]
    fn sized_for_capacity_at_three_quarters_at_most() {
        for cap in [1usize, 100, 1 << 20] {
            let idx = TupleIndex::with_capacity(cap);
            assert!(idx.slots.len() * 3 >= cap * 4, "{cap}");
            assert!(idx.bytes() <= (cap * 4 / 3 + 8).next_power_of_two() * 8);
        }
    }
}
