//! The Activation service of the VNF: devices register their description, the operator
//! activates one. The rules (SEMANTICS.md, "Activation"):
//!
//! - a device is known by its `name` (non-empty); registering a known name again replaces its
//!   description (a device that restarted registers anew);
//! - at most one device is active: activating another while one is active is refused with
//!   FAILED_PRECONDITION; activating an unregistered name with NOT_FOUND; activating the active
//!   device again answers `_DEVICE_ACTIVATED` (the call is idempotent);
//! - deactivating the active device answers `_DEVICE_DEACTIVATED`; any other registered device,
//!   FAILED_PRECONDITION; an unregistered name, NOT_FOUND;
//! - deregistering the active device deactivates it first;
//! - getActivatedOffload answers the active device's description, or an empty description (no
//!   name) when none is active — the historic clients print the answer and do not expect an
//!   error;
//! - answers carry the description as registered, extension fields included;
//! - bounds: at most [`Limits::devices`] names (RESOURCE_EXHAUSTED beyond), a CA of at most
//!   [`Limits::ca_bytes`] and a name or endpoint of at most 1 KiB (INVALID_ARGUMENT beyond);
//! - with mutual TLS (`opof vnf --tls-dir`), only clients with a certificate from the VNF's CA
//!   get in at all, and a name belongs to the certificate that registered it first: registering
//!   or deregistering that name with another certificate is PERMISSION_DENIED.
//!
//! [`Registry`] holds the rules with no I/O; [`ActivationService`] is the gRPC shell.

use std::sync::Arc;

use opof_proto::openoffload::v1alpha5::{
    activation_server, ActivationStatus, ActivationStatusType, DeviceDescription, DeviceList, Empty,
    RegistrationStatus, RegistrationStatusType,
};
use parking_lot::Mutex;
use tonic::{Request, Response, Status};
use tracing::info;

/// A defect the registry can be told to have, to prove the ACT cases catch it (testing only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationFault {
    /// A second device can be activated while one is active (the new one replaces it).
    SecondActivationAllowed,
    /// Deregistering the active device leaves it active.
    DeregisterKeepsActive,
}

impl std::str::FromStr for ActivationFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "second-activation-allowed" => Ok(ActivationFault::SecondActivationAllowed),
            "deregister-keeps-active" => Ok(ActivationFault::DeregisterKeepsActive),
            _ => Err(format!(
                "unknown Activation fault {s:?}; known: second-activation-allowed, deregister-keeps-active"
            )),
        }
    }
}

/// How much the registry holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Registered devices.
    pub devices: usize,
    /// Bytes of a registered CA certificate (PEM).
    pub ca_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { devices: 64, ca_bytes: 64 * 1024 }
    }
}

/// Longest name or endpoint a description may carry.
const MAX_FIELD: usize = 1024;

/// Registrations and deregistrations the registry refused, by bound (a count each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Refusals {
    /// The registry held [`Limits::devices`] names already.
    pub full: u64,
    /// A CA certificate, name, endpoint or description over its limit.
    pub too_big: u64,
    /// A name registered by another client certificate, or by an authenticated registrant.
    pub not_owner: u64,
}

/// Registered devices, in order of first registration, and which one is active.
#[derive(Default, Debug)]
pub struct Registry {
    devices: Vec<DeviceDescription>,
    /// The client certificate (DER) each name was first registered with, under mutual TLS.
    owners: std::collections::HashMap<String, Vec<u8>>,
    active: Option<String>,
    fault: Option<ActivationFault>,
    limits: Limits,
    refused: Refusals,
}

impl Registry {
    /// A registry that imitates `fault`.
    pub fn with_fault(fault: Option<ActivationFault>) -> Self {
        Registry { fault, ..Registry::default() }
    }

    /// A registry with these bounds.
    pub fn with_limits(limits: Limits) -> Self {
        Registry { limits, ..Registry::default() }
    }

    /// Refuses a caller that is not the owner of `name` (when the name has one and the caller
    /// is known: mutual TLS).
    fn check_owner(&mut self, name: &str, caller: Option<&[u8]>, what: &str) -> Result<(), Status> {
        let r = match (self.owners.get(name), caller) {
            (Some(owner), Some(c)) if owner.as_slice() != c => Err(Status::permission_denied(format!(
                "{what}: device {name:?} was registered with another client certificate"
            ))),
            (Some(_), None) => Err(Status::permission_denied(format!(
                "{what}: device {name:?} belongs to an authenticated registrant"
            ))),
            _ => Ok(()),
        };
        if r.is_err() {
            self.refused.not_owner += 1;
        }
        r
    }

    /// What the registry refused so far, by bound.
    pub fn refusals(&self) -> Refusals {
        self.refused
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.name == name)
    }

    fn named<'a>(d: &'a DeviceDescription, what: &str) -> Result<&'a str, Status> {
        if d.name.is_empty() {
            Err(Status::invalid_argument(format!("{what}: the device description has no name")))
        } else {
            Ok(&d.name)
        }
    }

    pub fn register(&mut self, d: DeviceDescription) -> Result<RegistrationStatusType, Status> {
        self.register_as(d, None)
    }

    /// Registers `d` for the client presenting certificate `caller` (DER; `None` without
    /// mutual TLS).
    pub fn register_as(
        &mut self,
        d: DeviceDescription,
        caller: Option<&[u8]>,
    ) -> Result<RegistrationStatusType, Status> {
        let name = Self::named(&d, "registerOffloadDevice")?.to_string();
        if name.len() > MAX_FIELD || d.session_table_endpoint.len() > MAX_FIELD || d.description.len() > MAX_FIELD {
            self.refused.too_big += 1;
            return Err(Status::invalid_argument(format!(
                "registerOffloadDevice: name, description and endpoint are limited to {MAX_FIELD} bytes"
            )));
        }
        if d.ca_certificate_pem.len() > self.limits.ca_bytes {
            self.refused.too_big += 1;
            return Err(Status::invalid_argument(format!(
                "registerOffloadDevice: the CA certificate is {} bytes; at most {} are accepted",
                d.ca_certificate_pem.len(),
                self.limits.ca_bytes
            )));
        }
        self.check_owner(&name, caller, "registerOffloadDevice")?;
        match self.index(&name) {
            Some(i) => self.devices[i] = d,
            None if self.devices.len() >= self.limits.devices => {
                self.refused.full += 1;
                return Err(Status::resource_exhausted(format!(
                    "registerOffloadDevice: {} devices are registered, the most this VNF holds",
                    self.devices.len()
                )));
            }
            None => self.devices.push(d),
        }
        if let Some(c) = caller {
            self.owners.entry(name.clone()).or_insert_with(|| c.to_vec());
        }
        info!(device = %name, "device registered");
        Ok(RegistrationStatusType::DeviceRegistered)
    }

    pub fn deregister(&mut self, d: &DeviceDescription) -> Result<RegistrationStatusType, Status> {
        self.deregister_as(d, None)
    }

    /// Deregisters `d` for the client presenting certificate `caller` (see [`Self::register_as`]).
    pub fn deregister_as(
        &mut self,
        d: &DeviceDescription,
        caller: Option<&[u8]>,
    ) -> Result<RegistrationStatusType, Status> {
        let name = Self::named(d, "deregisterOffloadDevice")?;
        self.check_owner(name, caller, "deregisterOffloadDevice")?;
        let i = self.index(name).ok_or_else(|| {
            Status::not_found(format!("deregisterOffloadDevice: no device named {name:?} is registered"))
        })?;
        if self.active.as_deref() == Some(name) && self.fault != Some(ActivationFault::DeregisterKeepsActive) {
            self.active = None;
            info!(device = %name, "active device deregistered: deactivated first");
        }
        self.devices.remove(i);
        self.owners.remove(name);
        Ok(RegistrationStatusType::DeviceDeregistered)
    }

    pub fn list(&self) -> Vec<DeviceDescription> {
        self.devices.clone()
    }

    pub fn activate(&mut self, d: &DeviceDescription) -> Result<DeviceDescription, Status> {
        let name = Self::named(d, "activateOffload")?;
        let i = self
            .index(name)
            .ok_or_else(|| Status::not_found(format!("activateOffload: no device named {name:?} is registered")))?;
        match self.active.as_deref() {
            Some(a) if a != name && self.fault != Some(ActivationFault::SecondActivationAllowed) => {
                Err(Status::failed_precondition(format!(
                    "activateOffload: device {a:?} is active; deactivate it before activating {name:?}"
                )))
            }
            _ => {
                self.active = Some(name.to_string());
                info!(device = %name, "device activated");
                Ok(self.devices[i].clone())
            }
        }
    }

    pub fn deactivate(&mut self, d: &DeviceDescription) -> Result<DeviceDescription, Status> {
        let name = Self::named(d, "deactivateOffload")?;
        let i = self
            .index(name)
            .ok_or_else(|| Status::not_found(format!("deactivateOffload: no device named {name:?} is registered")))?;
        if self.active.as_deref() != Some(name) {
            return Err(Status::failed_precondition(format!("deactivateOffload: device {name:?} is not active")));
        }
        self.active = None;
        info!(device = %name, "device deactivated");
        Ok(self.devices[i].clone())
    }

    /// The active device's description, if one is active.
    pub fn active(&self) -> Option<DeviceDescription> {
        let a = self.active.as_deref()?;
        // Only a defective registry keeps a deregistered device active: it then still answers
        // with the name it had.
        Some(
            self.index(a).map_or_else(
                || DeviceDescription { name: a.into(), ..Default::default() },
                |i| self.devices[i].clone(),
            ),
        )
    }
}

/// The gRPC Activation service over a shared [`Registry`].
#[derive(Clone, Default)]
pub struct ActivationService {
    registry: Arc<Mutex<Registry>>,
}

impl ActivationService {
    pub fn new(registry: Arc<Mutex<Registry>>) -> Self {
        ActivationService { registry }
    }

    pub fn registry(&self) -> &Arc<Mutex<Registry>> {
        &self.registry
    }

    pub fn into_server(self) -> activation_server::ActivationServer<Self> {
        activation_server::ActivationServer::new(self)
    }
}

/// The client's certificate (DER), when the connection is mutual TLS.
fn client_certificate<T>(request: &Request<T>) -> Option<Vec<u8>> {
    request.peer_certs().and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()))
}

fn registration(s: RegistrationStatusType) -> Response<RegistrationStatus> {
    Response::new(RegistrationStatus { status: s as i32 })
}

fn activation(s: ActivationStatusType, d: DeviceDescription) -> Response<ActivationStatus> {
    Response::new(ActivationStatus { status: s as i32, device: Some(d) })
}

#[tonic::async_trait]
impl activation_server::Activation for ActivationService {
    async fn register_offload_device(
        &self,
        request: Request<DeviceDescription>,
    ) -> Result<Response<RegistrationStatus>, Status> {
        let caller = client_certificate(&request);
        self.registry.lock().register_as(request.into_inner(), caller.as_deref()).map(registration)
    }

    async fn deregister_offload_device(
        &self,
        request: Request<DeviceDescription>,
    ) -> Result<Response<RegistrationStatus>, Status> {
        let caller = client_certificate(&request);
        self.registry.lock().deregister_as(request.get_ref(), caller.as_deref()).map(registration)
    }

    async fn get_registered_offload_devices(&self, _: Request<Empty>) -> Result<Response<DeviceList>, Status> {
        Ok(Response::new(DeviceList { devices: self.registry.lock().list() }))
    }

    async fn activate_offload(
        &self,
        request: Request<DeviceDescription>,
    ) -> Result<Response<ActivationStatus>, Status> {
        let d = self.registry.lock().activate(request.get_ref())?;
        Ok(activation(ActivationStatusType::DeviceActivated, d))
    }

    async fn deactivate_offload(
        &self,
        request: Request<DeviceDescription>,
    ) -> Result<Response<ActivationStatus>, Status> {
        let d = self.registry.lock().deactivate(request.get_ref())?;
        Ok(activation(ActivationStatusType::DeviceDeactivated, d))
    }

    async fn get_activated_offload(&self, _: Request<Empty>) -> Result<Response<DeviceDescription>, Status> {
        Ok(Response::new(self.registry.lock().active().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn dev(name: &str) -> DeviceDescription {
        DeviceDescription { name: name.into(), session_capacity: 1000, ..Default::default() }
    }

    #[test]
    fn one_active_device_at_most() {
        let mut r = Registry::default();
        r.register(dev("a")).unwrap();
        r.register(dev("b")).unwrap();
        assert_eq!(r.activate(&dev("a")).unwrap().name, "a");
        assert_eq!(r.activate(&dev("a")).unwrap().name, "a", "activating the active one again is fine");
        assert_eq!(r.activate(&dev("b")).unwrap_err().code(), Code::FailedPrecondition);
        assert_eq!(r.activate(&dev("c")).unwrap_err().code(), Code::NotFound);
        assert_eq!(r.deactivate(&dev("b")).unwrap_err().code(), Code::FailedPrecondition);
        r.deactivate(&dev("a")).unwrap();
        assert_eq!(r.active(), None);
        r.activate(&dev("b")).unwrap();
        assert_eq!(r.active().unwrap().name, "b");
    }

    #[test]
    fn deregistering_the_active_device_deactivates_it() {
        let mut r = Registry::default();
        r.register(dev("a")).unwrap();
        r.activate(&dev("a")).unwrap();
        r.deregister(&dev("a")).unwrap();
        assert_eq!(r.active(), None);
        assert!(r.list().is_empty());
        assert_eq!(r.deregister(&dev("a")).unwrap_err().code(), Code::NotFound);
    }

    #[test]
    fn a_name_belongs_to_the_certificate_that_registered_it() {
        let mut r = Registry::default();
        let (owner, other): (&[u8], &[u8]) = (b"cert-a", b"cert-b");
        r.register_as(dev("a"), Some(owner)).unwrap();
        assert_eq!(r.register_as(dev("a"), Some(other)).unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(r.register_as(dev("a"), None).unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(r.deregister_as(&dev("a"), Some(other)).unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(r.refusals(), Refusals { not_owner: 3, ..Refusals::default() });
        r.register_as(dev("a"), Some(owner)).unwrap();
        r.deregister_as(&dev("a"), Some(owner)).unwrap();
        // Once deregistered, the name is free again.
        r.register_as(dev("a"), Some(other)).unwrap();
    }

    #[test]
    fn the_registry_is_bounded() {
        let mut r = Registry::with_limits(Limits { devices: 2, ca_bytes: 10 });
        r.register(dev("a")).unwrap();
        r.register(dev("b")).unwrap();
        r.register(dev("a")).unwrap(); // a known name replaces its description
        assert_eq!(r.register(dev("c")).unwrap_err().code(), Code::ResourceExhausted);
        let mut big = dev("a");
        big.ca_certificate_pem = "x".repeat(11);
        assert_eq!(r.register(big).unwrap_err().code(), Code::InvalidArgument);
        let long = dev(&"n".repeat(2000));
        assert_eq!(r.register(long).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(r.list().len(), 2);
        assert_eq!(r.refusals(), Refusals { full: 1, too_big: 2, not_owner: 0 });
    }

    #[test]
    fn re_registration_replaces_the_description_and_names_are_required() {
        let mut r = Registry::default();
        r.register(dev("a")).unwrap();
        let mut again = dev("a");
        again.session_capacity = 2000;
        again.session_table_endpoint = "https://10.0.0.5:50151".into();
        r.register(again.clone()).unwrap();
        assert_eq!(r.list(), vec![again]);
        assert_eq!(r.register(dev("")).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(r.activate(&dev("")).unwrap_err().code(), Code::InvalidArgument);
    }
}
