//! OpenOffload on the wire.
//!
//! - [`openoffload`]: code generated from the project's own `.proto` files for the three
//!   flavours in the field. `v1` (`/openoffload.v1.SessionTable/addSession`, ...), `v2`
//!   (`/openoffload.v2.SessionTable/AddSession`, ...) and `v1alpha5` (Activation, plus a
//!   SessionTable identical to v1). All three share one set of Rust message types (those of
//!   `v1`): the messages are byte-identical on the wire, only the method paths differ.
//! - [`domain`]: the validated values the rest of the project works with.
//! - [`convert`]: the one conversion layer between the wire messages and the domain values.
//! - [`client`]: a SessionTable client that speaks either flavour.
//! - [`raw`]: calls with raw message bytes, for bad-input checks.
//! - [`introspect`]: gRPC server reflection (v1 and v1alpha) and health, which the device and
//!   the VNF serve so grpcurl-style tools can list and call them.

pub mod client;
pub mod codec;
pub mod convert;
pub mod domain;
pub mod introspect;
pub mod raw;

/// Generated code, one module per proto package.
#[allow(non_camel_case_types, clippy::all)]
pub mod openoffload {
    pub mod v1 {
        tonic::include_proto!("openoffload.v1");
    }
    pub mod v2 {
        tonic::include_proto!("openoffload.v2");
    }
    pub mod v1alpha5 {
        tonic::include_proto!("openoffload.v1alpha5");
    }
}

pub use openoffload::v1 as wire;
