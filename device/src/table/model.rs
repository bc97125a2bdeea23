//! A plain model of the session table's rules (SEMANTICS.md), written for clarity with no care
//! for speed: sessions in a sorted map, closes found by scanning. The table's property test and
//! the conformance suite's gRPC property test both check the real thing against it.

use std::collections::{BTreeMap, VecDeque};

use opof_proto::domain::{
    AddError, AddOutcome, AddStatus, CloseCode, Counters, FiveTuple, PageArgs, SessionId, SessionPage, SessionRecord,
    SessionSpec, SessionState, Timestamp,
};

use super::{Candidate, TableConfig};

/// The rules of SEMANTICS.md written as plainly as possible, with no care for speed.
pub struct Model {
    pub cfg: TableConfig,
    /// The model's clock, nanoseconds since the epoch.
    pub now: u64,
    /// Live sessions and their start times.
    pub sessions: BTreeMap<SessionId, (SessionSpec, u64)>,
    pub closed: VecDeque<SessionRecord>,
    /// Closed records dropped because the queue was full.
    pub overflow: u64,
}

impl Model {
    pub fn new(cfg: TableConfig, now: Timestamp) -> Self {
        Model { cfg, now: now.0, sessions: BTreeMap::new(), closed: VecDeque::new(), overflow: 0 }
    }

    /// getSession at `now`.
    pub fn get(&mut self, id: SessionId, now: u64) -> Option<SessionRecord> {
        self.advance(now);
        self.sessions.get(&id).map(|(_, st)| Self::record(id, *st))
    }

    /// deleteSession at `now`: the final record, not queued as closed.
    pub fn delete(&mut self, id: SessionId, now: u64) -> Option<SessionRecord> {
        self.advance(now);
        self.sessions.remove(&id).map(|(_, st)| SessionRecord {
            state: SessionState::Closed,
            end: Some(Timestamp(now)),
            ..Self::record(id, st)
        })
    }

    /// getClosedSessions of at most `max` records at `now`.
    pub fn take_closed(&mut self, max: usize, now: u64) -> Vec<SessionRecord> {
        self.advance(now);
        self.closed.drain(..max.min(self.closed.len())).collect()
    }

    pub fn deadline(&self, spec: &SessionSpec, start: u64) -> u64 {
        start + u64::from(self.cfg.effective_timeout(spec.tuple.protocol(), spec.cache_timeout)) * 1_000_000_000
    }

    pub fn record(id: SessionId, start: u64) -> SessionRecord {
        SessionRecord {
            id,
            counters: Counters::default(),
            state: SessionState::Established,
            close_code: CloseCode::NotClosed,
            start: Timestamp(start),
            end: None,
        }
    }

    pub fn advance(&mut self, now: u64) {
        self.now = now;
        let mut due: Vec<(u64, SessionId)> = self
            .sessions
            .iter()
            .map(|(id, (spec, start))| (self.deadline(spec, *start), *id))
            .filter(|(d, _)| *d <= now)
            .collect();
        due.sort();
        for (d, id) in due {
            let (_, start) = self.sessions.remove(&id).unwrap();
            let mut r = Self::record(id, start);
            r.state = SessionState::Closed;
            r.close_code = CloseCode::Timeout;
            r.end = Some(Timestamp(d));
            if self.closed.len() < self.cfg.closed_queue_capacity {
                self.closed.push_back(r);
            } else {
                self.overflow += 1;
            }
        }
    }

    fn tuple_taken(&self, t: &FiveTuple, batch: &[FiveTuple]) -> bool {
        self.sessions.values().map(|(s, _)| s.tuple).chain(batch.iter().copied()).any(|x| x == *t || x == t.reversed())
    }

    pub fn add(&mut self, reqs: &[Candidate], now: u64) -> AddOutcome {
        self.advance(now);
        let mut verdicts = Vec::new();
        let (mut ids, mut tuples) = (Vec::new(), Vec::new());
        for c in reqs {
            verdicts.push(match c {
                Candidate::Valid(s) if s.cache_timeout <= self.cfg.max_cache_timeout => {
                    if self.sessions.contains_key(&s.id) || ids.contains(&s.id) || self.tuple_taken(&s.tuple, &tuples) {
                        AddStatus::AlreadyExists
                    } else {
                        ids.push(s.id);
                        tuples.push(s.tuple);
                        AddStatus::Accepted
                    }
                }
                _ => AddStatus::Rejected,
            });
        }
        let fresh = verdicts.iter().filter(|v| **v == AddStatus::Accepted).count();
        let full = self.sessions.len() + fresh > self.cfg.capacity;
        let mut out = AddOutcome { status: AddStatus::Accepted, error_bits: 0, errors: vec![], start: Timestamp(now) };
        for (i, (c, v)) in reqs.iter().zip(&verdicts).enumerate() {
            let status = match (v, full) {
                (AddStatus::Accepted, true) => AddStatus::TableFull,
                (AddStatus::Accepted, false) => {
                    let Candidate::Valid(s) = c else { unreachable!() };
                    self.sessions.insert(s.id, (*s, now));
                    continue;
                }
                (other, _) => *other,
            };
            if i < 64 {
                out.error_bits |= 1 << i;
            }
            out.errors.push(AddError { id: c.id(), status });
        }
        out.status = if full {
            AddStatus::TableFull
        } else if out.errors.is_empty() {
            AddStatus::Accepted
        } else if out.errors.iter().all(|e| e.status == AddStatus::AlreadyExists) {
            AddStatus::AlreadyExists
        } else {
            AddStatus::Rejected
        };
        out
    }

    pub fn page(&mut self, a: &PageArgs, now: u64) -> SessionPage {
        self.advance(now);
        let all: Vec<_> = self.sessions.range(a.start_session..).map(|(id, (_, st))| Self::record(*id, *st)).collect();
        let (limit, skip) = if a.page_size == 0 {
            (self.cfg.max_page, 0)
        } else {
            ((a.page_size as usize).min(self.cfg.max_page), (a.page.max(1) as usize - 1) * a.page_size as usize)
        };
        let records: Vec<_> = all.iter().skip(skip).take(limit).copied().collect();
        let next_key = all.get(skip + records.len()).map_or(0, |r| r.id);
        SessionPage { records, next_key }
    }
}

/// Random requests over a small space (ids 0..12, three addresses per family, three ports), so
/// that duplicates, reversed tuples and invalid requests are frequent. Shared by the table's
/// property test and the conformance suite's gRPC one (feature `proptest`).
#[cfg(any(test, feature = "proptest"))]
pub mod strategy {
    use std::net::IpAddr;

    use opof_proto::domain::{Action, FiveTuple, Protocol, SessionSpec};
    use proptest::prelude::*;

    use crate::table::Candidate;

    pub fn arb_candidate() -> impl Strategy<Value = Candidate> {
        let addr = prop_oneof![
            (0u8..3).prop_map(|i| IpAddr::from([10, 0, 0, i])),
            (0u8..3).prop_map(|i| IpAddr::from([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i])),
        ];
        (0u64..12, addr.clone(), addr, 0u16..3, 0u16..3, any::<bool>(), 0u32..6, 0u8..10).prop_map(
            |(id, a, b, sp, dp, tcp, timeout, kind)| {
                let proto = if tcp { Protocol::Tcp } else { Protocol::Udp };
                // Mixed families or kind 0 make an invalid request.
                match FiveTuple::new(proto, a, sp, b, dp) {
                    Some(tuple) if kind != 0 => Candidate::Valid(SessionSpec {
                        id,
                        tuple,
                        action: match kind {
                            1 => Action::Drop,
                            2 => Action::Mirror { next_hop: IpAddr::from([192, 0, 2, 1]) },
                            3 => Action::Snoop {
                                next_hop: IpAddr::from([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                            },
                            _ => Action::Forward,
                        },
                        in_lif: 1,
                        out_lif: 2,
                        cache_timeout: timeout,
                    }),
                    _ => Candidate::Invalid(id),
                }
            },
        )
    }
}
