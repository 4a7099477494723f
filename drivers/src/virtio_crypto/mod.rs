//! virtio-crypto (device id 20): the driver's logic, host-testable.
//!
//! By role:
//! - [`device`]: a device and its queues, run-time switches, readiness and needs-reset handling.
//! - [`lifecycle`]: the device state (running, needs reset, resetting, failed) and generation.
//! - [`queue`]: one virtqueue (ring, lock discipline, in-flight table by token, drain).
//! - [`slots`]: each queue's preallocated request memory, by slot.
//! - [`request`]: the request engine's builder and owned request, waiting and callbacks.
//! - [`session`]: sessions on the control queue, generic over services.
//! - [`cipher`]: the cipher service's API (validation, request layout, output).
//! - [`akcipher`]: the akcipher service (RSA): keys, request layout, and the checks every
//!   device answer goes through.
//! - [`wire`]: numbers from the spec and builders for the exact bytes put on the virtqueues.
//! - [`config`]: the device configuration space and capability masks, printable without
//!   allocation.
//! - [`status`]: device status codes and their mapping onto [`crate::error::Error`].
//!
//! Invariants shared by the submodules: only the legacy (no `VIRTIO_CRYPTO_F_REVISION_1`)
//! request layout is produced, every field is little endian, and every byte not named by a
//! field is zero. Request memory is the queues' own preallocated DMA memory (`slots`), touched by
//! the CPU only while the device does not own it.

pub mod akcipher;
#[cfg(test)]
mod answers_tests;
pub mod cipher;
pub mod config;
pub mod device;
#[cfg(test)]
pub(crate) mod fake;
pub mod lifecycle;
#[cfg(test)]
mod lifecycle_props;
#[cfg(test)]
mod notify_tests;
pub mod queue;
#[cfg(test)]
mod queue_tests;
pub mod request;
#[cfg(test)]
mod reset_tests;
pub mod ring;
pub mod routing;
pub mod session;
pub mod slots;
pub mod status;
pub mod wire;

pub use config::{CONFIG_LEN, CryptoConfig, MaskNames};
pub use status::{DeviceStatus, RequestKind, status_to_result};
