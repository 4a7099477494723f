//! virtio-crypto (device id 20): the parts of the driver that are pure logic.
//!
//! - [`wire`]: numbers from the spec and builders for the exact bytes put on the virtqueues.
//! - [`config`]: the device configuration space and capability masks, printable without
//!   allocation.
//! - [`status`]: device status codes and their mapping onto [`crate::error::Error`].
//!
//! Invariants shared by the submodules: only the legacy (no `VIRTIO_CRYPTO_F_REVISION_1`)
//! request layout is produced, every field is little endian, and every byte not named by a
//! field is zero. Nothing here touches memory the device owns; the caller copies the built
//! arrays into DMA buffers.

pub mod config;
pub mod device;
#[cfg(test)]
mod fake;
pub mod queue;
#[cfg(test)]
mod queue_tests;
pub mod routing;
pub mod status;
pub mod wire;

pub use config::{CONFIG_LEN, CryptoConfig, MaskNames};
pub use status::{DeviceStatus, RequestKind, status_to_result};
