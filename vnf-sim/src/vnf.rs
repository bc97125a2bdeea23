//! The VNF's own datapath and flow table, sans-IO: frames and answers in, verdicts and
//! addSession requests out. A shell (the simulation, or a process with real ports) moves the
//! bytes and talks to the device.
//!
//! The VNF is a bump in the wire between its two ports: side A faces the device's vnf0
//! (network A, where clients are), side B faces vnf1. What it allows from A it sends out of B,
//! and the other way. It keeps a flow per 5-tuple (both directions), counts what it sees
//! itself, decides each flow's treatment by the policy when the flow's first packet arrives,
//! and asks the device to take the flow over once the policy's trigger is met. When the device
//! reports the session closed (or when it is deleted), the device's counters are added to the
//! flow's, and the flow is the VNF's own again: if it returns, it is offloaded anew.

use std::collections::HashMap;

use opof_device::datapath::parse::{self, TcpFlags};
use opof_proto::domain::{
    AddOutcome, AddStatus, CloseCode, FiveTuple, SessionId, SessionRecord, SessionSpec, Timestamp,
};

use crate::policy::{Policy, Treatment, Trigger, Verdict};

/// The VNF's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Faces the device's vnf0 (network A, ext0).
    A,
    /// Faces the device's vnf1 (network B, ext1).
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Packets and bytes per direction: [client → server, server → client].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

impl Counts {
    fn add(&mut self, dir: usize, bytes: usize) {
        self.packets[dir] += 1;
        self.bytes[dir] += bytes as u64;
    }
    pub fn total_packets(&self) -> u64 {
        self.packets[0] + self.packets[1]
    }
}

/// Where a flow stands with the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The VNF handles it.
    Local,
    /// An addSession request for it is on its way.
    Pending(SessionId),
    /// The device holds it as this session.
    Offloaded(SessionId),
    /// The device refused it; the VNF keeps it.
    Refused,
}

/// One flow, as the VNF knows it.
#[derive(Clone, Debug)]
pub struct Flow {
    /// As its first packet travelled (the client's side is the source).
    pub key: FiveTuple,
    pub treatment: Treatment,
    pub state: State,
    /// Packets the VNF itself handled.
    pub seen: Counts,
    /// Packets the device handled, from its final records.
    pub device: Counts,
    /// Times the flow was offloaded (more than once when it returned after a close).
    pub offloads: u32,
    /// Device closes of its sessions, by code.
    pub closes: Closes,
    /// Packets seen since the flow was last the VNF's own (for the trigger).
    since_local: u32,
    /// TCP: SYN from the client, SYN-ACK from the server, then the client's ACK.
    handshake: u8,
    /// TCP: FIN or RST seen: the flow is ending, not worth offloading.
    ending: bool,
    /// Table full: not before this time.
    retry_at: u64,
}

/// Device closes of a flow's sessions, by code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Closes {
    pub timeout: u32,
    pub finack: u32,
    pub rst: u32,
    /// Deleted by the VNF (at the end of a run, or on deactivation).
    pub deleted: u32,
}

/// What the VNF did, in total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VnfStats {
    pub frames: u64,
    pub forwarded: u64,
    pub dropped: u64,
    /// Frames of no TCP/UDP flow (ARP, ICMP, fragments, ...): forwarded as they are.
    pub other: u64,
    pub offload_requests: u64,
    pub offload_accepted: u64,
    pub table_full: u64,
    pub already_exists: u64,
    pub rejected: u64,
    /// Closed records for sessions the VNF does not know (not expected).
    pub unknown_closed: u64,
    /// Closed records seen a second time (a device redelivers records after a broken
    /// getClosedSessions stream): ignored.
    pub duplicate_closed: u64,
    /// Data packets (not TCP control segments) of flows the device held when they reached
    /// the VNF: packets that were in flight when the addSession answer came back.
    pub after_offload: u64,
    /// Sessions the device no longer held when the VNF reconnected (it restarted).
    pub lost_sessions: u64,
    /// Sessions found on the device that this VNF never added (a VNF before it, gone without
    /// withdrawing them): withdrawn, and their final counters kept here, so nothing the device
    /// counted is counted by nobody. Closed records of such sessions are added too.
    pub orphans: u64,
    pub orphan_packets: u64,
    pub orphan_bytes: u64,
}

/// A flow in the VNF's account.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FlowAccount {
    pub flow: String,
    pub vnf: Counts,
    pub device: Counts,
    pub offloads: u32,
    pub closes: Closes,
    pub state: String,
}

/// The VNF's account (see [`Vnf::account`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Account {
    /// Frames the VNF handled itself (flows and frames of no flow) and frames the device
    /// handled for it (its sessions' final counters).
    pub vnf_frames: u64,
    pub device_frames: u64,
    pub stats: VnfStats,
    pub flows: Vec<FlowAccount>,
}

/// Back-off after `_SESSION_TABLE_FULL`, nanoseconds.
const TABLE_FULL_BACKOFF_NS: u64 = 1_000_000_000;

/// The VNF.
pub struct Vnf {
    policy: Policy,
    flows: Vec<Flow>,
    /// Both directions of each flow's key.
    by_key: HashMap<FiveTuple, usize>,
    by_session: HashMap<SessionId, usize>,
    first_id: SessionId,
    next_id: SessionId,
    /// Requests decided and not yet handed to the device.
    to_offload: Vec<SessionSpec>,
    /// Is there a device to offload to? (No: every flow stays the VNF's.)
    offloading: bool,
    pub stats: VnfStats,
}

impl Vnf {
    /// The first session id for a VNF process starting now: microseconds since the Unix epoch.
    /// Ids are handed out in order from there, so a VNF restarted on the same device never
    /// reuses an id of the VNF before it (that one would have had to add more than a million
    /// sessions a second since it started), and a closed record with an id below a VNF's first
    /// is recognisably an earlier VNF's (an orphan), never mistaken for one of its own.
    pub fn first_id_now() -> SessionId {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        micros.max(1)
    }

    /// A VNF whose session ids start at `first_id`.
    pub fn new(policy: Policy, first_id: SessionId) -> Self {
        Vnf {
            policy,
            flows: Vec::new(),
            by_key: HashMap::new(),
            by_session: HashMap::new(),
            first_id,
            next_id: first_id,
            to_offload: Vec::new(),
            offloading: true,
            stats: VnfStats::default(),
        }
    }

    pub fn flows(&self) -> &[Flow] {
        &self.flows
    }

    /// A frame received on `side` at `now`: true when the VNF sends it out of the other side.
    pub fn frame(&mut self, side: Side, frame: &[u8], now: Timestamp) -> bool {
        let _ = side;
        self.stats.frames += 1;
        let Ok(p) = parse::parse(frame) else {
            self.stats.other += 1;
            self.stats.forwarded += 1;
            return true;
        };
        let i = match self.by_key.get(&p.tuple) {
            Some(&i) => i,
            None => {
                let i = self.flows.len();
                self.flows.push(Flow {
                    key: p.tuple,
                    treatment: self.policy.treatment(&p.tuple),
                    state: State::Local,
                    seen: Counts::default(),
                    device: Counts::default(),
                    offloads: 0,
                    closes: Closes::default(),
                    since_local: 0,
                    handshake: 0,
                    ending: false,
                    retry_at: 0,
                });
                self.by_key.insert(p.tuple, i);
                self.by_key.insert(p.tuple.reversed(), i);
                i
            }
        };
        let f = &mut self.flows[i];
        if matches!(f.state, State::Offloaded(_)) && !p.flags.is_control() {
            self.stats.after_offload += 1;
        }
        let dir = usize::from(p.tuple != f.key);
        f.seen.add(dir, frame.len());
        f.since_local = f.since_local.saturating_add(1);
        track_tcp(f, dir, p.flags);
        let allowed = f.treatment.verdict.allows();
        if allowed {
            self.stats.forwarded += 1;
        } else {
            self.stats.dropped += 1;
        }
        if self.offloading && f.state == State::Local && !f.ending && now.0 >= f.retry_at {
            if let Verdict::Offload(action) = f.treatment.verdict {
                let due = match f.treatment.trigger {
                    Trigger::Packets(n) => f.since_local >= n,
                    Trigger::Handshake => f.key.protocol() != opof_proto::domain::Protocol::Tcp || f.handshake == 7,
                };
                if due {
                    let id = self.next_id;
                    self.next_id += 1;
                    f.state = State::Pending(id);
                    self.by_session.insert(id, i);
                    self.stats.offload_requests += 1;
                    self.to_offload.push(SessionSpec {
                        id,
                        tuple: f.key,
                        action,
                        in_lif: 0,
                        out_lif: 0,
                        cache_timeout: f.treatment.cache_timeout,
                    });
                }
            }
        }
        allowed
    }

    /// The addSession requests decided since the last call, to send to the device in one
    /// stream.
    pub fn take_offloads(&mut self) -> Vec<SessionSpec> {
        std::mem::take(&mut self.to_offload)
    }

    /// The device's answer to a stream of `sent`. `existing` tells, for a request refused as
    /// already existing, whether the device holds that session id for this flow (getSession):
    /// then the VNF takes it as offloaded (an earlier stream got through); otherwise it keeps
    /// the flow.
    pub fn added(
        &mut self,
        sent: &[SessionSpec],
        outcome: &AddOutcome,
        now: Timestamp,
        mut existing: impl FnMut(SessionId) -> Option<SessionRecord>,
    ) {
        let failed: HashMap<SessionId, AddStatus> = outcome.errors.iter().map(|e| (e.id, e.status)).collect();
        for s in sent {
            let Some(&i) = self.by_session.get(&s.id) else { continue };
            let f = &mut self.flows[i];
            if f.state != State::Pending(s.id) {
                continue;
            }
            match failed.get(&s.id) {
                None => {
                    f.state = State::Offloaded(s.id);
                    f.offloads += 1;
                    self.stats.offload_accepted += 1;
                }
                Some(AddStatus::TableFull) => {
                    self.stats.table_full += 1;
                    f.state = State::Local;
                    f.retry_at = now.0 + TABLE_FULL_BACKOFF_NS;
                    self.by_session.remove(&s.id);
                }
                Some(AddStatus::AlreadyExists) => {
                    self.stats.already_exists += 1;
                    if existing(s.id).is_some() {
                        f.state = State::Offloaded(s.id);
                        f.offloads += 1;
                    } else {
                        f.state = State::Refused;
                        self.by_session.remove(&s.id);
                    }
                }
                Some(_) => {
                    self.stats.rejected += 1;
                    tracing::warn!(flow = %f.key, id = s.id, "the device rejected the session; the VNF keeps the flow");
                    f.state = State::Refused;
                    self.by_session.remove(&s.id);
                }
            }
        }
    }

    /// A session's final record (closed by the device, or deleted): its counters join the
    /// flow's, and the flow is the VNF's own again.
    pub fn closed(&mut self, r: &SessionRecord) {
        let Some(i) = self.by_session.remove(&r.id) else {
            // Ids are handed out in order and never reused: one below the next id was ours and
            // its record already came.
            if (self.first_id..self.next_id).contains(&r.id) {
                self.stats.duplicate_closed += 1;
            } else {
                self.stats.unknown_closed += 1;
                self.orphan(r);
            }
            return;
        };
        let f = &mut self.flows[i];
        f.device.packets[0] += r.counters.in_packets;
        f.device.packets[1] += r.counters.out_packets;
        f.device.bytes[0] += r.counters.in_bytes;
        f.device.bytes[1] += r.counters.out_bytes;
        match r.close_code {
            CloseCode::Timeout => f.closes.timeout += 1,
            CloseCode::FinAck => f.closes.finack += 1,
            CloseCode::Rst => f.closes.rst += 1,
            CloseCode::NotClosed => f.closes.deleted += 1,
        }
        if matches!(f.state, State::Offloaded(id) | State::Pending(id) if id == r.id) {
            f.state = State::Local;
            f.since_local = 0;
            // A TCP flow that closed ends; if its 5-tuple returns, it is a new connection.
            if matches!(r.close_code, CloseCode::FinAck | CloseCode::Rst) {
                f.handshake = 0;
            }
            f.ending = false;
        }
    }

    /// Whether flows may be offloaded (a device is active and reachable).
    pub fn set_offloading(&mut self, on: bool) {
        self.offloading = on;
    }

    /// The connection to the device broke: requests decided and not answered are void, and
    /// their flows are the VNF's again. Sessions already offloaded stay so until reconciled.
    pub fn connection_lost(&mut self) {
        self.to_offload.clear();
        for f in &mut self.flows {
            if let State::Pending(id) = f.state {
                f.state = State::Local;
                f.since_local = 0;
                self.by_session.remove(&id);
            }
        }
    }

    /// After (re)connecting: the flows offloaded under ids the device does not hold are the
    /// VNF's again (their device counters are lost with the device's table). Returns how many.
    pub fn reconcile(&mut self, on_device: &std::collections::HashSet<SessionId>) -> usize {
        let gone: Vec<SessionId> = self.by_session.keys().copied().filter(|id| !on_device.contains(id)).collect();
        for id in &gone {
            if let Some(i) = self.by_session.remove(id) {
                let f = &mut self.flows[i];
                f.state = State::Local;
                f.since_local = 0;
                self.stats.lost_sessions += 1;
            }
        }
        gone.len()
    }

    /// The VNF's account: what it handled, what the device handled (from final records), per
    /// flow and in total.
    pub fn account(&self) -> Account {
        let flows: Vec<FlowAccount> = self
            .flows
            .iter()
            .map(|f| FlowAccount {
                flow: f.key.to_string(),
                vnf: f.seen,
                device: f.device,
                offloads: f.offloads,
                closes: f.closes,
                state: format!("{:?}", f.state),
            })
            .collect();
        Account {
            vnf_frames: self.flows.iter().map(|f| f.seen.total_packets()).sum::<u64>() + self.stats.other,
            device_frames: self.flows.iter().map(|f| f.device.total_packets()).sum(),
            stats: self.stats,
            flows,
        }
    }

    /// Does the VNF know session `id` (it added it and holds it as offloaded)?
    pub fn knows(&self, id: SessionId) -> bool {
        self.by_session.contains_key(&id)
    }

    /// The final record of a session this VNF never added (withdrawn, or closed): its counters
    /// join the account as an orphan's.
    pub fn orphan(&mut self, r: &SessionRecord) {
        self.stats.orphans += 1;
        self.stats.orphan_packets += r.counters.in_packets + r.counters.out_packets;
        self.stats.orphan_bytes += r.counters.in_bytes + r.counters.out_bytes;
    }

    /// Session ids the VNF believes the device holds.
    pub fn offloaded(&self) -> Vec<SessionId> {
        let mut ids: Vec<SessionId> = self.by_session.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// Follows a TCP flow's handshake and its end.
fn track_tcp(f: &mut Flow, dir: usize, flags: TcpFlags) {
    if f.key.protocol() != opof_proto::domain::Protocol::Tcp {
        return;
    }
    if flags.rst() || flags.fin() {
        f.ending = true;
    }
    match (dir, flags.syn(), flags.ack()) {
        (0, true, false) => {
            // A new connection on this 5-tuple starts the handshake over.
            f.handshake = 1;
            f.ending = false;
        }
        (1, true, true) if f.handshake & 1 != 0 => f.handshake |= 2,
        (0, false, true) if f.handshake & 3 == 3 => f.handshake |= 4,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opof_proto::domain::{Action, AddError, Counters, Protocol, SessionState};

    fn udp_frame(src_port: u16, dst_port: u16, reverse: bool) -> Vec<u8> {
        let (a, b) = ([10, 0, 0, 1], [10, 0, 1, 1]);
        let (s, d, sp, dp) = if reverse { (b, a, dst_port, src_port) } else { (a, b, src_port, dst_port) };
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(s, d, 64)
            .udp(sp, dp)
            .write(&mut f, &[1; 10])
            .unwrap();
        f
    }

    fn outcome(errors: Vec<AddError>) -> AddOutcome {
        AddOutcome { status: AddStatus::Accepted, error_bits: 0, errors, start: Timestamp(0) }
    }

    #[test]
    fn offloads_after_the_trigger_and_takes_the_flow_back_on_close() {
        let mut v = Vnf::new(Policy::default(), 100);
        let now = Timestamp::from_secs(1);
        assert!(v.frame(Side::A, &udp_frame(1000, 53, false), now));
        assert!(v.take_offloads().is_empty(), "one packet: not yet (offload_after 2)");
        assert!(v.frame(Side::B, &udp_frame(1000, 53, true), now));
        let sent = v.take_offloads();
        assert_eq!(sent.len(), 1);
        assert_eq!((sent[0].id, sent[0].action), (100, Action::Forward));
        assert_eq!(sent[0].tuple.src_port(), 1000, "the key is the client's direction");
        v.added(&sent, &outcome(vec![]), now, |_| None);
        assert_eq!(v.flows()[0].state, State::Offloaded(100));
        // The device reports it closed by timeout with its counters.
        let r = SessionRecord {
            id: 100,
            counters: Counters { in_packets: 5, in_bytes: 300, out_packets: 2, out_bytes: 100 },
            state: SessionState::Closed,
            close_code: CloseCode::Timeout,
            start: now,
            end: Some(now),
        };
        v.closed(&r);
        let f = &v.flows()[0];
        assert_eq!((f.state, f.device.packets, f.seen.packets, f.closes.timeout), (State::Local, [5, 2], [1, 1], 1));
        // The flow returns: offloaded anew under a new id after the trigger.
        v.frame(Side::A, &udp_frame(1000, 53, false), now);
        v.frame(Side::A, &udp_frame(1000, 53, false), now);
        let again = v.take_offloads();
        assert_eq!(again.iter().map(|s| s.id).collect::<Vec<_>>(), vec![101]);
    }

    #[test]
    fn every_refusal_keeps_the_flow_on_the_vnf() {
        let mut v = Vnf::new(Policy::parse("[defaults]\noffload_after = 1").unwrap(), 0);
        let now = Timestamp::from_secs(1);
        for p in 0..3 {
            v.frame(Side::A, &udp_frame(2000 + p, 53, false), now);
        }
        let sent = v.take_offloads();
        let errors = vec![
            AddError { id: 0, status: AddStatus::TableFull },
            AddError { id: 1, status: AddStatus::AlreadyExists },
            AddError { id: 2, status: AddStatus::Rejected },
        ];
        v.added(&sent, &outcome(errors), now, |_| None);
        let states: Vec<State> = v.flows().iter().map(|f| f.state).collect();
        assert_eq!(states, vec![State::Local, State::Refused, State::Refused]);
        assert_eq!((v.stats.table_full, v.stats.already_exists, v.stats.rejected), (1, 1, 1));
        // Table full: retried only after the back-off.
        v.frame(Side::A, &udp_frame(2000, 53, false), now);
        assert!(v.take_offloads().is_empty());
        v.frame(Side::A, &udp_frame(2000, 53, false), Timestamp(now.0 + TABLE_FULL_BACKOFF_NS));
        assert_eq!(v.take_offloads().len(), 1);
    }

    #[test]
    fn drop_policy_drops_at_the_vnf_and_inspect_never_offloads() {
        let p = Policy::parse(
            "[[rule]]\ndst_ports = 53\naction = \"drop\"\noffload_after = 1\n[[rule]]\naction = \"inspect\"",
        )
        .unwrap();
        let mut v = Vnf::new(p, 0);
        let now = Timestamp::from_secs(1);
        assert!(!v.frame(Side::A, &udp_frame(1, 53, false), now));
        assert_eq!(v.take_offloads()[0].action, Action::Drop);
        for _ in 0..10 {
            assert!(v.frame(Side::A, &udp_frame(1, 80, false), now));
        }
        assert!(v.take_offloads().is_empty());
        assert_eq!(Protocol::Udp, v.flows()[1].key.protocol());
    }
}
