//! The device registers itself with a VNF's Activation service (SEMANTICS.md "Activation"):
//! its description carries its name, capacity, add rate and default timeouts, and the project's
//! extension fields — where its SessionTable listens, the flavour it speaks there, and the CA
//! certificate the VNF needs to verify it. Registration is retried with back-off until the VNF
//! answers (the VNF may start later), and kept alive: the device looks every few seconds whether
//! the VNF still lists it, and registers again when it does not (the VNF restarted and forgot
//! it). The device deregisters when it stops.

use std::time::Duration;

use opof_proto::openoffload::v1alpha5::{
    activation_client::ActivationClient, ApiFlavour, DeviceDescription, InterfaceType, RegistrationStatusType,
};
use tonic::transport::Endpoint;
use tracing::{info, warn};

use crate::table::TableConfig;
use crate::tls::ClientTls;

/// addSession rate the reference device advertises (sessions/s; benches/README.md measures
/// 1.1–1.5 M on two cores).
pub const ADVERTISED_RATE: i32 = 1_000_000;

/// The reference device's description.
pub fn description(name: &str, table: &TableConfig, endpoint: &str, ca_pem: Option<String>) -> DeviceDescription {
    DeviceDescription {
        name: name.into(),
        r#type: InterfaceType::Software as i32,
        description: "OpenOffload reference device (opof device)".into(),
        session_capacity: i32::try_from(table.capacity).unwrap_or(i32::MAX),
        session_rate: ADVERTISED_RATE,
        tcp_session_timeout: i32::try_from(table.tcp_timeout).unwrap_or(i32::MAX),
        udp_session_timeout: i32::try_from(table.udp_timeout).unwrap_or(i32::MAX),
        session_table_endpoint: endpoint.into(),
        api_flavour: ApiFlavour::FlavourV1AndV2 as i32,
        ca_certificate_pem: ca_pem.unwrap_or_default(),
    }
}

/// The Activation endpoint as a URI: `host:port` means plaintext HTTP/2, or TLS when the
/// device has TLS material to present.
fn uri(vnf: &str, tls: Option<&ClientTls>) -> String {
    match (vnf.contains("://"), tls.is_some()) {
        (true, _) => vnf.to_string(),
        (false, true) => format!("https://{vnf}"),
        (false, false) => format!("http://{vnf}"),
    }
}

/// A connection to the Activation service, over mutual TLS when `tls` is given (the device's
/// client certificate is then what authenticates it as the registrant of its name).
async fn channel(vnf: &str, tls: Option<&ClientTls>) -> Result<tonic::transport::Channel, String> {
    let mut ep = Endpoint::from_shared(uri(vnf, tls))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    if let Some(t) = tls {
        ep = ep.tls_config(t.to_tonic()).map_err(|e| e.to_string())?;
    }
    ep.connect().await.map_err(|e| format!("connecting: {e}"))
}

/// Registers `d` with the VNF at `vnf`, retrying with back-off (100 ms doubling to 5 s) until
/// it is accepted. Returns when registered.
pub async fn register_until_accepted(vnf: &str, d: &DeviceDescription, tls: Option<&ClientTls>) {
    let mut wait = Duration::from_millis(100);
    loop {
        match register_once(vnf, d, tls).await {
            Ok(()) => {
                info!(vnf, name = %d.name, endpoint = %d.session_table_endpoint, "registered with the VNF");
                return;
            }
            Err(e) => {
                warn!(vnf, error = %e, retry_in_ms = wait.as_millis() as u64, "registration with the VNF failed");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How often a registered device checks that the VNF still lists it.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// Registers `d` (as [`register_until_accepted`]) and keeps it registered: every `every` it asks
/// the VNF for its registered devices and registers again when `d` is not among them. A VNF
/// that does not answer is asked again with back-off (doubling to 30 s). Runs until aborted.
pub async fn keep_registered(vnf: &str, d: &DeviceDescription, tls: Option<ClientTls>, every: Duration) {
    let tls = tls.as_ref();
    register_until_accepted(vnf, d, tls).await;
    let mut wait = every;
    let mut unreachable = false;
    loop {
        tokio::time::sleep(wait).await;
        match listed(vnf, &d.name, tls).await {
            Ok(true) => {
                if unreachable {
                    info!(vnf, name = %d.name, "the VNF answers again and still lists this device");
                }
                unreachable = false;
                wait = every;
            }
            Ok(false) => {
                warn!(vnf, name = %d.name, "the VNF no longer lists this device (it restarted?): registering again");
                register_until_accepted(vnf, d, tls).await;
                unreachable = false;
                wait = every;
            }
            Err(e) => {
                if !unreachable {
                    warn!(vnf, error = %e, "the VNF does not answer; asking again with back-off");
                }
                unreachable = true;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Whether the VNF lists a device named `name`.
async fn listed(vnf: &str, name: &str, tls: Option<&ClientTls>) -> Result<bool, String> {
    let channel = channel(vnf, tls).await?;
    let list = ActivationClient::new(channel)
        .get_registered_offload_devices(opof_proto::openoffload::v1alpha5::Empty {})
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    Ok(list.devices.iter().any(|x| x.name == name))
}

async fn register_once(vnf: &str, d: &DeviceDescription, tls: Option<&ClientTls>) -> Result<(), String> {
    let channel = channel(vnf, tls).await?;
    let r =
        ActivationClient::new(channel).register_offload_device(d.clone()).await.map_err(|s| s.message().to_string())?;
    match r.into_inner().status() {
        RegistrationStatusType::DeviceRegistered => Ok(()),
        other => Err(format!("refused: {other:?}")),
    }
}

/// Deregisters (best effort, once, within 2 s).
pub async fn deregister(vnf: &str, d: &DeviceDescription, tls: Option<&ClientTls>) {
    let attempt = async {
        let channel = channel(vnf, tls).await.ok()?;
        ActivationClient::new(channel).deregister_offload_device(d.clone()).await.ok()
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(Some(_)) => info!(vnf, name = %d.name, "deregistered from the VNF"),
        _ => warn!(vnf, name = %d.name, "could not deregister from the VNF"),
    }
}
