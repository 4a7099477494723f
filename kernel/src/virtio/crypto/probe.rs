//! Finding and initialising virtio-crypto devices: reset, feature negotiation, configuration,
//! MSI-X capability, and one inventory line per device.
//!
//! Features taken: VIRTIO_F_VERSION_1 (modern interface; required) and VIRTIO_RING_F_EVENT_IDX
//! unless `event_idx=off` (doorbells and interrupts suppressed by ring indices; the driver makes
//! the need-event check itself, mod 2^16, because virtio-drivers 0.13's is not wrap-safe: see
//! `vcrypt_drivers::virtio_crypto::ring::need_event`), and VIRTIO_F_ACCESS_PLATFORM when the
//! device offers it (virtio 1.2, 6.1: every address the driver gives the device is then an I/O
//! virtual address of the platform's IOMMU; the kernel's DMA interface, `mm::dma::KernelHal`,
//! hands out only addresses it mapped in the VT-d domain, see `mm::iommu`). Declined:
//! - INDIRECT_DESC: needs virtio-drivers' `alloc` feature (an allocation per request); a request
//!   here is at most 4 descriptors, and the rings have 1024.
//! - RING_RESET: the driver never resets a single queue.
//! - REVISION_1 (crypto): neither QEMU nor Linux use it; requests keep the 72-byte layout.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use vcrypt_drivers::sync::SpinLock;
use vcrypt_drivers::virtio_crypto::config::{self, CryptoConfig};
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};

use crate::pci::PciDevice;
use crate::pci::msix::Msix;
use crate::println;
use crate::virtio::pci::VirtioPciTransport;

pub const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) virtio-crypto: 0x1040 + device type 20.
pub const VIRTIO_CRYPTO_DEVICE_ID: u16 = 0x1054;
/// VIRTIO_F_VERSION_1.
pub const FEATURE_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX.
pub const FEATURE_EVENT_IDX: u64 = 1 << 29;

/// VIRTIO_F_ACCESS_PLATFORM: the device's accesses go through the platform's IOMMU.
pub const FEATURE_ACCESS_PLATFORM: u64 = 1 << 33;

/// The features the driver accepts (see the module documentation): with or without EVENT_IDX
/// (the `event_idx` switch). ACCESS_PLATFORM is always accepted when offered: the addresses
/// the kernel's DMA interface hands out are I/O virtual addresses (with translation on, mapped
/// for the device; with it off, equal to the physical ones).
pub fn driver_features(event_idx: bool) -> u64 {
    FEATURE_VERSION_1 | FEATURE_ACCESS_PLATFORM | if event_idx { FEATURE_EVENT_IDX } else { 0 }
}

/// A virtio-crypto device after probing: features negotiated (FEATURES_OK), queues not yet set up.
pub struct ProbedDevice {
    pub pci: PciDevice,
    pub transport: VirtioPciTransport,
    pub msix: Option<Msix>,
    pub features: u64,
    pub config: CryptoConfig,
    pub queue_sizes: Vec<u16>,
}

/// Whether `device` is a virtio-crypto PCI function.
pub fn is_virtio_crypto(device: &PciDevice) -> bool {
    device.vendor_id == VIRTIO_VENDOR_ID && device.device_id == VIRTIO_CRYPTO_DEVICE_ID
}

/// Reads the device configuration, consistently (config generation unchanged across the read).
pub fn read_config(transport: &VirtioPciTransport) -> Result<CryptoConfig, String> {
    let bytes = transport
        .read_consistent(|| transport.read_config_space::<[u8; config::CONFIG_LEN]>(0))
        .map_err(|e| format!("device configuration unreadable: {e}"))?;
    CryptoConfig::from_bytes(&bytes).ok_or_else(|| String::from("device configuration too short"))
}

/// Resets the device, negotiates features (of `wanted`) and reads its configuration.
pub fn probe(pci: &PciDevice, wanted: u64) -> Result<ProbedDevice, String> {
    for (i, bar) in pci
        .bars
        .iter()
        .enumerate()
        .filter_map(|(i, b)| Some((i, b.as_ref()?)))
    {
        log::debug!("virtio-crypto {}: BAR{i} {bar:x?}", pci.address);
    }
    let msix = Msix::probe(pci).ok();
    pci.enable();
    let mut transport = VirtioPciTransport::new(pci, DeviceType::Crypto)
        .map_err(|e| format!("virtio PCI capabilities: {e}"))?;
    transport.reset();
    let features = negotiate(&mut transport, wanted)?;
    let config = read_config(&transport)?;
    let queue_sizes = (0..transport.num_queues())
        .map(|q| transport.max_queue_size(q) as u16)
        .collect();
    Ok(ProbedDevice {
        pci: pci.clone(),
        transport,
        msix,
        features,
        config,
        queue_sizes,
    })
}

/// From a reset device: ACKNOWLEDGE | DRIVER, the features of `wanted` it offers, FEATURES_OK
/// read back (at probe and again by recovery after every reset). Returns the features.
pub fn negotiate(transport: &mut VirtioPciTransport, wanted: u64) -> Result<u64, String> {
    transport.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    let offered = transport.read_device_features();
    if offered & FEATURE_VERSION_1 == 0 {
        return Err(format!(
            "device does not offer VIRTIO_F_VERSION_1 (features {offered:#x})"
        ));
    }
    let features = offered & wanted;
    transport.write_driver_features(features);
    transport
        .set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    if !transport.get_status().contains(DeviceStatus::FEATURES_OK) {
        transport.set_status(DeviceStatus::FAILED);
        return Err(format!("device refused features {features:#x}"));
    }
    Ok(features)
}

/// Prints one inventory line for a probed device.
pub fn print_inventory(device: &ProbedDevice) {
    let c = &device.config;
    let queues: Vec<String> = device.queue_sizes.iter().map(|s| format!("{s}")).collect();
    println!(
        "virtio-crypto {}: services {} | cipher {} | hash {} | mac {} | aead {} | akcipher {} | \
         max_dataqueues {} | max_cipher_key_len {} | max_size {} | queue sizes [{}] | msix vectors {} | \
         notifications by {}",
        device.pci.address,
        c.services(),
        c.ciphers(),
        c.hashes(),
        c.macs(),
        c.aeads(),
        c.akciphers(),
        c.max_dataqueues,
        c.max_cipher_key_len,
        c.max_size,
        queues.join(" "),
        device.msix.as_ref().map_or(0, |m| m.table_size()),
        if device.features & FEATURE_EVENT_IDX != 0 {
            "ring index (EVENT_IDX)"
        } else {
            "flags (no EVENT_IDX)"
        },
    );
    if device.features & FEATURE_ACCESS_PLATFORM != 0 {
        println!(
            "virtio-crypto {}: VIRTIO_F_ACCESS_PLATFORM: DMA through the IOMMU ({})",
            device.pci.address,
            crate::mm::iommu::describe()
        );
    }
}

static PROBED: spin::Once<Vec<SpinLock<ProbedDevice>>> = spin::Once::new();

/// The devices `probe_all` found (empty before it ran).
pub fn probed() -> &'static [SpinLock<ProbedDevice>] {
    PROBED.get().map_or(&[], |v| v.as_slice())
}

/// Probes every virtio-crypto function in `devices`, taking the features of `wanted` each offers
/// ([`driver_features`]), printing an inventory line for each and a clear line for each that
/// fails. Returns how many probed; `probed()` lists them.
pub fn probe_all(devices: &[PciDevice], wanted: u64) -> usize {
    let mut probed = Vec::new();
    for pci in devices.iter().filter(|d| is_virtio_crypto(d)) {
        match probe(pci, wanted) {
            Ok(device) => {
                log::debug!(
                    "virtio-crypto {}: negotiated features {:#x}",
                    device.pci.address,
                    device.features
                );
                print_inventory(&device);
                probed.push(SpinLock::new("virtio-crypto-probe", device));
            }
            Err(e) => println!("virtio-crypto {}: probe failed: {e}", pci.address),
        }
    }
    PROBED.call_once(|| probed).len()
}
