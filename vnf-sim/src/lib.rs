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
//! - [`offload`]: the VNF talking to the activated device over gRPC: mutual TLS with the CA the
//!   device registered, reconciliation with getAllSessions, follow-mode closed sessions,
//!   batched addSession streams, reconnection with back-off (`opof vnf`).
//! - [`operator`]: the operator's client of the Activation service (`opof activation`).

pub mod activation;
pub mod offload;
pub mod operator;
pub mod policy;
pub mod sim;
pub mod vnf;
