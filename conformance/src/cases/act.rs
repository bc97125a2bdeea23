//! ACT: the Activation service of a VNF (`openoffload.v1alpha5.Activation`). These cases certify
//! the VNF side: the embedded target runs the project's own Activation server; other targets
//! need `OPOF_ACTIVATION_ENDPOINT`, and the cases are SKIP without it.
//!
//! The cases register devices named `opof-conformance-*` and leave none registered or active.

use opof_proto::openoffload::v1alpha5::{
    activation_client::ActivationClient, ActivationStatusType, ApiFlavour, DeviceDescription, Empty, InterfaceType,
    RegistrationStatusType,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{case, Case};
use crate::ctx::{call_failed, Ctx};
use crate::verdict::Finding;
use crate::{ensure, ensure_eq, fail};

pub fn cases() -> Vec<Case> {
    vec![
        case!(
            "ACT-1.1",
            "ACT-1",
            "The six Activation methods are served",
            "registerOffloadDevice, getRegisteredOffloadDevices, activateOffload, getActivatedOffload, \
             deactivateOffload, deregisterOffloadDevice for one device, in that order.",
            "Each answers OK with the status the step calls for. SKIP without an Activation endpoint.",
            six_methods
        ),
        case!(
            "ACT-2.1",
            "ACT-2",
            "At most one device is active",
            "Register A and B; activate A; activate B; activate an unregistered C; deactivate A; activate B.",
            "B's first activation and C's are refused with a gRPC error status, and A stays active; once A \
             is deactivated, B is activated.",
            one_active
        ),
        case!(
            "ACT-3.1",
            "ACT-3",
            "Deregistering the active device deactivates it",
            "Register A and B; activate A; deregister A; getActivatedOffload; activate B.",
            "After the deregistration no device is active (an empty description, or NOT_FOUND) and A is not \
             listed; B can be activated.",
            deregister_active
        ),
        case!(
            "ACT-4.1",
            "ACT-4",
            "Descriptions are kept whole, extension fields included",
            "Register a device with every field set, the project extensions (sessionTableEndpoint, apiFlavour, \
             caCertificatePem) included; list the devices; activate it.",
            "getRegisteredOffloadDevices and activateOffload return the description exactly as registered.",
            description_kept
        ),
    ]
}

fn client(cx: &Ctx) -> Result<ActivationClient<Channel>, Finding> {
    cx.target().activation.clone().map(ActivationClient::new).ok_or_else(|| {
        Finding::Skip("no Activation endpoint (OPOF_ACTIVATION_ENDPOINT): the ACT cases certify a VNF".into())
    })
}

fn device(name: &str) -> DeviceDescription {
    DeviceDescription {
        name: format!("opof-conformance-{name}"),
        r#type: InterfaceType::Smartnic as i32,
        description: "registered by the OpenOffload conformance suite".into(),
        session_capacity: 2_000_000,
        session_rate: 100_000,
        tcp_session_timeout: 15,
        udp_session_timeout: 30,
        ..Default::default()
    }
}

/// Leaves the suite's devices neither active nor registered (errors ignored: they may not be).
/// Registering first reaches a device a faulty server left active after deregistering it.
async fn tidy(c: &mut ActivationClient<Channel>, names: &[&str]) {
    for n in names {
        let _ = c.register_offload_device(device(n)).await;
        let _ = c.deactivate_offload(device(n)).await;
        let _ = c.deregister_offload_device(device(n)).await;
    }
}

fn ok<T>(what: &str, r: Result<tonic::Response<T>, Status>) -> Result<T, Finding> {
    r.map(|r| r.into_inner()).map_err(|s| call_failed(what, &s))
}

async fn active_name(c: &mut ActivationClient<Channel>) -> Result<Option<String>, Finding> {
    match c.get_activated_offload(Empty {}).await {
        Ok(d) => Ok(Some(d.into_inner().name).filter(|n| !n.is_empty())),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(call_failed("getActivatedOffload", &s)),
    }
}

async fn six_methods(cx: Ctx) -> Result<(), Finding> {
    let mut c = client(&cx)?;
    tidy(&mut c, &["a"]).await;
    let r = ok("registerOffloadDevice", c.register_offload_device(device("a")).await)?;
    ensure_eq!(r.status, RegistrationStatusType::DeviceRegistered as i32, "registerOffloadDevice status");
    let l = ok("getRegisteredOffloadDevices", c.get_registered_offload_devices(Empty {}).await)?;
    ensure!(l.devices.iter().any(|d| d.name == device("a").name), "the registered device is not listed");
    let r = ok("activateOffload", c.activate_offload(device("a")).await)?;
    ensure_eq!(r.status, ActivationStatusType::DeviceActivated as i32, "activateOffload status");
    ensure_eq!(active_name(&mut c).await?, Some(device("a").name), "getActivatedOffload");
    let r = ok("deactivateOffload", c.deactivate_offload(device("a")).await)?;
    ensure_eq!(r.status, ActivationStatusType::DeviceDeactivated as i32, "deactivateOffload status");
    let r = ok("deregisterOffloadDevice", c.deregister_offload_device(device("a")).await)?;
    ensure_eq!(r.status, RegistrationStatusType::DeviceDeregistered as i32, "deregisterOffloadDevice status");
    Ok(())
}

async fn one_active(cx: Ctx) -> Result<(), Finding> {
    let mut c = client(&cx)?;
    tidy(&mut c, &["a", "b", "c"]).await;
    let result = async {
        for n in ["a", "b"] {
            ok("registerOffloadDevice", c.register_offload_device(device(n)).await)?;
        }
        ok("activateOffload A", c.activate_offload(device("a")).await)?;
        match c.activate_offload(device("b")).await {
            Ok(_) => fail!("a second device was activated while another was active"),
            Err(s) => cx.note(format!("second activation refused: {:?}", s.code())),
        }
        ensure_eq!(active_name(&mut c).await?, Some(device("a").name), "the active device after the refusal");
        match c.activate_offload(device("c")).await {
            Ok(_) => fail!("an unregistered device was activated"),
            Err(s) => cx.note(format!("unregistered device refused: {:?}", s.code())),
        }
        ok("deactivateOffload A", c.deactivate_offload(device("a")).await)?;
        ok("activateOffload B once A is deactivated", c.activate_offload(device("b")).await)?;
        ensure_eq!(active_name(&mut c).await?, Some(device("b").name), "the active device");
        Ok(())
    }
    .await;
    tidy(&mut c, &["a", "b"]).await;
    result
}

async fn deregister_active(cx: Ctx) -> Result<(), Finding> {
    let mut c = client(&cx)?;
    tidy(&mut c, &["a", "b"]).await;
    let result = async {
        for n in ["a", "b"] {
            ok("registerOffloadDevice", c.register_offload_device(device(n)).await)?;
        }
        ok("activateOffload A", c.activate_offload(device("a")).await)?;
        ok("deregisterOffloadDevice A", c.deregister_offload_device(device("a")).await)?;
        let active = active_name(&mut c).await?;
        ensure!(active.is_none(), "after deregistering the active device, {active:?} is still active");
        let l = ok("getRegisteredOffloadDevices", c.get_registered_offload_devices(Empty {}).await)?;
        ensure!(!l.devices.iter().any(|d| d.name == device("a").name), "the deregistered device is still listed");
        ok("activateOffload B", c.activate_offload(device("b")).await)?;
        Ok(())
    }
    .await;
    tidy(&mut c, &["a", "b"]).await;
    result
}

async fn description_kept(cx: Ctx) -> Result<(), Finding> {
    let mut c = client(&cx)?;
    tidy(&mut c, &["full"]).await;
    let full = DeviceDescription {
        session_table_endpoint: "https://192.0.2.10:50151".into(),
        api_flavour: ApiFlavour::FlavourV1AndV2 as i32,
        ca_certificate_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        ..device("full")
    };
    let result = async {
        ok("registerOffloadDevice", c.register_offload_device(full.clone()).await)?;
        let l = ok("getRegisteredOffloadDevices", c.get_registered_offload_devices(Empty {}).await)?;
        let listed = l.devices.iter().find(|d| d.name == full.name).cloned();
        ensure_eq!(listed, Some(full.clone()), "the description listed");
        let a = ok(
            "activateOffload",
            c.activate_offload(DeviceDescription { name: full.name.clone(), ..Default::default() }).await,
        )?;
        ensure_eq!(a.device, Some(full.clone()), "the description activateOffload answers (asked by name only)");
        Ok(())
    }
    .await;
    tidy(&mut c, &["full"]).await;
    result
}
