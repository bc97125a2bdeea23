//! The datapath's pure core (frame in, decision out); the io_uring port loops will be thin
//! shells around it.
//!
//! - [`parse`]: an Ethernet frame to its session key, or the reason it takes the miss path.
//!
//! Still to come (the datapath issue): the verdict (table lookup in both directions, actions,
//! counters without a lock per packet), GRE copies for MIRROR and SNOOP, TCP close detection,
//! and the port loops.

pub mod parse;
