//! opof-traffic: what drives simulations and benchmarks.
//!
//! - [`capture`]: pcap and pcapng read and write (Ethernet, nanosecond timestamps), with clear
//!   errors for bad files.
//! - [`gen`]: the flow generator (`opof gen`): TCP and UDP flows, IPv4 and IPv6, VLAN tags,
//!   fixed or IMIX sizes, reproducible from a seed, with its ground truth.
//! - [`flows`]: the per-flow account of a capture (what the ground truth must equal).
//!
//! Still to come (the traffic issue): the replayer (`opof replay`) over the port backends, and
//! the sample captures of `pcaps/`.

pub mod capture;
pub mod flows;
pub mod gen;
