//! opof-conformance: the OpenOffload conformance suite.
//!
//! - `SPEC.md` (next to this crate's Cargo.toml): the numbered clauses.
//! - [`cases`]: one or more cases per clause, as data (id, clause, title, procedure, expected
//!   result) plus the code that checks.
//! - [`verdict`]: PASS, NON-STRICT, FAIL, SKIP, ERROR; profiles of known field variants.
//! - [`target`]: what is certified — `embedded`, `endpoint` or `image` — chosen at run time.
//! - [`ctx`]: what a case works with; [`runner`]: runs cases and cleans up after each;
//!   [`report`]: report.json, junit.xml, report.md and the summary table.
//! - [`harness`]: `cargo test -p opof-conformance` (libtest-mimic); `opof certify` uses
//!   [`runner::certify`].
//! - [`image`]: builds a Docker image of the reference device from a binary, without a registry.

pub mod cases;
pub mod ctx;
pub mod diagnose;
pub mod frames;
pub mod harness;
pub mod image;
mod rawh2;
pub mod report;
pub mod runner;
pub mod target;
pub mod traffic;
pub mod verdict;

pub use opof_device::faults::Fault;
