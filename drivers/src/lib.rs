//! vcrypt driver core: everything here is `no_std` and builds for the host too, so its logic is
//! covered by `cargo hosttest`.
#![no_std]

pub mod sync;
