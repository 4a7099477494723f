//! The virtio-crypto driver: probe now; queues, sessions and requests follow.

pub mod probe;

pub use probe::probe_all;
