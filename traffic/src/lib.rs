//! opof-traffic: what drives simulations and benchmarks.
//!
//! - [`capture`]: pcap and pcapng read and write (Ethernet, nanosecond timestamps), with clear
//!   errors for bad files.
//! - [`gen`]: the flow generator (`opof gen`): TCP and UDP flows, IPv4 and IPv6, VLAN tags,
//!   fixed or IMIX sizes, reproducible from a seed, with its ground truth.
//! - [`flows`]: the per-flow account of a capture (what the ground truth must equal).
//! - [`offload`]: checksum completion and segmentation of the super-frames Linux hosts hand
//!   an interface with default offloads (what the device does as "the hardware").
//! - [`port`]: ports frames go out of: the in-memory wire, and UDP wire, TAP and AF_PACKET
//!   through io_uring.
//! - [`replay`]: the replayer (`opof replay`): real time with a speed factor, as fast as
//!   possible, or virtual time; loops; a record of what was sent.

pub mod capture;
pub mod flows;
pub mod gen;
pub mod offload;
pub mod port;
pub mod replay;
