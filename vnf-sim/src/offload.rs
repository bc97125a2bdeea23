//! The VNF's side of the SessionTable API: when the operator activates a registered device,
//! the VNF connects to the endpoint it registered (mutual TLS with the registered CA when the
//! endpoint is `https://`), reconciles with getAllSessions, listens to closed sessions in follow
//! mode, and sends the flows its policy offloads in addSession streams. On deactivation it
//! stops adding (sessions already offloaded age out on the device and are still reported). If
//! the device goes away, the VNF keeps handling every flow itself and reconnects with back-off.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use opof_proto::client::{Flavour, SessionTableClient};
use opof_proto::domain::{AddError, AddOutcome, AddStatus, SessionRecord, Timestamp};
use opof_proto::openoffload::v1alpha5::{ApiFlavour, DeviceDescription};
use opof_proto::wire;
use parking_lot::Mutex;
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

use crate::activation::Registry;
use crate::vnf::Vnf;

/// How often pending offloads are sent (one addSession stream per batch).
pub const BATCH_EVERY: Duration = Duration::from_millis(1);

/// The VNF's client identity for mutual TLS: certificate and key (PEM).
pub type Identity2 = Option<(String, String)>;

fn now() -> Timestamp {
    Timestamp(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64))
}

fn status_from_wire(s: i32) -> AddStatus {
    match wire::AddSessionStatus::try_from(s) {
        Ok(wire::AddSessionStatus::SessionAccepted) => AddStatus::Accepted,
        Ok(wire::AddSessionStatus::SessionTableFull) => AddStatus::TableFull,
        Ok(wire::AddSessionStatus::SessionTableUnavailable) => AddStatus::TableUnavailable,
        Ok(wire::AddSessionStatus::SessionAlreadyExists) => AddStatus::AlreadyExists,
        _ => AddStatus::Rejected,
    }
}

async fn connect(d: &DeviceDescription, identity: &Identity2) -> Result<SessionTableClient, String> {
    let uri = &d.session_table_endpoint;
    if uri.is_empty() {
        return Err(format!("device {:?} registered no sessionTableEndpoint", d.name));
    }
    let mut ep = Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("{uri}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if uri.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if !d.ca_certificate_pem.is_empty() {
            tls = tls.ca_certificate(Certificate::from_pem(&d.ca_certificate_pem));
        }
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        ep = ep.tls_config(tls).map_err(|e| format!("{uri}: TLS: {e}"))?;
    }
    let channel = ep.connect().await.map_err(|e| format!("connecting to {uri}: {e}"))?;
    let flavour = match ApiFlavour::try_from(d.api_flavour) {
        Ok(ApiFlavour::FlavourV1) => Flavour::V1,
        _ => Flavour::V2,
    };
    Ok(SessionTableClient::new(channel, flavour))
}

/// The device the VNF last offloaded to (its sessions may outlive its activation).
pub type LastDevice = Arc<Mutex<Option<DeviceDescription>>>;

/// Runs for ever: follows the registry's active device and offloads to it.
pub async fn run(registry: Arc<Mutex<Registry>>, vnf: Arc<Mutex<Vnf>>, identity: Identity2, last: LastDevice) {
    let mut wait = Duration::from_millis(100);
    loop {
        let Some(active) = registry.lock().active() else {
            vnf.lock().set_offloading(false);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        *last.lock() = Some(active.clone());
        match serve_device(&registry, &vnf, &active, &identity).await {
            Ok(()) => {
                info!(device = %active.name, "device deactivated: no more offloads to it");
                wait = Duration::from_millis(100);
            }
            Err(e) => {
                warn!(device = %active.name, error = %e, retry_in_ms = wait.as_millis() as u64,
                      "device unreachable: the VNF handles every flow itself meanwhile");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
        let mut v = vnf.lock();
        v.set_offloading(false);
        v.connection_lost();
    }
}

/// Offloads to `d` while it stays the active device. `Ok` when it was deactivated, `Err` when
/// the connection failed.
async fn serve_device(
    registry: &Arc<Mutex<Registry>>,
    vnf: &Arc<Mutex<Vnf>>,
    d: &DeviceDescription,
    identity: &Identity2,
) -> Result<(), String> {
    let mut client = connect(d, identity).await?;
    // Reconcile: sessions the VNF thinks offloaded that the device no longer holds (it
    // restarted) are the VNF's again; their counters on the device are gone.
    let mut on_device = HashSet::new();
    let mut start = 0;
    loop {
        let page = client
            .get_all_sessions(wire::SessionRequestArgs {
                page_size: 10_000,
                page: 0,
                start_session: start,
                follow: false,
            })
            .await
            .map_err(|s| format!("getAllSessions: {}", s.message()))?
            .into_inner();
        on_device.extend(page.session_info.iter().map(|r| r.session_id));
        if page.nextkey == 0 {
            break;
        }
        start = page.nextkey;
    }
    let lost = vnf.lock().reconcile(&on_device);
    if lost > 0 {
        warn!(device = %d.name, sessions = lost, "sessions lost by the device (restarted?): their flows are the VNF's again");
    }
    // Sessions this VNF never added (a VNF before it, gone without withdrawing them): nobody
    // would read their counters, and their ids may be this VNF's next ones. The rule: withdraw
    // them, keeping their final counters in the account as orphans.
    let strangers: Vec<u64> = {
        let v = vnf.lock();
        let mut ids: Vec<u64> = on_device.iter().copied().filter(|id| !v.knows(*id)).collect();
        ids.sort_unstable();
        ids
    };
    for id in &strangers {
        let r = client
            .delete_session(wire::SessionId { session_id: *id })
            .await
            .map_err(|s| format!("deleteSession {id}: {}", s.message()))?
            .into_inner();
        if let Ok(rec) = SessionRecord::try_from(&r) {
            vnf.lock().orphan(&rec);
        }
    }
    if !strangers.is_empty() {
        warn!(device = %d.name, sessions = strangers.len(), "sessions this VNF never added (an earlier VNF's) withdrawn; their counters are in the account as orphans");
    }
    // Closed sessions, as they close: follow-mode streams, one after the other (the device
    // ends each cleanly once it has sent what was queued, which confirms their delivery; a
    // record seen twice after a broken stream is recognised by its id and ignored).
    let follow = wire::SessionRequestArgs { page_size: 0, page: 0, start_session: 0, follow: true };
    let mut closed_client = client.clone();
    let mut closed = closed_client
        .get_closed_sessions(follow)
        .await
        .map_err(|s| format!("getClosedSessions: {}", s.message()))?
        .into_inner();
    let listener = {
        let vnf = vnf.clone();
        tokio::spawn(async move {
            loop {
                let mut got = 0u64;
                while let Some(r) = closed.next().await {
                    match r.ok().and_then(|r| SessionRecord::try_from(&r).ok()) {
                        Some(rec) => vnf.lock().closed(&rec),
                        None => return,
                    }
                    got += 1;
                }
                if got == 0 {
                    // A device without the follow extension ends every stream at once:
                    // ask again a little later rather than in a tight loop.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                closed = match closed_client.get_closed_sessions(follow).await {
                    Ok(s) => s.into_inner(),
                    Err(_) => return,
                };
            }
        })
    };
    info!(device = %d.name, endpoint = %d.session_table_endpoint, "offloading to the activated device");
    vnf.lock().set_offloading(true);
    let result = offload_loop(registry, vnf, d, &mut client, &listener).await;
    if result.is_err() {
        listener.abort();
    }
    // Deactivated: no more adds, but the sessions already there age out on the device and their
    // closed records still arrive on the stream, which stays open (it ends with the connection).
    result
}

async fn offload_loop(
    registry: &Arc<Mutex<Registry>>,
    vnf: &Arc<Mutex<Vnf>>,
    d: &DeviceDescription,
    client: &mut SessionTableClient,
    listener: &tokio::task::JoinHandle<()>,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(BATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if registry.lock().active().is_none_or(|a| a.name != d.name) {
            return Ok(());
        }
        if listener.is_finished() {
            return Err("the closed-session stream ended".into());
        }
        let specs = vnf.lock().take_offloads();
        if specs.is_empty() {
            continue;
        }
        let requests: Vec<wire::SessionRequest> = specs.iter().map(wire::SessionRequest::from).collect();
        let r = match client.add_session(tokio_stream::iter(requests)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                // The stream's sessions are the VNF's again; then reconnect.
                vnf.lock().added(&specs, &refused_all(&specs), now(), |_| None);
                return Err(format!("addSession: {}", s.message()));
            }
        };
        let errors: Vec<AddError> = r
            .response_error
            .iter()
            .map(|e| AddError { id: e.session_id, status: status_from_wire(e.error_status) })
            .collect();
        // For "already exists", ask the device whether it holds that id (an earlier stream
        // got through).
        let mut existing = HashMap::new();
        for e in errors.iter().filter(|e| e.status == AddStatus::AlreadyExists) {
            if let Ok(resp) = client.get_session(wire::SessionId { session_id: e.id }).await {
                if let Ok(rec) = SessionRecord::try_from(&resp.into_inner()) {
                    existing.insert(e.id, rec);
                }
            }
        }
        let outcome =
            AddOutcome { status: status_from_wire(r.request_status), error_bits: r.error_status, errors, start: now() };
        vnf.lock().added(&specs, &outcome, now(), |id| existing.get(&id).copied());
    }
}

/// An outcome refusing every request of a stream that failed as a whole (no answer).
fn refused_all(specs: &[opof_proto::domain::SessionSpec]) -> AddOutcome {
    AddOutcome {
        status: AddStatus::TableUnavailable,
        error_bits: 0,
        errors: specs.iter().map(|s| AddError { id: s.id, status: AddStatus::TableFull }).collect(),
        start: now(),
    }
}

/// At the end of a run: deletes every session the VNF offloaded to the last device, so their
/// final counters join the VNF's account. Returns how many were withdrawn.
pub async fn withdraw_all(last: &LastDevice, vnf: &Arc<Mutex<Vnf>>, identity: &Identity2) -> usize {
    let Some(d) = last.lock().clone() else { return 0 };
    let Ok(mut client) = connect(&d, identity).await else { return 0 };
    let ids = vnf.lock().offloaded();
    let mut n = 0;
    for id in ids {
        if let Ok(r) = client.delete_session(wire::SessionId { session_id: id }).await {
            let r = r.into_inner();
            if r.request_status == wire::RequestStatus::Accepted as i32 {
                if let Ok(rec) = SessionRecord::try_from(&r) {
                    vnf.lock().closed(&rec);
                    n += 1;
                }
            }
        }
    }
    n
}
