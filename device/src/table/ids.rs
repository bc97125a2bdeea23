//! The ordered id index: session id → slot handle, iterable in ascending id.
//!
//! Sorted chunks of at most [`CHUNK`] entries, with keys and values in separate arrays
//! (12 bytes per entry, no padding). Appending ascending ids (what VNFs do) fills chunks
//! completely; inserting in the middle splits a full chunk in halves. Lookups are two binary
//! searches. This costs about half the memory of a `BTreeMap<u64, u32>` for the same entries.
//! A chunk is a ring (`VecDeque`): removing the oldest ids first (sessions of one age expiring
//! together) takes each from the front without shifting the rest, and the list of chunks is a
//! ring too, so a chunk emptied from the front leaves without shifting the others. Removal
//! starts from the chunk the last one found: removing ids in ascending order (what a mass
//! expiry does) costs no search at all.

use std::collections::VecDeque;

const CHUNK: usize = 512;

#[derive(Default)]
pub(crate) struct IdIndex {
    /// First key of each chunk, for the top-level binary search.
    firsts: VecDeque<u64>,
    chunks: VecDeque<Chunk>,
    len: usize,
    /// The chunk the last removal found its id in (a guess for the next one).
    finger: usize,
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

impl IdIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Index of the chunk that holds `id`, or would hold it.
    fn chunk_of(&self, id: u64) -> usize {
        self.firsts.partition_point(|&f| f <= id).saturating_sub(1)
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

    pub(crate) fn get(&self, id: u64) -> Option<u32> {
        let c = self.chunks.get(self.chunk_of(id))?;
        c.search(id).ok().map(|i| c.vals[i])
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.get(id).is_some()
    }

    /// Inserts `id`; `false` (and nothing changes) when it is already present.
    pub(crate) fn insert(&mut self, id: u64, val: u32) -> bool {
        if self.chunks.is_empty() {
            self.chunks.push_back(Chunk::with(vec![id], vec![val]));
            self.firsts.push_back(id);
            self.len = 1;
            return true;
        }
        let ci = self.chunk_of(id);
        let pos = match self.chunks[ci].search(id) {
            Ok(_) => return false,
            Err(p) => p,
        };
        let last = ci + 1 == self.chunks.len();
        let c = &mut self.chunks[ci];
        if c.keys.len() == CHUNK {
            if pos == CHUNK && last {
                // Appending past the largest id: open a new chunk, keep this one full.
                self.chunks.push_back(Chunk::with(vec![id], vec![val]));
                self.firsts.push_back(id);
                self.len += 1;
                return true;
            }
            let right = Chunk::with(c.keys.split_off(CHUNK / 2), c.vals.split_off(CHUNK / 2));
            let right_first = right.keys[0];
            self.chunks.insert(ci + 1, right);
            self.firsts.insert(ci + 1, right_first);
            return self.insert(id, val);
        }
        c.keys.insert(pos, id);
        c.vals.insert(pos, val);
        if pos == 0 {
            self.firsts[ci] = id;
        }
        self.len += 1;
        true
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<u32> {
        let ci = self.chunk_near_finger(id);
        self.finger = ci;
        let c = self.chunks.get_mut(ci)?;
        let pos = c.search(id).ok()?;
        c.keys.remove(pos);
        let val = c.vals.remove(pos)?;
        self.len -= 1;
        if c.keys.is_empty() {
            self.chunks.remove(ci);
            self.firsts.remove(ci);
        } else if pos == 0 {
            self.firsts[ci] = c.keys[0];
        }
        Some(val)
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
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((any::<bool>(), 0u64..3000, any::<u32>()), 0..4000), start in 0u64..3000) {
            let mut idx = IdIndex::default();
            let mut model = BTreeMap::new();
            for (ins, id, v) in ops {
                if ins {
                    let fresh = !model.contains_key(&id);
                    if fresh { model.insert(id, v); }
                    prop_assert_eq!(idx.insert(id, v), fresh);
                } else {
                    prop_assert_eq!(idx.remove(id), model.remove(&id));
                }
                prop_assert_eq!(idx.len(), model.len());
            }
            for (k, v) in &model {
                prop_assert_eq!(idx.get(*k), Some(*v));
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
