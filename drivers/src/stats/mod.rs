//! Measurement helpers shared by the self-tests and the benchmarks.

pub mod histogram;

pub use histogram::Log2Histogram;
