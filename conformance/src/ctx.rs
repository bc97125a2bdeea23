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
}

impl RunState {
    pub fn new(target: Target) -> Arc<Self> {
        let capacity = target.config.capacity;
        Arc::new(RunState { target, next: AtomicU64::new(0), capacity: Mutex::new(capacity), started: Instant::now() })
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
            source_port: 5353,
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

    fn lookup(what: &str, r: Result<tonic::Response<wire::SessionResponse>, Status>) -> Result<Lookup, Finding> {
        match r {
            Ok(r) => {
                let r = r.into_inner();
                match wire::RequestStatus::try_from(r.request_status) {
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
        Self::lookup("getSession", self.client().get_session(wire::SessionId { session_id: id }).await)
    }

    pub async fn delete(&self, id: u64) -> Result<Lookup, Finding> {
        Self::lookup("deleteSession", self.client().delete_session(wire::SessionId { session_id: id }).await)
    }

    /// getSession must find `id`.
    pub async fn present(&self, id: u64) -> Result<wire::SessionResponse, Finding> {
        match self.get(id).await? {
            Lookup::Found(r) => Ok(r),
            other => Err(Finding::Fail(format!("session {id} is not in the table (getSession: {other:?})"))),
        }
    }

    /// getSession must not find `id` (whichever way the endpoint says so; how it says so is
    /// the concern of GET-2 alone).
    pub async fn absent(&self, id: u64) -> Result<(), Finding> {
        match self.get(id).await? {
            Lookup::Found(_) => Err(Finding::Fail(format!("session {id} is in the table"))),
            _ => Ok(()),
        }
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

    /// The number of sessions in the table, by walking getAllSessions with nextkey.
    pub async fn count_sessions(&self) -> Result<usize, Finding> {
        let mut n = 0;
        let mut start = 0;
        for _ in 0..100_000 {
            let p = self
                .page(wire::SessionRequestArgs { page_size: 10_000, page: 0, start_session: start, follow: false })
                .await?;
            n += p.session_info.len();
            if p.nextkey == 0 || p.session_info.is_empty() {
                return Ok(n);
            }
            start = p.nextkey;
        }
        Err(Finding::Fail("walking getAllSessions by nextkey did not end".into()))
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
    pub async fn fill_with(&self, cache_timeout: u32) -> Result<Fill, Finding> {
        let flows = |k: usize| -> Vec<wire::SessionRequest> {
            (0..k).map(|_| wire::SessionRequest { cache_timeout, ..self.flow_v4() }).collect()
        };
        let existing = self.count_sessions().await?;
        let known = *self.run.capacity.lock();
        let limit = self.config().fill_limit;
        let mut ids = Vec::new();
        match known {
            Some(cap) => {
                let mut left = cap.saturating_sub(existing);
                while left > 0 {
                    let k = left.min(FILL_STREAM);
                    let reqs = flows(k);
                    let r = self.add(reqs.clone()).await?;
                    if r.request_status != wire::AddSessionStatus::SessionAccepted as i32 {
                        return Err(Finding::Fail(format!(
                            "filling to the stated capacity {cap}: a stream of {k} new sessions with {} already \
                             added was answered requestStatus {}",
                            existing + ids.len(),
                            r.request_status
                        )));
                    }
                    ids.extend(reqs.iter().map(|r| r.session_id));
                    left -= k;
                }
                Ok(Fill { ids, capacity: cap, existing })
            }
            None => {
                let mut k = FILL_STREAM;
                loop {
                    if existing + ids.len() > limit {
                        return Err(Finding::Skip(format!(
                            "the capacity is not stated (OPOF_CAPACITY) and is above the fill limit {limit} \
                             (OPOF_FILL_LIMIT)"
                        )));
                    }
                    let reqs = flows(k);
                    let r = match self.add_call(reqs.clone()).await {
                        Ok(r) => r,
                        // A stream longer than the whole table may be refused as such.
                        Err(s) if s.code() == Code::ResourceExhausted => wire::AddSessionResponse {
                            request_status: wire::AddSessionStatus::SessionTableFull as i32,
                            ..Default::default()
                        },
                        Err(s) => return Err(call_failed("addSession", &s)),
                    };
                    if r.request_status == wire::AddSessionStatus::SessionAccepted as i32 {
                        ids.extend(reqs.iter().map(|r| r.session_id));
                    } else if r.request_status == wire::AddSessionStatus::SessionTableFull as i32 {
                        if k == 1 {
                            break;
                        }
                        k /= 2;
                    } else {
                        return Err(Finding::Fail(format!(
                            "filling the table to learn its capacity: a stream of {k} new sessions was answered \
                             requestStatus {}",
                            r.request_status
                        )));
                    }
                }
                let cap = existing + ids.len();
                *self.run.capacity.lock() = Some(cap);
                self.note(format!("capacity learned by filling: {cap}"));
                Ok(Fill { ids, capacity: cap, existing })
            }
        }
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
