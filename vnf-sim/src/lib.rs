//! opof-vnf: the simulated VNF.
//!
//! - [`activation`]: the Activation service the VNF serves (`openoffload.v1alpha5.Activation`):
//!   devices register, the operator activates at most one.
//!
//! - [`policy`]: the VNF's policy (TOML): per flow, an action, an offload trigger, a timeout.
//! - [`vnf`]: the VNF's own datapath and flow table, sans-IO: frames in, verdicts and
//!   addSession requests out; closed records fold the device's counters into the flows.
//! - [`sim`]: `opof simulate`: device, VNF and replayer in one process on the in-memory wire,
//!   in virtual time, with the conservation check against the capture.
//!
//! Still to come (the VNF-simulator issue): the registration client in the device, the VNF
//! talking to an activated device over gRPC (follow-mode closed sessions, reconnection), and
//! `opof vnf` with real ports.

pub mod activation;
pub mod offload;
pub mod policy;
pub mod sim;
pub mod vnf;
