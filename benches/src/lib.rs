//! Benchmarks and load generators of the toolkit. [`load`] holds `opof bench`: load generators
//! usable against any SessionTable endpoint, and an in-process measurement of table memory.

pub mod load;
pub mod workload;
