//! PCI and virtio-crypto probe tests against the real device.

use alloc::vec::Vec;

use vcrypt_drivers::virtio_crypto::wire;

use super::TestResult;
use crate::arch::apic;
use crate::ensure;
use crate::pci::{self, Bar};
use crate::virtio::crypto::probe::{self, VIRTIO_CRYPTO_DEVICE_ID, VIRTIO_VENDOR_ID};

/// A fresh enumeration finds as many virtio-crypto functions as the probe did, each with the
/// modern IDs, revision >= 1, a memory BAR and bus mastering on.
pub fn finds_virtio_crypto_with_expected_ids() -> TestResult {
    let found: Vec<_> = pci::enumerate()
        .into_iter()
        .filter(probe::is_virtio_crypto)
        .collect();
    ensure!(!found.is_empty(), "no virtio-crypto function on any bus");
    ensure!(
        found.len() == probe::probed().len(),
        "{} virtio-crypto functions on the bus, {} probed",
        found.len(),
        probe::probed().len()
    );
    for d in &found {
        ensure!(
            d.vendor_id == VIRTIO_VENDOR_ID && d.device_id == VIRTIO_CRYPTO_DEVICE_ID,
            "{}: ids",
            d.address
        );
        let revision = d.address.read8(0x08);
        ensure!(
            revision >= 1,
            "{}: revision {revision}, a modern device has >= 1",
            d.address
        );
        let subsystem = d.address.read16(0x2e);
        ensure!(
            subsystem >= 0x40,
            "{}: subsystem id {subsystem:#x} (modern devices use >= 0x40)",
            d.address
        );
        ensure!(
            d.bars
                .iter()
                .flatten()
                .any(|b| matches!(b, Bar::Memory { size, .. } if *size >= 0x1000)),
            "{}: no memory BAR",
            d.address
        );
        ensure!(
            d.bus_master_enabled(),
            "{}: bus mastering is off after the probe",
            d.address
        );
    }
    Ok(())
}

/// Re-reading each device's configuration gives what the probe read, and it is plausible for
/// this device: ready, cipher service with AES-CBC, one queue per data queue plus control.
pub fn virtio_crypto_config_reads_back_consistently() -> TestResult {
    ensure!(!probe::probed().is_empty(), "no device probed");
    for device in probe::probed() {
        let device = device.lock();
        let at = device.pci.address;
        for _ in 0..3 {
            let again = probe::read_config(&device.transport)?;
            ensure!(
                again == device.config,
                "{at}: config changed between reads: {again:?} vs {:?}",
                device.config
            );
        }
        let c = &device.config;
        ensure!(c.hw_ready(), "{at}: status {:#x} lacks HW_READY", c.status);
        ensure!(
            c.advertises_service(wire::SERVICE_CIPHER),
            "{at}: no cipher service"
        );
        ensure!(
            c.advertises_cipher(wire::CIPHER_AES_CBC),
            "{at}: AES-CBC not advertised"
        );
        ensure!(
            c.max_dataqueues >= 1,
            "{at}: max_dataqueues {}",
            c.max_dataqueues
        );
        ensure!(
            device.queue_sizes.len() == c.max_dataqueues as usize + 1,
            "{at}: {} queues for {} data queues + control",
            device.queue_sizes.len(),
            c.max_dataqueues
        );
        ensure!(
            device.queue_sizes.iter().all(|s| s.is_power_of_two()),
            "{at}: queue sizes {:?} not powers of two",
            device.queue_sizes
        );
        ensure!(
            c.max_cipher_key_len >= 32,
            "{at}: max_cipher_key_len {}",
            c.max_cipher_key_len
        );
        ensure!(c.max_size > 0, "{at}: max_size 0");
    }
    Ok(())
}

/// Every MSI-X table entry takes an address and vector, reads them back, and masks; each entry
/// is restored afterwards (the driver's interrupts go through them). MSI-X is enabled exactly
/// when the driver uses it: with 2 or more vectors (one shared by the queues when there are
/// fewer than queues + 1); with 1 the driver takes INTx and leaves MSI-X off.
/// Not applicable when no device has MSI-X (`VCRYPT_VECTORS=0`).
pub fn msix_entries_read_back() -> TestResult {
    let my_apic = apic::id();
    let with_msix = probe::probed()
        .iter()
        .filter(|d| d.lock().msix.is_some())
        .count();
    if with_msix == 0 {
        return super::not_applicable(alloc::string::String::from(
            "no device has an MSI-X capability (VCRYPT_VECTORS=0)",
        ));
    }
    for device in probe::probed() {
        let device = device.lock();
        let at = device.pci.address;
        let Some(msix) = device.msix.as_ref() else {
            continue;
        };
        ensure!(
            msix.table_size() >= 1,
            "{at}: an MSI-X table without entries"
        );
        for entry in 0..msix.table_size() {
            let original = msix.entry(entry).map_err(|e| alloc::format!("{e}"))?;
            let vector = 0x80 + entry as u8;
            msix.set_entry(entry, my_apic, vector)
                .map_err(|e| alloc::format!("{e}"))?;
            let back = msix.entry(entry).map_err(|e| alloc::format!("{e}"))?;
            let address = apic::base() | (my_apic as u64) << 12;
            ensure!(
                back.address == address && back.data == vector as u32 && !back.masked,
                "{at}: entry {entry} reads back {back:?}, wrote address {address:#x} data {vector:#x}"
            );
            msix.mask(entry).map_err(|e| alloc::format!("{e}"))?;
            ensure!(
                msix.entry(entry).map_err(|e| alloc::format!("{e}"))?.masked,
                "{at}: entry {entry} did not mask"
            );
            msix.write_entry(entry, original)
                .map_err(|e| alloc::format!("{e}"))?;
            ensure!(
                msix.entry(entry).map_err(|e| alloc::format!("{e}"))? == original,
                "{at}: entry {entry} not restored"
            );
        }
        ensure!(
            msix.entry(msix.table_size()).is_err(),
            "{at}: entry past the table was accepted"
        );
        // The driver's choice (virtio::crypto::init_device): MSI-X from 2 vectors up.
        let uses_msix = msix.table_size() >= 2;
        ensure!(
            msix.enabled(&device.pci) == uses_msix,
            "{at}: with {} MSI-X vectors, MSI-X is {} after the driver came up (expected {})",
            msix.table_size(),
            if uses_msix { "off" } else { "on" },
            if uses_msix { "on" } else { "off: INTx" }
        );
    }
    Ok(())
}

/// Moves a device's 64-bit BAR above 4 GiB (where the boot identity map does not reach), builds
/// a transport on it, and checks it reads the same device registers; then moves the BAR back.
/// The address is free: above the boot identity map, above the RAM of the memory map (RAM
/// beyond 3.5 GiB is at 4 GiB and up) and above every PCI function's BARs, aligned to the
/// BAR's size as PCI requires.
pub fn bar_above_4gib_is_mapped_and_reachable() -> TestResult {
    let bars_end = crate::pci::enumerate()
        .iter()
        .flat_map(|f| f.bars.iter().flatten())
        .map(|bar| match bar {
            Bar::Memory { address, size, .. } => address.saturating_add(*size),
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    let device = probe::probed().first().ok_or("no device probed")?.lock();
    let (index, size) = device
        .pci
        .bars
        .iter()
        .enumerate()
        .find_map(|(i, b)| match b {
            Some(Bar::Memory {
                is_64bit: true,
                size,
                ..
            }) => Some((i, *size)),
            _ => None,
        })
        .ok_or("the device has no 64-bit BAR")?;
    let align = size.max(2 << 20).next_power_of_two();
    let lowest = crate::arch::boot::BOOT_IDENTITY_MAP_END
        .max(crate::mm::ram_end())
        .max(bars_end);
    let high_base = lowest
        .checked_next_multiple_of(align)
        .ok_or("no free address above the memory map")?;
    let reg = 0x10 + 4 * index as u8;
    let at = device.pci.address;
    let (old_low, old_high) = (at.read32(reg), at.read32(reg + 4));
    let command = at.read16(0x04);
    let move_bar = |base: u64, low_flags: u32| {
        at.write16(0x04, command & !0x2);
        at.write32(reg, (base as u32 & !0xf) | low_flags);
        at.write32(reg + 4, (base >> 32) as u32);
        at.write16(0x04, command);
    };
    move_bar(high_base, old_low & 0xf);
    let mut moved = device.pci.clone();
    moved.bars[index] = Some(Bar::Memory {
        address: high_base,
        size,
        is_64bit: true,
        prefetchable: true,
    });
    let result = crate::virtio::pci::VirtioPciTransport::new(
        &moved,
        virtio_drivers::transport::DeviceType::Crypto,
    )
    .map(|t| (t.num_queues(), probe::read_config(&t)));
    move_bar(
        (old_high as u64) << 32 | (old_low & !0xf) as u64,
        old_low & 0xf,
    );
    let (queues, config) = result.map_err(|e| alloc::format!("transport on the moved BAR: {e}"))?;
    ensure!(
        queues as usize == device.queue_sizes.len(),
        "through the BAR at {high_base:#x}: {queues} queues, expected {}",
        device.queue_sizes.len()
    );
    ensure!(
        config? == device.config,
        "through the BAR at {high_base:#x}: a different configuration"
    );
    ensure!(
        probe::read_config(&device.transport)? == device.config,
        "the BAR did not move back"
    );
    Ok(())
}
