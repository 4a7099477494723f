//! virtio: the PCI transport and the crypto device driver built on it.

pub mod crypto;
pub mod pci;
