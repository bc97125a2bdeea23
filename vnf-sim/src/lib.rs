//! opof-vnf: the simulated VNF (Activation server, flow table, offload policy, closed-session
//! listener).
//!
//! Not built yet: this crate is an empty placeholder in the workspace layout, and the `opof`
//! command has no subcommand that uses it. The VNF-simulator issue fills it.
