//! What a case works with: calls to the target that turn transport errors into findings, fresh
//! session ids and 5-tuples, time, the capacity, and the case's log (notes, tolerated
//! differences, measurements). Every session a case adds is deleted by the runner afterwards,
//! whatever the verdict.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opof_proto::client::SessionTableClient;
use opof_proto::convert::ipv4_to_wire;
use opof_proto::wire;
use parking_lot::Mutex;
use serde_json::Value;
use tonic::{Code, Status};

use crate::target::{Target, TargetConfig, Time};
use crate::traffic::{Captured, Outputs, PortId, Traffic};
use crate::verdict::{Finding, Profile};
use opof_device::clock::Clock as _;

/// Session ids of the suite start here (below 2^31, which some clients in the field truncate).
pub const ID_BASE: u64 = 1_000_000_000;

/// The suite's sessions are kept alive this long unless a case says otherwise, so that no
/// session ages out in the middle of a slow case on a device with short default timeouts.
pub const DEFAULT_CACHE_TIMEOUT: u32 = 3600;

/// Streams used to fill a table.
const FILL_STREAM: usize = 10_000;

/// Calls in flight when deleting many sessions.
const CLEANUP_IN_FLIGHT: usize = 64;

/// State shared by every case of a run.
pub struct RunState {
    pub target: Target,
    next: AtomicU64,
    /// The capacity once known (configured, or learned by filling).
    capacity: Mutex<Option<usize>>,
    /// The origin of [`Ctx::now`] in real time.
    started: Instant,
    /// Whether the device refuses each kind of request the cases use to provoke a refusal
    /// (asked once per run; `Err` says what it did instead).
    refusals: Mutex<BTreeMap<Refusal, Result<(), String>>>,
    /// The case at which the endpoint stopped answering, once it has.
    pub gone_at: Mutex<Option<String>>,
}

/// A kind of request that the cases of one clause use to provoke a refusal in the cases of
/// another: when the device does not refuse it at all, those cases cannot run (set-up), and
/// the defect is the finding of the clause named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// protocolId 1 (ADD-7).
    Invalid,
    /// A session id already in the table (ADD-4).
    DuplicateId,
}

impl Refusal {
    fn what(self) -> (&'static str, &'static str) {
        match self {
            Refusal::Invalid => ("a request with protocolId 1", "ADD-7"),
            Refusal::DuplicateId => ("a request whose session id is already in the table", "ADD-4"),
        }
    }
}

/// [`setup`], naming the clause whose own cases check the step that went wrong.
pub fn setup_of(clause: &'static str) -> impl Fn(Finding) -> Finding {
    move |f| match f {
        Finding::Fail(m) => Finding::Error(format!("set-up: {m} ({clause}'s finding)")),
        other => other,
    }
}

/// A step outside the case's clause went wrong: the case cannot conclude (ERROR "set-up: ..."),
/// and the defect belongs to the clause whose own cases check that step.
pub fn setup(f: Finding) -> Finding {
    match f {
        Finding::Fail(m) => Finding::Error(format!("set-up: {m}")),
        other => other,
    }
}

impl RunState {
    pub fn new(target: Target) -> Arc<Self> {
        let capacity = target.config.capacity;
        Arc::new(RunState {
            target,
            next: AtomicU64::new(0),
            capacity: Mutex::new(capacity),
            started: Instant::now(),
            refusals: Mutex::new(BTreeMap::new()),
            gone_at: Mutex::new(None),
        })
    }

    /// The capacity, as stated or as learned so far.
    pub fn capacity(&self) -> Option<usize> {
        *self.capacity.lock()
    }
}

#[derive(Default, Debug)]
pub struct CaseLog {
    pub notes: Vec<String>,
    pub tolerated: Vec<(Profile, String)>,
    pub measurements: BTreeMap<String, Value>,
    pub added: Vec<u64>,
    /// Frames sent into and received from the device's ports (the evidence).
    pub captured: Vec<Captured>,
    /// Whether the case used the ports (then every port's capture is written, empty or not).
    pub used_traffic: bool,
    /// Failed checks recorded while the case went on (see [`Ctx::check`]): a case reports
    /// every difference it found, not only the first.
    pub findings: Vec<String>,
}

/// A case's handle on the run. Cheap to clone (for concurrent work inside a case).
#[derive(Clone)]
pub struct Ctx {
    run: Arc<RunState>,
    log: Arc<Mutex<CaseLog>>,
}

/// What getSession or deleteSession said about an id.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(wire::SessionResponse),
    /// OK with `_REJECTED_SESSION_NONEXISTENT` (the API's answer).
    Nonexistent,
    /// OK and accepted, but a record of another session id: not the session asked for.
    Other(wire::SessionResponse),
    /// A gRPC status instead (NOT_FOUND or UNKNOWN: a field variant).
    NotFoundStatus(Code),
}

/// What getClosedSessions answered.
#[derive(Debug, Clone, Default)]
pub struct Closed {
    pub records: Vec<wire::SessionResponse>,
    /// The call answered gRPC NOT_FOUND (a field variant for "nothing queued").
    pub not_found: bool,
}

/// A failed call on the way to the clause's check is a FAIL of the endpoint (it must answer
/// valid calls); a connection that is gone is an ERROR (nothing can be concluded).
pub fn call_failed(what: &str, s: &Status) -> Finding {
    let m = format!("{what} answered {:?}: {}", s.code(), s.message());
    if s.code() == Code::Unavailable {
        Finding::Error(m)
    } else {
        Finding::Fail(m)
    }
}

impl Ctx {
    pub fn new(run: Arc<RunState>) -> Self {
        Ctx { run, log: Arc::new(Mutex::new(CaseLog::default())) }
    }

    pub fn take_log(&self) -> CaseLog {
        std::mem::take(&mut self.log.lock())
    }

    pub fn target(&self) -> &Target {
        &self.run.target
    }

    pub fn config(&self) -> &TargetConfig {
        &self.run.target.config
    }

    pub fn client(&self) -> SessionTableClient {
        SessionTableClient::new(self.run.target.channel.clone(), self.run.target.flavour)
    }

    pub fn note(&self, s: impl Into<String>) {
        self.log.lock().notes.push(s.into());
    }

    /// Records a failed check and lets the case go on (its verdict is FAIL with every
    /// finding); SKIP and ERROR stop the case.
    pub fn check(&self, r: Result<(), Finding>) -> Result<(), Finding> {
        match r {
            Err(Finding::Fail(m)) => {
                self.log.lock().findings.push(m);
                Ok(())
            }
            other => other,
        }
    }

    /// A check that goes on either way: when `holds` is false, `what` is recorded as a finding
    /// (the case ends FAIL with every finding).
    pub fn expect(&self, holds: bool, what: impl FnOnce() -> String) {
        if !holds {
            self.log.lock().findings.push(what());
        }
    }

    pub fn measure(&self, key: &str, v: impl Into<Value>) {
        self.log.lock().measurements.insert(key.to_string(), v.into());
    }

    /// A difference from the clause that `profile` describes: NON-STRICT when the run selected
    /// that profile, FAIL otherwise.
    pub fn tolerate(&self, profile: Profile, what: String) -> Result<(), Finding> {
        if self.run.target.config.profiles.contains(&profile) {
            self.log.lock().tolerated.push((profile, what));
            Ok(())
        } else {
            Err(Finding::Fail(format!("{what} (a field variant: profile {profile} would accept it)")))
        }
    }

    /// A fresh number of the run, and a FORWARD request carrying the fields every flow shares.
    fn fresh(&self) -> (u64, wire::SessionRequest) {
        let n = self.run.next.fetch_add(1, Ordering::Relaxed);
        let r = wire::SessionRequest {
            session_id: ID_BASE + n,
            in_lif: 1,
            out_lif: 2,
            action: Some(wire::ActionParameters {
                action_type: wire::ActionType::Forward as i32,
                ..Default::default()
            }),
            cache_timeout: DEFAULT_CACHE_TIMEOUT,
            ..Default::default()
        };
        (n, r)
    }

    /// A fresh session id and IPv4 TCP FORWARD flow, distinct from every other of the run.
    pub fn flow_v4(&self) -> wire::SessionRequest {
        let (n, r) = self.fresh();
        wire::SessionRequest {
            ip_version: wire::IpVersion::Ipv4 as i32,
            source_ip: ipv4_to_wire(Ipv4Addr::from(0x0a00_0000 | (n as u32 & 0x00ff_ffff))),
            source_port: 1024 + (n >> 24) as u32,
            destination_ip: ipv4_to_wire(Ipv4Addr::new(198, 18, 0, 1)),
            destination_port: 443,
            protocol_id: wire::ProtocolId::Tcp as i32,
            ..r
        }
    }

    /// A fresh IPv6 UDP FORWARD flow.
    pub fn flow_v6(&self) -> wire::SessionRequest {
        let (n, r) = self.fresh();
        let mut src = [0u8; 16];
        src[..2].copy_from_slice(&[0xfd, 0x00]);
        src[8..].copy_from_slice(&n.to_be_bytes());
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        dst[15] = 1;
        wire::SessionRequest {
            ip_version: wire::IpVersion::Ipv6 as i32,
            source_ip_v6: src.to_vec(),
            // Ports differ from flow to flow as well, so that a duplicate check that looked at
            // ports alone (ADD-5.4's defect) shows in ADD-5 only.
            source_port: 1024 + (n % 60_000) as u32,
            destination_ip_v6: dst.to_vec(),
            destination_port: 53,
            protocol_id: wire::ProtocolId::Udp as i32,
            ..r
        }
    }

    /// `n` fresh IPv4 flows.
    pub fn flows(&self, n: usize) -> Vec<wire::SessionRequest> {
        (0..n).map(|_| self.flow_v4()).collect()
    }

    fn track(&self, reqs: &[wire::SessionRequest]) {
        self.log.lock().added.extend(reqs.iter().map(|r| r.session_id));
    }

    /// Remembers ids to delete after the case (sessions added by other means).
    pub fn track_ids(&self, ids: impl IntoIterator<Item = u64>) {
        self.log.lock().added.extend(ids);
    }

    /// addSession with these requests; the call itself must succeed.
    pub async fn add(&self, reqs: Vec<wire::SessionRequest>) -> Result<wire::AddSessionResponse, Finding> {
        self.add_call(reqs).await.map_err(|s| call_failed("addSession", &s))
    }

    /// addSession, returning the gRPC status as it came.
    pub async fn add_call(&self, reqs: Vec<wire::SessionRequest>) -> Result<wire::AddSessionResponse, Status> {
        self.track(&reqs);
        self.client().add_session(tokio_stream::iter(reqs)).await.map(|r| r.into_inner())
    }

    fn lookup(
        what: &str,
        id: u64,
        r: Result<tonic::Response<wire::SessionResponse>, Status>,
    ) -> Result<Lookup, Finding> {
        match r {
            Ok(r) => {
                let r = r.into_inner();
                match wire::RequestStatus::try_from(r.request_status) {
                    Ok(wire::RequestStatus::Accepted) if r.session_id != id => Ok(Lookup::Other(r)),
                    Ok(wire::RequestStatus::Accepted) => Ok(Lookup::Found(r)),
                    Ok(wire::RequestStatus::RejectedSessionNonexistent) => Ok(Lookup::Nonexistent),
                    _ => Err(Finding::Fail(format!("{what} answered requestStatus {}", r.request_status))),
                }
            }
            Err(s) if matches!(s.code(), Code::NotFound | Code::Unknown) => Ok(Lookup::NotFoundStatus(s.code())),
            Err(s) => Err(call_failed(what, &s)),
        }
    }

    pub async fn get(&self, id: u64) -> Result<Lookup, Finding> {
        Self::lookup("getSession", id, self.client().get_session(wire::SessionId { session_id: id }).await)
    }

    pub async fn delete(&self, id: u64) -> Result<Lookup, Finding> {
        Self::lookup("deleteSession", id, self.client().delete_session(wire::SessionId { session_id: id }).await)
    }

    /// getSession must find `id`: an accepted answer carrying that very id.
    pub async fn present(&self, id: u64) -> Result<wire::SessionResponse, Finding> {
        match self.get(id).await? {
            Lookup::Found(r) => Ok(r),
            Lookup::Other(r) => Err(Finding::Fail(format!(
                "session {id} is not in the table: getSession({id}) answered the record of session {}",
                r.session_id
            ))),
            other => Err(Finding::Fail(format!("session {id} is not in the table (getSession: {other:?})"))),
        }
    }

    /// getSession must not find `id` (whichever way the endpoint says so; how it says so, and
    /// an answer about another session, are the concern of GET-2 alone).
    pub async fn absent(&self, id: u64) -> Result<(), Finding> {
        match self.get(id).await? {
            Lookup::Found(_) => Err(Finding::Fail(format!("session {id} is in the table"))),
            _ => Ok(()),
        }
    }

    /// Set-up: adds sessions that any conformant device inserts (valid and new) and checks,
    /// with the basic operations only, that it did: no request flagged, each found by
    /// getSession (every one of up to 100, else the first, middle and last, and then all if
    /// one of those is missing). Anything else is an ERROR naming the clause at fault.
    pub async fn setup_add(&self, reqs: Vec<wire::SessionRequest>) -> Result<wire::AddSessionResponse, Finding> {
        let r = self.add(reqs.clone()).await.map_err(setup)?;
        let flagged = crate::cases::flagged(&r, &reqs);
        if let Some(i) = flagged.iter().position(|f| *f) {
            return Err(Finding::Error(format!(
                "set-up: a stream of {} valid new sessions had {} refused (the first: request {i}, session {}; \
                 ADD-1's finding)",
                reqs.len(),
                flagged.iter().filter(|f| **f).count(),
                reqs[i].session_id
            )));
        }
        self.setup_found(&reqs).await?;
        Ok(r)
    }

    /// Set-up: every request of `reqs` (or a sample, see [`Ctx::setup_add`]) is in the table.
    async fn setup_found(&self, reqs: &[wire::SessionRequest]) -> Result<(), Finding> {
        let found = self.inserted(reqs, reqs.len() <= 100).await?;
        let Some(first) = reqs.iter().find(|r| !found.contains(&r.session_id)) else { return Ok(()) };
        let why = match self.present(first.session_id).await {
            Err(Finding::Fail(m)) => m,
            Err(other) => return Err(other),
            Ok(_) => format!("session {} is found only on a second look", first.session_id),
        };
        Err(Finding::Error(format!(
            "set-up: {} of {} accepted sessions are missing; the first: {why} (ADD-1's finding)",
            reqs.len() - found.len(),
            reqs.len()
        )))
    }

    /// Set-up: the device refuses a request of this kind at all (asked once per run on a
    /// request of the suite's own, then deleted). When it does not, a case that needs the
    /// refusal cannot run: ERROR, naming the clause whose finding that is.
    pub async fn refuses(&self, kind: Refusal) -> Result<(), Finding> {
        if let Some(r) = self.run.refusals.lock().get(&kind).cloned() {
            return r.map_err(Finding::Error);
        }
        let (what, clause) = kind.what();
        let probe = match kind {
            Refusal::Invalid => vec![wire::SessionRequest { protocol_id: 1, ..self.flow_v4() }],
            Refusal::DuplicateId => {
                let a = self.flow_v4();
                self.setup_add(vec![a.clone()]).await?;
                vec![wire::SessionRequest { session_id: a.session_id, ..self.flow_v4() }]
            }
        };
        let id = probe[0].session_id;
        let r = self.add(probe.clone()).await.map_err(setup)?;
        let outcome = if crate::cases::flagged(&r, &probe)[0] {
            Ok(())
        } else {
            Err(format!("set-up: the device does not refuse {what} (session {id} was not flagged): {clause}'s finding"))
        };
        self.run.refusals.lock().insert(kind, outcome.clone());
        outcome.map_err(Finding::Error)
    }

    /// The case needs `n` sessions in the table at once: SKIP when the capacity (stated, or
    /// learned by filling once per run) is smaller.
    pub async fn need(&self, n: usize) -> Result<(), Finding> {
        let cap = self.capacity().await.map_err(setup)?;
        if cap < n {
            return Err(Finding::Skip(format!("the case needs {n} sessions in the table; its capacity is {cap}")));
        }
        Ok(())
    }

    pub async fn page(&self, args: wire::SessionRequestArgs) -> Result<wire::SessionResponses, Finding> {
        self.client()
            .get_all_sessions(args)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| call_failed("getAllSessions", &s))
    }

    /// getClosedSessions with this pageSize, read to the end of the stream.
    pub async fn closed(&self, page_size: u32) -> Result<Closed, Finding> {
        let args = wire::SessionRequestArgs { page_size, ..Default::default() };
        let mut stream = match self.client().get_closed_sessions(args).await {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(Closed { records: vec![], not_found: true }),
            Err(s) => return Err(call_failed("getClosedSessions", &s)),
        };
        let mut records = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(r)) => records.push(r),
                Ok(None) => return Ok(Closed { records, not_found: false }),
                Err(s) => return Err(call_failed("getClosedSessions stream", &s)),
            }
        }
    }

    /// Reads getClosedSessions until it has nothing more (at most `rounds` calls).
    pub async fn drain_closed(&self, rounds: usize) -> Result<Vec<wire::SessionResponse>, Finding> {
        let mut all = Vec::new();
        for _ in 0..rounds {
            let c = self.closed(0).await?;
            if c.records.is_empty() {
                return Ok(all);
            }
            all.extend(c.records);
        }
        Err(Finding::Fail(format!(
            "getClosedSessions still had records after {rounds} calls that each read it to the end \
             ({} records so far): records are not removed once delivered",
            all.len()
        )))
    }

    /// Access to the device's ports; SKIP with the reason when there is none, or when one of
    /// `needed` is not reachable.
    pub fn traffic(&self, needed: &[PortId]) -> Result<Arc<Traffic>, Finding> {
        let t = self.run.target.traffic.clone().map_err(Finding::Skip)?;
        let missing: Vec<String> = needed.iter().filter(|p| !t.has(**p)).map(|p| p.to_string()).collect();
        if !missing.is_empty() {
            return Err(Finding::Skip(format!(
                "no traffic access to port {} (give it in OPOF_PORTS / --ports)",
                missing.join(", ")
            )));
        }
        self.log.lock().used_traffic = true;
        Ok(t)
    }

    /// Sends frames into the device's ports, in order, and collects what the device puts out
    /// (see [`Traffic::exchange`]); the frames are kept as the case's evidence.
    pub async fn exchange(
        &self,
        frames: Vec<(PortId, Vec<u8>)>,
        expect: &[(PortId, usize)],
    ) -> Result<Outputs, Finding> {
        let expect = expect.to_vec();
        self.on_ports(move |t, log| t.exchange(&frames, &expect, log)).await
    }

    /// Collects what the device puts out without sending (see [`Traffic::collect`]).
    pub async fn collect(&self, expect: &[(PortId, usize)]) -> Result<Outputs, Finding> {
        let expect = expect.to_vec();
        self.on_ports(move |t, log| t.collect(&expect, log)).await
    }

    /// Runs a step on the ports (at once in virtual time, on a blocking thread in real time)
    /// and keeps what it captured as the case's evidence.
    async fn on_ports(
        &self,
        step: impl FnOnce(&Traffic, &mut Vec<Captured>) -> Result<Outputs, String> + Send + 'static,
    ) -> Result<Outputs, Finding> {
        let t = self.traffic(&[])?;
        let log = self.log.clone();
        let is_virtual = t.is_virtual();
        let run = move || {
            let mut captured = Vec::new();
            let r = step(&t, &mut captured);
            log.lock().captured.extend(captured);
            r
        };
        let r = if is_virtual {
            run()
        } else {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|e| Finding::Error(format!("the traffic task failed: {e}")))?
        };
        r.map_err(|e| Finding::Error(format!("traffic: {e}")))
    }

    /// The time the device goes by, from an arbitrary origin: its virtual clock, or the
    /// monotonic clock in real time.
    pub fn now(&self) -> Duration {
        match &self.run.target.time {
            Time::Virtual { clock, .. } => Duration::from_nanos(clock.now().0),
            Time::Real => self.run.started.elapsed(),
        }
    }

    /// Adds frames captured elsewhere (a paced sender) to the case's evidence.
    pub fn keep_evidence(&self, frames: Vec<Captured>) {
        self.log.lock().captured.extend(frames);
    }

    pub fn virtual_time(&self) -> bool {
        matches!(self.run.target.time, Time::Virtual { .. })
    }

    /// Lets `d` pass: moves the virtual clock (and closes what is due), or sleeps.
    pub async fn elapse(&self, d: Duration) {
        match &self.run.target.time {
            Time::Virtual { clock, device } => {
                clock.advance_nanos(d.as_nanos() as u64);
                device.advance();
            }
            Time::Real => tokio::time::sleep(d).await,
        }
    }

    /// Waits until getClosedSessions has delivered a record for every id in `ids`, reading it
    /// every 20 ms in real time (or once, in virtual time), for at most `limit`. Returns the
    /// records of these ids, first occurrence each, with when they were seen; and any others.
    pub async fn wait_closed(&self, ids: &[u64], limit: Duration) -> Result<ClosedWait, Finding> {
        let start = Instant::now();
        let wanted: std::collections::HashSet<u64> = ids.iter().copied().collect();
        let mut out = ClosedWait::default();
        loop {
            let c = self.closed(0).await?;
            let seen = start.elapsed();
            for r in c.records {
                if wanted.contains(&r.session_id) && !out.records.contains_key(&r.session_id) {
                    out.records.insert(r.session_id, (r, seen));
                } else {
                    out.others.push(r);
                }
            }
            if out.records.len() == wanted.len() || self.virtual_time() || start.elapsed() >= limit {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The number of sessions in the table, by walking getAllSessions with nextkey. A set-up
    /// step: a walk that does not move forward (startSession or nextkey not honoured) is
    /// counted instead by pages (`page` 1, 2, ... from the start); when neither works the
    /// case cannot count, ERROR naming ALL's clauses.
    pub async fn count_sessions(&self) -> Result<usize, Finding> {
        const PAGE: u32 = 10_000;
        let mut n = 0;
        let mut start = 0;
        for _ in 0..100_000 {
            let p = self
                .page(wire::SessionRequestArgs { page_size: PAGE, page: 0, start_session: start, follow: false })
                .await
                .map_err(setup)?;
            let moved = p.session_info.iter().all(|r| r.session_id >= start) && (p.nextkey == 0 || p.nextkey > start);
            if !moved || p.session_info.len() > PAGE as usize {
                return self.count_by_pages().await;
            }
            n += p.session_info.len();
            if p.nextkey == 0 || p.session_info.is_empty() {
                return Ok(n);
            }
            start = p.nextkey;
        }
        self.count_by_pages().await
    }

    async fn count_by_pages(&self) -> Result<usize, Finding> {
        const PAGE: u32 = 1_000;
        let mut seen = std::collections::HashSet::new();
        for page in 1..=100_000 {
            let p = self
                .page(wire::SessionRequestArgs { page_size: PAGE, page, start_session: 0, follow: false })
                .await
                .map_err(setup)?;
            let before = seen.len();
            seen.extend(p.session_info.iter().map(|r| r.session_id));
            if p.session_info.len() < PAGE as usize || seen.len() == before {
                return Ok(seen.len());
            }
        }
        Err(Finding::Error(
            "set-up: the sessions in the table cannot be counted: getAllSessions neither walks by nextkey nor \
             pages by page number (ALL-3, ALL-4's findings)"
                .into(),
        ))
    }

    /// Deletes these sessions, many calls in flight; unknown ids are fine.
    pub async fn delete_many(&self, ids: Vec<u64>) -> Result<(), Finding> {
        use futures_util::StreamExt as _;
        let results: Vec<Result<Lookup, Finding>> = futures_util::stream::iter(ids)
            .map(|id| {
                let c = self.clone();
                async move { c.delete(id).await }
            })
            .buffer_unordered(CLEANUP_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().find_map(|r| r.err()).map_or(Ok(()), Err)
    }

    /// The table's capacity: as configured, or learned by filling (once per run).
    pub async fn capacity(&self) -> Result<usize, Finding> {
        if let Some(c) = *self.run.capacity.lock() {
            return Ok(c);
        }
        let fill = self.fill().await?;
        // Deleted here (the case needs the room back), so not again by the runner.
        let filled: std::collections::HashSet<u64> = fill.ids.iter().copied().collect();
        self.log.lock().added.retain(|id| !filled.contains(id));
        self.delete_many(fill.ids).await?;
        Ok(fill.capacity)
    }

    /// Fills the table to exactly its capacity with fresh sessions (deleted after the case).
    pub async fn fill(&self) -> Result<Fill, Finding> {
        self.fill_with(DEFAULT_CACHE_TIMEOUT).await
    }

    /// [`Ctx::fill`] with sessions of this cacheTimeout.
    ///
    /// A request counts as inserted only when neither `errorStatus` nor `responseError` flags
    /// it and getSession finds it (whatever `requestStatus` says: some devices never set it).
    /// With the capacity unknown, streams halve in length each time one does not fit whole,
    /// down to one session; what a refused stream inserted anyway is kept and counted.
    pub async fn fill_with(&self, cache_timeout: u32) -> Result<Fill, Finding> {
        let flows = |k: usize| -> Vec<wire::SessionRequest> {
            (0..k).map(|_| wire::SessionRequest { cache_timeout, ..self.flow_v4() }).collect()
        };
        let existing = self.count_sessions().await?;
        let known = *self.run.capacity.lock();
        let limit = self.config().fill_limit;
        let mut ids = Vec::new();
        let mut k = match known {
            Some(cap) => cap.saturating_sub(existing).min(FILL_STREAM),
            None => FILL_STREAM,
        };
        while k > 0 {
            if let Some(cap) = known {
                k = k.min(cap.saturating_sub(existing + ids.len()));
                if k == 0 {
                    break;
                }
            } else if existing + ids.len() > limit {
                return Err(Finding::Skip(format!(
                    "the capacity is not stated (OPOF_CAPACITY) and is above the fill limit {limit} (OPOF_FILL_LIMIT)"
                )));
            }
            let reqs = flows(k);
            let r = match self.add_call(reqs.clone()).await {
                Ok(r) => Some(r),
                // A stream longer than the whole table may be refused as such.
                Err(s) if s.code() == Code::ResourceExhausted => None,
                Err(s) => return Err(call_failed("addSession", &s)),
            };
            let flagged = r.as_ref().map_or_else(|| vec![true; k], |r| crate::cases::flagged(r, &reqs));
            let refused = flagged.iter().filter(|f| **f).count();
            let unflagged: Vec<wire::SessionRequest> =
                reqs.iter().zip(&flagged).filter(|(_, f)| !**f).map(|(r, _)| r.clone()).collect();
            let inserted = self.inserted(&unflagged, refused > 0).await?;
            if refused == 0 && inserted.len() < unflagged.len() {
                return Err(Finding::Fail(format!(
                    "filling the table: a stream of {k} new sessions was accepted (none flagged) but {} of them \
                     are not found by getSession",
                    unflagged.len() - inserted.len()
                )));
            }
            ids.extend(inserted);
            if refused == 0 {
                continue;
            }
            if let Some(cap) = known {
                return Err(Finding::Fail(format!(
                    "filling to the stated capacity {cap}: a stream of {k} new sessions with {} already in the table \
                     had {refused} refused (requestStatus {})",
                    existing + ids.len(),
                    r.map_or(-1, |r| r.request_status)
                )));
            }
            k /= 2;
        }
        let cap = existing + ids.len();
        if known.is_none() {
            *self.run.capacity.lock() = Some(cap);
            self.note(format!("capacity learned by filling: {cap}"));
        }
        Ok(Fill { ids, capacity: cap, existing })
    }

    /// Which of `reqs` getSession finds. All are asked when `all` is set (a stream refused in
    /// part may have inserted any of them); otherwise a sample first (see [`Ctx::setup_add`]).
    async fn inserted(&self, reqs: &[wire::SessionRequest], all: bool) -> Result<Vec<u64>, Finding> {
        use futures_util::StreamExt as _;
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        if !all {
            let sample = [0, reqs.len() / 2, reqs.len() - 1];
            let mut found = true;
            for i in sample {
                found &= matches!(self.get(reqs[i].session_id).await?, Lookup::Found(_));
            }
            if found {
                return Ok(reqs.iter().map(|r| r.session_id).collect());
            }
        }
        let ids: Vec<u64> = reqs.iter().map(|r| r.session_id).collect();
        let found: Vec<Result<Option<u64>, Finding>> = futures_util::stream::iter(ids)
            .map(|id| {
                let c = self.clone();
                async move { Ok(matches!(c.get(id).await?, Lookup::Found(_)).then_some(id)) }
            })
            .buffered(CLEANUP_IN_FLIGHT)
            .collect()
            .await;
        found.into_iter().filter_map(|r| r.transpose()).collect()
    }
}

/// Records seen by [`Ctx::wait_closed`].
#[derive(Default, Debug)]
pub struct ClosedWait {
    pub records: BTreeMap<u64, (wire::SessionResponse, Duration)>,
    pub others: Vec<wire::SessionResponse>,
}

/// A table filled to its capacity.
#[derive(Debug)]
pub struct Fill {
    pub ids: Vec<u64>,
    pub capacity: usize,
    /// Sessions that were there before.
    pub existing: usize,
}
