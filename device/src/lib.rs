//! The OpenOffload reference device (a software SmartNIC).
//!
//! - [`table`]: the session table, a sans-IO core: requests and a clock in, decisions out.
//! - [`clock`]: the one clock abstraction (monotonic real time, or virtual time).
//! - [`datapath`]: the datapath: a pure decision per frame, the in-memory wire and io_uring ports.
//! - [`control`]: the gRPC SessionTable server, all flavours over one backend.
//! - [`conn`]: the server's accept loop and connection tracking (closed-record delivery).
//! - [`tls`]: PEM loading and generation of a CA, server and client certificates.
//! - [`faults`]: named defects the device can be told to have, to prove the conformance suite
//!   catches them.

pub mod clock;
pub mod conn;
pub mod control;
pub mod datapath;
pub mod faults;
pub mod register;
pub mod table;
pub mod tls;
