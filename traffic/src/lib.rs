//! opof-traffic: pcap/pcapng I/O, the synthetic traffic generator and the replayer.
//!
//! Not built yet: this crate is an empty placeholder in the workspace layout, and the `opof`
//! command has no subcommand that uses it. The traffic issue fills it.
