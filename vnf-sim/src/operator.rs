//! The operator's side of the Activation service: list the devices registered with a VNF, see
//! which one is active, activate or deactivate one by name (`opof activation`). It speaks the
//! published `openoffload.v1alpha5.Activation` paths, so it works against any VNF that serves
//! them, not only `opof vnf`.

use std::time::Duration;

use opof_proto::openoffload::v1alpha5::{
    activation_client::ActivationClient, ApiFlavour, DeviceDescription, Empty, InterfaceType,
};
use tonic::transport::{Channel, Endpoint};

/// What went wrong talking to the VNF, in words an operator acts on.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("cannot reach the VNF's Activation service at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{call} refused by the VNF ({code:?}): {message}")]
    Refused { call: &'static str, code: tonic::Code, message: String },
    #[error("no device is active, so there is none to deactivate")]
    NoneActive,
}

/// A connection to one VNF's Activation service.
pub struct Operator {
    client: ActivationClient<Channel>,
}

fn refused(call: &'static str) -> impl FnOnce(tonic::Status) -> OperatorError {
    move |s| OperatorError::Refused { call, code: s.code(), message: s.message().to_string() }
}

impl Operator {
    /// Connects to `vnf` (`HOST:PORT` or a URI), giving up after `timeout`.
    pub async fn connect(vnf: &str, timeout: Duration) -> Result<Self, OperatorError> {
        Self::connect_tls(vnf, timeout, None).await
    }

    /// As [`Operator::connect`], over mutual TLS with `tls` (a VNF started with `--tls-dir`).
    pub async fn connect_tls(
        vnf: &str,
        timeout: Duration,
        tls: Option<&opof_device::tls::ClientTls>,
    ) -> Result<Self, OperatorError> {
        let uri = match (vnf.contains("://"), tls.is_some()) {
            (true, _) => vnf.to_string(),
            (false, true) => format!("https://{vnf}"),
            (false, false) => format!("http://{vnf}"),
        };
        let unreachable = |reason: String| OperatorError::Unreachable { addr: vnf.to_string(), reason };
        let mut endpoint = Endpoint::from_shared(uri).map_err(|e| unreachable(e.to_string()))?.connect_timeout(timeout);
        if let Some(t) = tls {
            endpoint = endpoint.tls_config(t.to_tonic()).map_err(|e| unreachable(e.to_string()))?;
        }
        let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unreachable(transport_reason(&e))),
            Err(_) => return Err(unreachable(format!("no answer within {timeout:?}"))),
        };
        Ok(Operator { client: ActivationClient::new(channel) })
    }

    /// The registered devices, in order of registration.
    pub async fn list(&mut self) -> Result<Vec<DeviceDescription>, OperatorError> {
        let r = self
            .client
            .get_registered_offload_devices(Empty {})
            .await
            .map_err(refused("getRegisteredOffloadDevices"))?;
        Ok(r.into_inner().devices)
    }

    /// The active device, or None (the service answers an empty description then).
    pub async fn active(&mut self) -> Result<Option<DeviceDescription>, OperatorError> {
        let d = self.client.get_activated_offload(Empty {}).await.map_err(refused("getActivatedOffload"))?.into_inner();
        Ok((!d.name.is_empty()).then_some(d))
    }

    /// Activates the registered device `name`; answers its description.
    pub async fn activate(&mut self, name: &str) -> Result<DeviceDescription, OperatorError> {
        let d = DeviceDescription { name: name.into(), ..Default::default() };
        let r = self.client.activate_offload(d).await.map_err(refused("activateOffload"))?.into_inner();
        Ok(r.device.unwrap_or_else(|| DeviceDescription { name: name.into(), ..Default::default() }))
    }

    /// Deactivates `name`, or the active device when `name` is None (an error if none is).
    pub async fn deactivate(&mut self, name: Option<&str>) -> Result<DeviceDescription, OperatorError> {
        let name = match name {
            Some(n) => n.to_string(),
            None => self.active().await?.ok_or(OperatorError::NoneActive)?.name,
        };
        let d = DeviceDescription { name: name.clone(), ..Default::default() };
        let r = self.client.deactivate_offload(d).await.map_err(refused("deactivateOffload"))?.into_inner();
        Ok(r.device.unwrap_or(DeviceDescription { name, ..Default::default() }))
    }
}

/// The innermost cause of a transport error ("Connection refused", not "transport error").
fn transport_reason(e: &tonic::transport::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(s) = source.source() {
        source = s;
    }
    source.to_string()
}

fn flavour_name(d: &DeviceDescription) -> &'static str {
    match ApiFlavour::try_from(d.api_flavour) {
        Ok(ApiFlavour::FlavourV1) => "v1",
        Ok(ApiFlavour::FlavourV2) => "v2",
        Ok(ApiFlavour::FlavourV1AndV2) => "v1+v2",
        _ => "-",
    }
}

fn kind_name(d: &DeviceDescription) -> &'static str {
    match InterfaceType::try_from(d.r#type) {
        Ok(InterfaceType::Software) => "software",
        Ok(InterfaceType::Smartnic) => "smartnic",
        Ok(InterfaceType::Nos) => "nos",
        _ => "-",
    }
}

/// One device as JSON (the fields an operator reads; the CA as present or not).
pub fn device_json(d: &DeviceDescription, active: bool) -> serde_json::Value {
    serde_json::json!({
        "name": d.name,
        "active": active,
        "type": kind_name(d),
        "description": d.description,
        "session_capacity": d.session_capacity,
        "session_rate": d.session_rate,
        "tcp_timeout_s": d.tcp_session_timeout,
        "udp_timeout_s": d.udp_session_timeout,
        "endpoint": d.session_table_endpoint,
        "flavour": flavour_name(d),
        "ca_registered": !d.ca_certificate_pem.is_empty(),
    })
}

/// The registered devices as a table, the active one marked with `*`.
pub fn device_table(devices: &[DeviceDescription], active: Option<&str>) -> String {
    if devices.is_empty() {
        return "no device is registered\n".into();
    }
    let rows: Vec<[String; 8]> = devices
        .iter()
        .map(|d| {
            [
                if active == Some(d.name.as_str()) { "*".into() } else { String::new() },
                d.name.clone(),
                if d.session_table_endpoint.is_empty() { "-".into() } else { d.session_table_endpoint.clone() },
                flavour_name(d).into(),
                d.session_capacity.to_string(),
                d.session_rate.to_string(),
                format!("{}/{}", d.tcp_session_timeout, d.udp_session_timeout),
                if d.ca_certificate_pem.is_empty() { "no".into() } else { "yes".into() },
            ]
        })
        .collect();
    let header = [" ", "NAME", "ENDPOINT", "FLAVOUR", "CAPACITY", "RATE/S", "TIMEOUT TCP/UDP S", "CA"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_marks_the_active_device_and_aligns_columns() {
        let a = DeviceDescription {
            name: "dpu-a".into(),
            session_capacity: 1_000_000,
            session_rate: 500_000,
            tcp_session_timeout: 30,
            udp_session_timeout: 30,
            session_table_endpoint: "https://10.0.0.5:50151".into(),
            api_flavour: ApiFlavour::FlavourV1AndV2 as i32,
            ca_certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
            ..Default::default()
        };
        let b = DeviceDescription { name: "historic".into(), ..Default::default() };
        let t = device_table(&[a, b], Some("dpu-a"));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].starts_with("*  dpu-a "), "{t}");
        assert!(lines[2].starts_with("   historic "), "{t}");
        assert!(lines[1].contains("https://10.0.0.5:50151") && lines[1].contains("v1+v2") && lines[1].ends_with("yes"));
        assert!(lines[2].contains(" - ") && lines[2].ends_with("no"), "{t}");
        // Columns line up: NAME starts at the same offset in every line.
        let col = lines[0].find("NAME").unwrap();
        assert_eq!(&lines[1][col..col + 5], "dpu-a");
        assert_eq!(&lines[2][col..col + 8], "historic");
        assert_eq!(device_table(&[], None), "no device is registered\n");
    }

    #[test]
    fn json_names_the_flavour_and_whether_a_ca_was_registered() {
        let d = DeviceDescription { name: "x".into(), api_flavour: ApiFlavour::FlavourV2 as i32, ..Default::default() };
        let j = device_json(&d, true);
        assert_eq!(j["flavour"], "v2");
        assert_eq!(j["active"], true);
        assert_eq!(j["ca_registered"], false);
    }
}
