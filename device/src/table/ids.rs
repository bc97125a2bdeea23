//! The ordered id index: session id → slot handle, iterable in ascending id.
//!
//! Sorted chunks of at most [`CHUNK`] entries, with keys and values in separate arrays
//! (12 bytes per entry, no padding). Appending ascending ids (what VNFs do) fills chunks
//! completely; inserting into a full chunk splits it where the id goes, within its middle half
//! (ids that arrive nearly ascending, from streams committed in any order, leave chunks about
//! two thirds full). A lookup finds its chunk searching from the top (a few comparisons for the
//! new ids addSession asks every shard about), then searches the chunk; chunks are small, so an
//! insert among the last few hundred ids shifts few entries. An insert right after the last
//! one below the largest id, with nothing between them (the next id of a stream committed
//! after later streams), goes where the last one left off without any search. Whether one of
//! the 2,048 ids up to the largest ever inserted is present is a bit test ([`Recent`]): what
//! addSession asks every other shard about each new id. This costs about half the memory of a
//! `BTreeMap<u64, u32>` for the same entries.
//! A chunk is a ring (`VecDeque`): removing the oldest ids first (sessions of one age expiring
//! together) takes each from the front without shifting the rest, and the list of chunks is a
//! ring too, so a chunk emptied from the front leaves without shifting the others. Removal
//! starts from the chunk the last one found: removing ids in ascending order costs no search
//! at all. An id past the largest is found absent and appended without a search (addSession
//! asks both of every new id), and an aging step's ids leave together, sorted, each chunk they
//! are in rewritten once ([`IdIndex::remove_sorted`]).

use std::collections::VecDeque;

const CHUNK: usize = 128;

#[derive(Default)]
pub(crate) struct IdIndex {
    /// First key of each chunk, for the top-level binary search.
    firsts: VecDeque<u64>,
    chunks: VecDeque<Chunk>,
    len: usize,
    /// The chunk the last removal found its id in (a guess for the next one).
    finger: usize,
    /// Where the last insert below the largest id put it: its chunk, the place after it and
    /// the id (see [`IdIndex::next_after_last`]).
    after: Option<(usize, usize, u64)>,
    recent: Recent,
}

/// Ids [`Recent`] answers membership for: the last `WINDOW` up to the largest ever inserted.
const WINDOW: u64 = 2048;

/// Which of the ids just below the largest ever inserted are present, one bit each: whether
/// the index holds a new id, which addSession asks every other shard, is then a bit test, not a
/// search (streams committed in any order put new ids just below the largest, not past it).
/// Invariant: for every id in `(top - WINDOW, top]`, bit `id % WINDOW` says whether it is in
/// the index.
struct Recent {
    bits: [u64; (WINDOW / 64) as usize],
    top: u64,
}

impl Default for Recent {
    fn default() -> Self {
        // Nothing present, `top` 0: the invariant holds (bit 0 clear, id 0 absent).
        Recent { bits: [0; (WINDOW / 64) as usize], top: 0 }
    }
}

impl Recent {
    /// Does the window cover `id` (given `id ≤ top`)?
    fn covers(&self, id: u64) -> bool {
        id <= self.top && self.top - id < WINDOW
    }

    fn bit(id: u64) -> (usize, u64) {
        let at = id % WINDOW;
        ((at / 64) as usize, 1 << (at % 64))
    }

    fn get(&self, id: u64) -> bool {
        let (w, b) = Self::bit(id);
        self.bits[w] & b != 0
    }

    fn set(&mut self, id: u64, present: bool) {
        let (w, b) = Self::bit(id);
        if present {
            self.bits[w] |= b;
        } else {
            self.bits[w] &= !b;
        }
    }

    /// `id` was inserted: recorded, the window moved up to it first when it is past `top` (the
    /// ids the window takes in are absent: their bits, left by ids a window lower, cleared).
    fn inserted(&mut self, id: u64) {
        if id > self.top {
            if id - self.top >= WINDOW {
                self.bits = [0; (WINDOW / 64) as usize];
            } else {
                self.clear(self.top + 1, id);
            }
            self.top = id;
        }
        if self.covers(id) {
            self.set(id, true);
        }
    }

    /// Clears the bits of ids `lo..hi` (fewer than `WINDOW` of them), a word at a time: ids
    /// that arrive with strides of hundreds cost a few words each, not a bit per id skipped.
    fn clear(&mut self, lo: u64, hi: u64) {
        let mut id = lo;
        while id < hi {
            let at = id % WINDOW;
            let n = (64 - at % 64).min(hi - id);
            let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << (at % 64) };
            self.bits[(at / 64) as usize] &= !mask;
            id += n;
        }
    }

    /// `id` was removed.
    fn removed(&mut self, id: u64) {
        if self.covers(id) {
            self.set(id, false);
        }
    }
}

struct Chunk {
    keys: VecDeque<u64>,
    vals: VecDeque<u32>,
}

impl Chunk {
    /// Binary search over the ring's two slices (one, unless it wraps around).
    #[inline]
    fn search(&self, id: u64) -> Result<usize, usize> {
        if self.keys.front() == Some(&id) {
            return Ok(0);
        }
        let (a, b) = self.keys.as_slices();
        match b.first() {
            Some(&first) if id >= first => match b.binary_search(&id) {
                Ok(i) => Ok(a.len() + i),
                Err(i) => Err(a.len() + i),
            },
            _ => a.binary_search(&id),
        }
    }

    fn with(keys: impl IntoIterator<Item = u64>, vals: impl IntoIterator<Item = u32>) -> Self {
        let mut k = VecDeque::with_capacity(CHUNK);
        let mut v = VecDeque::with_capacity(CHUNK);
        k.extend(keys);
        v.extend(vals);
        Chunk { keys: k, vals: v }
    }
}

/// The place of the last of `sorted`'s values at or below `id`, searched from the end: the
/// places 1, 2, 4, 8, ... from the end are tried until one holds a value at or below `id`, then
/// the span between the last two tried is searched. `None` when every value is above `id`.
fn last_at_or_below(sorted: &[u64], id: u64) -> Option<usize> {
    let n = sorted.len();
    // Every place from `hi` on holds a value above `id`.
    let (mut hi, mut back) = (n, 1);
    while back <= n {
        let at = n - back;
        if sorted[at] <= id {
            return Some(at + sorted[at + 1..hi].partition_point(|&f| f <= id));
        }
        hi = at;
        back *= 2;
    }
    // Places before `hi` not tried yet: all of them at or above the last power of two.
    sorted[..hi].partition_point(|&f| f <= id).checked_sub(1)
}

impl IdIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Index of the chunk that holds `id`, or would hold it.
    fn chunk_of(&self, id: u64) -> usize {
        self.firsts.partition_point(|&f| f <= id).saturating_sub(1)
    }

    /// [`IdIndex::chunk_of`] searched from the top: the chunks 1, 2, 4, 8, ... from the back are
    /// tried until one starts at or below `id`, then the span between the last two tried is
    /// searched. Concurrent addSession streams commit in any order, so a new id is seldom past
    /// the largest but nearly always among the last few hundred: its chunk is then found in a
    /// few comparisons (a search over all chunks was a third of an insert's cost, paid again by
    /// each shard asked about the id); an old id costs twice a plain search's comparisons.
    fn chunk_near_top(&self, id: u64) -> usize {
        // The ring's two runs, the newer (top) one searched first.
        let (older, newer) = self.firsts.as_slices();
        match last_at_or_below(newer, id) {
            Some(i) => older.len() + i,
            // Before every chunk's first id, or no chunk: the first (as `chunk_of` answers).
            None => last_at_or_below(older, id).unwrap_or(0),
        }
    }

    /// [`IdIndex::chunk_of`], trying the finger's chunk first.
    fn chunk_near_finger(&self, id: u64) -> usize {
        let f = self.finger;
        let starts_before = |i: usize| self.firsts.get(i).is_some_and(|&first| first <= id);
        if starts_before(f) && !starts_before(f + 1) {
            return f;
        }
        self.chunk_of(id)
    }

    /// The largest id, if any.
    fn last_id(&self) -> Option<u64> {
        self.chunks.back().and_then(|c| c.keys.back().copied())
    }

    pub(crate) fn get(&self, id: u64) -> Option<u32> {
        // Past the largest id: absent without a search (addSession asks this of every new id,
        // and VNFs number sessions in ascending order).
        if self.last_id().is_none_or(|last| id > last) {
            return None;
        }
        let c = self.chunks.get(self.chunk_near_top(id))?;
        c.search(id).ok().map(|i| c.vals[i])
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        match self.last_id() {
            None => false,
            Some(last) if id > last => false,
            _ if self.recent.covers(id) => self.recent.get(id),
            _ => self.get(id).is_some(),
        }
    }

    /// Inserts `id`; `false` (and nothing changes) when it is already present.
    pub(crate) fn insert(&mut self, id: u64, val: u32) -> bool {
        if self.last_id().is_none_or(|last| id > last) {
            // Past the largest id (ascending ids, what VNFs send), or the first: appended
            // without a search, to the last chunk while it has room (no chunk is ever empty).
            match self.chunks.back_mut() {
                Some(c) if c.keys.len() < CHUNK => {
                    c.keys.push_back(id);
                    c.vals.push_back(val);
                }
                _ => {
                    self.chunks.push_back(Chunk::with(vec![id], vec![val]));
                    self.firsts.push_back(id);
                }
            }
            self.len += 1;
            self.recent.inserted(id);
            return true;
        }
        let (ci, pos) = match self.next_after_last(id) {
            Some(place) => place,
            None => {
                let ci = self.chunk_near_top(id);
                match self.chunks[ci].search(id) {
                    Ok(_) => return false,
                    Err(p) => (ci, p),
                }
            }
        };
        let c = &mut self.chunks[ci];
        if c.keys.len() == CHUNK {
            // Split where the id goes, within the chunk's middle half: among nearly ascending
            // ids (streams committed in any order) the top chunk is then left with few entries
            // above the id, so the inserts that follow shift fewer than after a split in halves;
            // ids in any order still split near the middle.
            let at = pos.clamp(CHUNK / 4, CHUNK - CHUNK / 4);
            let right = Chunk::with(c.keys.split_off(at), c.vals.split_off(at));
            let right_first = right.keys[0];
            self.chunks.insert(ci + 1, right);
            self.firsts.insert(ci + 1, right_first);
            return self.insert(id, val);
        }
        if pos == c.keys.len() {
            // At the chunk's end (often, for a stream's ids after the last one's place): the
            // ring's push, which moves nothing, instead of its general insert.
            c.keys.push_back(id);
            c.vals.push_back(val);
        } else {
            c.keys.insert(pos, id);
            c.vals.insert(pos, val);
        }
        if pos == 0 {
            self.firsts[ci] = id;
        }
        self.after = Some((ci, pos + 1, id));
        self.len += 1;
        self.recent.inserted(id);
        true
    }

    /// The place of `id` when it comes right after the last id inserted below the largest, in
    /// the same chunk, with no id between them: an addSession stream committed after later
    /// streams inserts its ascending ids one after the other there, each found without a
    /// search. `None` when that does not hold, or the place has moved since (a split, a
    /// removal): the place is trusted only while the id before it is still the one recorded,
    /// which, ids being unique, only that chunk can hold.
    fn next_after_last(&self, id: u64) -> Option<(usize, usize)> {
        let (ci, pos, last) = self.after?;
        let c = self.chunks.get(ci)?;
        if id <= last || pos == 0 || c.keys.get(pos - 1) != Some(&last) {
            return None;
        }
        // Below the next id: of this chunk, or of the next chunk's first when at the end.
        let next = c.keys.get(pos).or_else(|| self.firsts.get(ci + 1));
        next.is_none_or(|&next| id < next).then_some((ci, pos))
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<u32> {
        let ci = self.chunk_near_finger(id);
        self.finger = ci;
        let c = self.chunks.get_mut(ci)?;
        let pos = c.search(id).ok()?;
        c.keys.remove(pos);
        let val = c.vals.remove(pos)?;
        self.len -= 1;
        self.recent.removed(id);
        if c.keys.is_empty() {
            self.chunks.remove(ci);
            self.firsts.remove(ci);
        } else if pos == 0 {
            self.firsts[ci] = c.keys[0];
        }
        Some(val)
    }

    /// Removes the ids of `sorted` (ascending, each present): what a removal one by one does,
    /// in one walk of the chunks they are in. An aging step's closes come in timer order, not
    /// id order; one by one, each paid a search and a shift of its chunk (about 170
    /// instructions a close, a third of an expiry's), sorted and together a merge.
    pub(crate) fn remove_sorted(&mut self, sorted: &[u64]) {
        debug_assert!(sorted.windows(2).all(|w| w[0] < w[1]));
        // Only the ids of the window's span, the last of `sorted`, have bits to clear.
        let first_recent = sorted.partition_point(|&id| !self.recent.covers(id));
        for &id in &sorted[first_recent..] {
            self.recent.removed(id);
        }
        let mut i = 0;
        let mut emptied = 0;
        while i < sorted.len() {
            let ci = self.chunk_of(sorted[i]);
            let next_first = self.firsts.get(ci + 1).copied();
            let n = sorted[i..].partition_point(|&id| next_first.is_none_or(|f| id < f));
            let gone = &sorted[i..i + n];
            i += n;
            let Some(c) = self.chunks.get_mut(ci) else { continue };
            let (keys, vals) = (c.keys.make_contiguous(), c.vals.make_contiguous());
            let (mut kept, mut g) = (0, 0);
            for at in 0..keys.len() {
                while g < gone.len() && gone[g] < keys[at] {
                    g += 1;
                }
                if g < gone.len() && gone[g] == keys[at] {
                    g += 1;
                    continue;
                }
                keys[kept] = keys[at];
                vals[kept] = vals[at];
                kept += 1;
            }
            self.len -= c.keys.len() - kept;
            c.keys.truncate(kept);
            c.vals.truncate(kept);
            match c.keys.front() {
                Some(&first) => self.firsts[ci] = first,
                None => emptied += 1,
            }
        }
        if emptied > 0 {
            // Chunks emptied at the front (the oldest ids, what expiries take) leave one by
            // one; only a chunk emptied further in makes the list be rebuilt (a rebuild at every
            // emptied chunk cost a walk of all chunks each time a few oldest ids expired).
            self.finger = 0;
            while self.chunks.front().is_some_and(|c| c.keys.is_empty()) {
                self.chunks.pop_front();
                self.firsts.pop_front();
                emptied -= 1;
            }
            if emptied == 0 {
                return;
            }
            let (chunks, firsts) = (std::mem::take(&mut self.chunks), std::mem::take(&mut self.firsts));
            for (c, f) in chunks.into_iter().zip(firsts) {
                if !c.keys.is_empty() {
                    self.chunks.push_back(c);
                    self.firsts.push_back(f);
                }
            }
        }
    }

    /// Entries with id ≥ `start`, ascending.
    pub(crate) fn range_from(&self, start: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        let ci = self.chunk_of(start);
        let skip = self.chunks.get(ci).map_or(0, |c| c.keys.partition_point(|&k| k < start));
        self.chunks.iter().skip(ci).enumerate().flat_map(move |(n, c)| {
            let from = if n == 0 { skip } else { 0 };
            c.keys.range(from..).copied().zip(c.vals.range(from..).copied())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((0u8..6, 0u64..3000, any::<u32>()), 0..4000), start in 0u64..3000) {
            let mut idx = IdIndex::default();
            let mut model = BTreeMap::new();
            for (op, id, v) in ops {
                match op {
                    0 | 1 => {
                        let fresh = !model.contains_key(&id);
                        if fresh { model.insert(id, v); }
                        prop_assert_eq!(idx.insert(id, v), fresh);
                    }
                    2 | 3 => prop_assert_eq!(idx.remove(id), model.remove(&id)),
                    5 => {
                        // A run of ascending ids, some taken (a stream committed below the
                        // top, inserted one after the other).
                        for k in id..id + u64::from(v % 48) {
                            let fresh = !model.contains_key(&k);
                            if fresh { model.insert(k, v); }
                            prop_assert_eq!(idx.insert(k, v), fresh, "id {}", k);
                        }
                    }
                    _ => {
                        // Present ids of a stretch, every one or some (`v` chooses), together.
                        let span = u64::from(v % 1500);
                        let gone: Vec<u64> = model
                            .range(id..id + span)
                            .map(|(&k, _)| k)
                            .filter(|k| v & 1 == 0 || k % 3 != 0)
                            .collect();
                        idx.remove_sorted(&gone);
                        for k in &gone {
                            model.remove(k);
                        }
                    }
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(idx.get(*k), Some(*v));
            }
            // Membership, answered by the window of recent ids near the top and by a search
            // below it (ids span 0..3000, the window 2048).
            for id in 0..3100 {
                prop_assert_eq!(idx.contains(id), model.contains_key(&id), "id {}", id);
            }
            // The search from the top finds the chunk the search over all chunks finds.
            for id in (0..3100).step_by(7).chain([start]) {
                prop_assert_eq!(idx.chunk_near_top(id), idx.chunk_of(id), "id {}", id);
            }
            let got: Vec<_> = idx.range_from(start).collect();
            let want: Vec<_> = model.range(start..).map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn ascending_removals_empty_chunks_from_the_front() {
        let mut idx = IdIndex::default();
        for i in 0..5_000u64 {
            idx.insert(i * 2, i as u32);
        }
        for i in 0..4_000u64 {
            assert_eq!(idx.remove(i * 2), Some(i as u32));
            // An absent id near the finger, and one far from it.
            assert_eq!(idx.remove(i * 2 + 1), None);
            assert_eq!(idx.get(9_998 - 2 * (i % 1_000)), Some((4_999 - i % 1_000) as u32));
        }
        assert_eq!(idx.len(), 1_000);
        assert_eq!(idx.chunks.len(), 1_000usize.div_ceil(CHUNK) + 1);
        let rest: Vec<_> = idx.range_from(0).map(|(id, _)| id).collect();
        assert_eq!(rest, (4_000..5_000u64).map(|i| i * 2).collect::<Vec<_>>());
        // Back to the front after the finger went on.
        assert_eq!(idx.remove(9_998), Some(4_999));
        assert_eq!(idx.remove(8_000), Some(4_000));
        assert!(idx.insert(0, 7));
        assert_eq!(idx.range_from(0).next(), Some((0, 7)));
    }

    /// Sixteen streams of 64 ids committed in any order within each group of sixteen (what
    /// concurrent addSession streams do): every id is found, in order, and the chunks stay at
    /// least three fifths full.
    #[test]
    fn nearly_ascending_inserts_are_found_and_fill_chunks() {
        let mut idx = IdIndex::default();
        let mut model = BTreeMap::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for group in 0..100u64 {
            let mut streams: Vec<u64> = (0..16).collect();
            for i in (1..streams.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                streams.swap(i, rng as usize % (i + 1));
            }
            for s in streams {
                for k in 0..64 {
                    let id = (group * 16 + s) * 64 + k;
                    assert!(idx.insert(id, id as u32));
                    assert!(!idx.insert(id, 0), "a second insert of {id}");
                    model.insert(id, id as u32);
                }
            }
        }
        assert_eq!(idx.len(), model.len());
        assert!(idx.chunks.len() * CHUNK * 3 <= idx.len() * 5, "{} chunks for {} ids", idx.chunks.len(), idx.len());
        for (k, v) in &model {
            assert_eq!(idx.get(*k), Some(*v));
        }
        assert!(idx.range_from(0).map(|(k, _)| k).eq(model.keys().copied()));
    }

    /// The search from the end answers what a scan answers, for every length up to 40 and every
    /// id around the values (found, between, below all, above all).
    #[test]
    fn last_at_or_below_agrees_with_a_scan() {
        for n in 0..40u64 {
            let sorted: Vec<u64> = (0..n).map(|i| 10 + 3 * i).collect();
            for id in 0..(10 + 3 * n + 5) {
                let scan = sorted.iter().rposition(|&v| v <= id);
                assert_eq!(last_at_or_below(&sorted, id), scan, "n {n} id {id}");
            }
        }
    }

    /// A ring of chunks that wraps around its buffer (chunks emptied at the front, new ones
    /// appended) is searched from the top as over all chunks.
    #[test]
    fn the_search_from_the_top_follows_a_wrapped_ring() {
        let mut idx = IdIndex::default();
        let mut wrapped = 0;
        for round in 0..20u64 {
            for i in 0..1_000 {
                assert!(idx.insert(round * 1_000 + i, i as u32));
            }
            if round > 0 {
                // The previous round's ids, oldest first: chunks emptied at the front.
                let gone: Vec<u64> = ((round - 1) * 1_000..round * 1_000).collect();
                idx.remove_sorted(&gone);
            }
            let (older, newer) = idx.firsts.as_slices();
            for id in (0..(round + 1) * 1_000 + 10).step_by(13) {
                assert_eq!(idx.chunk_near_top(id), idx.chunk_of(id), "round {round} id {id}");
            }
            if !newer.is_empty() && !older.is_empty() {
                wrapped += 1;
            }
        }
        assert!(wrapped > 0, "the ring never wrapped: the test would not test it");
        assert_eq!(idx.len(), 1_000);
    }

    /// One step empties the front chunk and a chunk further in: the first leaves the ring from
    /// the front, the second makes the ring be rebuilt without it; the rest is intact.
    #[test]
    fn chunks_emptied_at_the_front_and_further_in_both_leave() {
        let mut idx = IdIndex::default();
        for id in 0..(4 * CHUNK as u64) {
            assert!(idx.insert(id, id as u32));
        }
        assert_eq!(idx.chunks.len(), 4);
        let c = CHUNK as u64;
        let gone: Vec<u64> = (0..c).chain(2 * c..3 * c).chain([3 * c]).collect();
        idx.remove_sorted(&gone);
        assert_eq!(idx.chunks.len(), 2);
        assert_eq!(idx.len(), 2 * CHUNK - 1);
        let left: Vec<u64> = idx.range_from(0).map(|(id, _)| id).collect();
        assert_eq!(left, (c..2 * c).chain(3 * c + 1..4 * c).collect::<Vec<_>>());
        for id in 0..4 * c {
            assert_eq!(idx.get(id).is_some(), left.contains(&id), "id {id}");
        }
        assert!(idx.insert(2 * c + 5, 7) && idx.get(2 * c + 5) == Some(7));
    }

    /// Ids that arrive with strides (across word boundaries, across the window, past it) and
    /// some out of order and removed: membership is right for every id around them, inside the
    /// window of recent ids and below it.
    #[test]
    fn the_window_of_recent_ids_follows_strides_and_jumps() {
        for stride in [1u64, 3, 63, 64, 65, 300, 2047, 2048, 2049, 5000] {
            let mut idx = IdIndex::default();
            let mut model = std::collections::BTreeSet::new();
            for i in 1..200u64 {
                let id = i * stride;
                assert!(idx.insert(id, 0));
                model.insert(id);
                // One id between the last two, out of order; every seventh removed again.
                if stride > 2 && i % 3 == 0 {
                    assert!(idx.insert(id - 1, 0));
                    model.insert(id - 1);
                }
                if i % 7 == 0 {
                    assert!(idx.remove(id - stride).is_some() || !model.contains(&(id - stride)));
                    model.remove(&(id - stride));
                }
            }
            let top = 200 * stride;
            for id in top.saturating_sub(3 * WINDOW)..top + 2 {
                assert_eq!(idx.contains(id), model.contains(&id), "stride {stride} id {id}");
            }
        }
    }

    #[test]
    fn ascending_appends_fill_chunks() {
        let mut idx = IdIndex::default();
        for i in 0..10_000u64 {
            assert!(idx.insert(i, i as u32));
        }
        assert_eq!(idx.chunks.len(), 10_000usize.div_ceil(CHUNK));
        assert_eq!(idx.range_from(9_998).collect::<Vec<_>>(), vec![(9_998, 9_998), (9_999, 9_999)]);
        assert_eq!(idx.range_from(u64::MAX).count(), 0);
    }
}
