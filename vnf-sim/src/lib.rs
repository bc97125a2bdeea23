//! opof-vnf: the simulated VNF.
//!
//! - [`activation`]: the Activation service the VNF serves (`openoffload.v1alpha5.Activation`):
//!   devices register, the operator activates at most one.
//!
//! Still to come (the VNF-simulator issue): the VNF's flow table and policy, offloading to the
//! activated device, the closed-session listener, and `opof simulate` / `opof vnf`.

pub mod activation;
