//! vcrypt driver core: everything here is `no_std` and builds for the host too, so its logic is
//! covered by `cargo hosttest`.
#![no_std]

extern crate alloc;

#[cfg(test)]
extern crate std;

pub mod cmdline;
pub mod crypto;
pub mod error;
pub mod service;
pub mod stats;
pub mod stream;
pub mod switches;
pub mod sync;
pub mod virtio_crypto;
