//! opof-conformance: SPEC.md (drafted: `conformance/SPEC.md`), the conformance cases, the runner,
//! targets and reports.
//!
//! Not built yet: this crate is an empty placeholder in the workspace layout, and the `opof`
//! command has no `certify` subcommand yet. The conformance-suite issue fills it. Until then,
//! the rules of the reference profile are checked by the device's own tests
//! (`device/tests/`, `device/src/table/model_tests.rs`).
