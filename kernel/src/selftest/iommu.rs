//! DMA confinement through the IOMMU (VT-d), against the real (emulated) unit and device, where
//! the IOMMU is on and the device negotiated VIRTIO_F_ACCESS_PLATFORM (`VCRYPT_IOMMU=on`).
//! Without them (the default configuration) each test checks instead that nothing changed: the
//! DMA interface hands out physical addresses and maps nothing.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;

use vcrypt_drivers::crypto::{Cipher, Direction, Session};
use vcrypt_drivers::error::Error;
use vcrypt_drivers::virtio_crypto::lifecycle::DeviceState;
use vcrypt_drivers::virtio_crypto::slots::OwnedBuffers;
use virtio_drivers::{BufferDirection, Hal};

use super::reference::{Rng, reference};
use super::{TestResult, not_applicable};
use crate::ensure;
use crate::mm::dma::KernelHal;
use crate::mm::iommu::{self, Iommu};
use crate::mm::{PAGE_SIZE, frames};
use crate::virtio::crypto::{CryptoFunction, Device, functions};

/// The IOMMU and the first device whose DMA it confines; without an IOMMU, checks that the DMA
/// interface is the identity and maps nothing, and returns that outcome instead.
fn confined() -> Result<(&'static Iommu, &'static CryptoFunction), TestResult> {
    let Some(unit) = iommu::get() else {
        return Err(unconfined());
    };
    match functions().iter().find(|f| f.dma_confined()) {
        Some(f) => Ok((unit, f)),
        None => Err(not_applicable(
            "the IOMMU is on but no device negotiated VIRTIO_F_ACCESS_PLATFORM (iommu_platform=off)"
                .into(),
        )),
    }
}

/// No IOMMU: a shared buffer's address is its physical address, and no device is confined.
fn unconfined() -> TestResult {
    let page = OwnPage::new(0)?;
    // SAFETY: the page is ours and unshared right after; no device is handed its address.
    let iova = unsafe { KernelHal::share(page.as_dma(), BufferDirection::DeviceToDriver) };
    // SAFETY: undoes the share above.
    unsafe { KernelHal::unshare(iova, page.as_dma(), BufferDirection::DeviceToDriver) };
    ensure!(
        iova == page.0,
        "without an IOMMU, page {:#x} was shared as {iova:#x}",
        page.0
    );
    ensure!(
        functions().iter().all(|f| !f.dma_confined()),
        "a device counts as confined without an IOMMU"
    );
    Ok(())
}

/// A page only this test owns (page-aligned, shared with nothing), filled with `fill`.
struct OwnPage(u64);

impl OwnPage {
    fn new(fill: u8) -> Result<Self, alloc::string::String> {
        let page = frames::alloc().ok_or("no free frame")?;
        // SAFETY: the frame was just allocated to us and is identity-mapped.
        unsafe { core::ptr::write_bytes(page as *mut u8, fill, PAGE_SIZE) };
        Ok(OwnPage(page))
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the frame is ours until `drop` and identity-mapped.
        unsafe { core::slice::from_raw_parts(self.0 as *const u8, PAGE_SIZE) }
    }

    fn as_dma(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(
            NonNull::new(self.0 as *mut u8).expect("frame 0 is never allocated"),
            PAGE_SIZE,
        )
    }
}

impl Drop for OwnPage {
    fn drop(&mut self) {
        let _ = frames::free(self.0, 1);
    }
}

/// Sharing maps exactly the shared pages with the direction's permission (read-only for the
/// device's input, write-only for its output), counts overlapping shares, and unsharing unmaps
/// them again with an IOTLB invalidation; a zero-copy request's buffers are unmapped once it is
/// back.
pub fn sharing_maps_only_the_buffer_with_its_direction() -> TestResult {
    let (unit, function) = match confined() {
        Ok(c) => c,
        Err(skip) => return skip,
    };
    let page = OwnPage::new(0)?;
    ensure!(
        !unit.is_mapped(page.0, PAGE_SIZE),
        "a page nobody shared is mapped"
    );
    let invalidations = || {
        unit.counters
            .invalidations
            .load(core::sync::atomic::Ordering::Relaxed)
    };
    // SAFETY (both shares): the page is ours, allocated, and unshared below before it is freed;
    // no device is handed its address.
    let iova = unsafe { KernelHal::share(page.as_dma(), BufferDirection::DriverToDevice) };
    ensure!(
        iova == page.0,
        "I/O virtual address {iova:#x} for page {:#x}",
        page.0
    );
    ensure!(
        unit.permission(page.0) == (true, false),
        "device input page permission {:?}, expected read-only",
        unit.permission(page.0)
    );
    let _ = unsafe { KernelHal::share(page.as_dma(), BufferDirection::DeviceToDriver) };
    ensure!(
        unit.permission(page.0) == (true, true),
        "input + output permission {:?}",
        unit.permission(page.0)
    );
    let before = invalidations();
    // SAFETY: undoes the shares above.
    unsafe { KernelHal::unshare(iova, page.as_dma(), BufferDirection::DriverToDevice) };
    ensure!(
        unit.permission(page.0) == (false, true),
        "after the input's unshare: {:?}, expected write-only",
        unit.permission(page.0)
    );
    unsafe { KernelHal::unshare(iova, page.as_dma(), BufferDirection::DeviceToDriver) };
    ensure!(
        !unit.is_mapped(page.0, PAGE_SIZE),
        "still mapped after every unshare"
    );
    ensure!(
        invalidations() >= before + 2,
        "{} IOTLB invalidations for two permission drops",
        invalidations() - before
    );

    // A zero-copy request: its buffers' own pages are mapped only while it is in flight.
    let device: &Device = function.device;
    let key = [7u8; 16];
    let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
        .map_err(|e| format!("session: {e}"))?;
    let len = 64 * 1024;
    let (src, dst) = (vec![3u8; len], vec![0u8; len]);
    // The pages entirely inside each buffer (its first and last may hold other heap data).
    let inner = |v: &Vec<u8>| {
        let start = (v.as_ptr() as u64).div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
        (start, start + 8 * PAGE_SIZE as u64)
    };
    let (src_inner, dst_inner) = (inner(&src), inner(&dst));
    let queue = device.data_queue_for(crate::arch::percpu::cpu_index());
    let back = device
        .start_cipher_owned(
            queue,
            &session.as_cipher_session(),
            &[0; 16],
            OwnedBuffers { src, dst },
        )
        .and_then(|r| r.wait())
        .map_err(|e| format!("zero-copy request: {}", e.error))?;
    for (what, (a, b)) in [("source", src_inner), ("destination", dst_inner)] {
        ensure!(
            !unit.is_mapped(a, (b - a) as usize),
            "the {what}'s pages are still mapped after the request came back"
        );
    }
    ensure!(
        back.dst
            == reference(
                Cipher::AesCbc,
                Direction::Encrypt,
                &key,
                &[0; 16],
                &back.src
            ),
        "zero-copy ciphertext differs from RustCrypto"
    );
    Ok(())
}

/// One zero-copy request's destination descriptor points at a page that was never mapped, filled
/// with a pattern (a wrong descriptor, `iommu::inject`): the device's write faults, the fault is
/// read from the unit and logged, the request fails with `DmaFault` naming that page, the
/// pattern is intact, the device is reset through the recovery path, and the next 1,000 requests
/// (copied and zero copy, checked against RustCrypto) are right. No mapping is left behind.
pub fn unmapped_page_faults_and_the_device_recovers() -> TestResult {
    let (unit, function) = match confined() {
        Ok(c) => c,
        Err(skip) => return skip,
    };
    let device: &Device = function.device;
    const PATTERN: u8 = 0x5a;
    let page = OwnPage::new(PATTERN)?;
    ensure!(
        !unit.is_mapped(page.0, PAGE_SIZE),
        "the pattern page is mapped"
    );
    let mapped_before = unit.mapped_pages();
    let faults_before = unit
        .counters
        .faults
        .load(core::sync::atomic::Ordering::Relaxed);
    let generation = device.generation();
    let key = [0x11u8; 16];
    let iv = [0x22u8; 16];
    let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
        .map_err(|e| format!("session: {e}"))?;
    let dst = vec![0u8; PAGE_SIZE];
    crate::println!(
        "note: the next request's destination descriptor points at the unmapped page {:#x}: QEMU's \
         complaints about a translation failure there are expected",
        page.0
    );
    iommu::inject::redirect_next_share(dst.as_ptr() as u64, page.0);
    let queue = device.data_queue_for(crate::arch::percpu::cpu_index());
    let result = device
        .start_cipher_owned(
            queue,
            &session.as_cipher_session(),
            &iv,
            OwnedBuffers {
                src: vec![0x33; PAGE_SIZE],
                dst,
            },
        )
        .and_then(|r| r.wait());
    iommu::inject::disarm();
    match result {
        Err(failure) => match failure.error {
            Error::DmaFault { address, write, .. } => {
                ensure!(
                    address == page.0 && write,
                    "the fault names {} of {address:#x}, expected a write to {:#x}",
                    if write { "a write" } else { "a read" },
                    page.0
                );
            }
            e => {
                return Err(format!(
                    "the request failed with \"{e}\", expected a DMA fault"
                ));
            }
        },
        Ok(_) => return Err("the request succeeded; expected a DMA fault".into()),
    }
    ensure!(
        unit.counters
            .faults
            .load(core::sync::atomic::Ordering::Relaxed)
            > faults_before,
        "no fault was read from the fault recording registers"
    );
    ensure!(
        page.bytes().iter().all(|&b| b == PATTERN),
        "the unmapped page changed: the device wrote outside what was mapped"
    );
    let start = crate::arch::tsc::now_ns();
    while device.generation() == generation || device.state() != DeviceState::Running {
        ensure!(
            crate::arch::tsc::now_ns() - start < 10_000_000_000,
            "no recovery within 10 s (state {:?})",
            device.state()
        );
        crate::sched::sleep_ns(1_000_000);
    }
    drop(session);
    let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
        .map_err(|e| format!("session after the reset: {e}"))?;
    let mut rng = Rng::new(0x10_33);
    for i in 0..1000 {
        let len = 16 * (1 + rng.below(256) as usize);
        let plain = rng.bytes(len);
        let out = if i % 2 == 0 {
            let mut out = vec![0u8; len];
            session
                .encrypt(&iv, &plain, &mut out)
                .map_err(|e| format!("request {i} after the fault: {e}"))?;
            out
        } else {
            device
                .start_cipher_owned(
                    device.data_queue_for(crate::arch::percpu::cpu_index()),
                    &session.as_cipher_session(),
                    &iv,
                    OwnedBuffers {
                        src: plain.clone(),
                        dst: vec![0; len],
                    },
                )
                .and_then(|r| r.wait())
                .map_err(|e| format!("zero-copy request {i} after the fault: {}", e.error))?
                .dst
        };
        ensure!(
            out == reference(Cipher::AesCbc, Direction::Encrypt, &key, &iv, &plain),
            "request {i} after the fault: ciphertext differs from RustCrypto"
        );
    }
    drop(session);
    ensure!(
        page.bytes().iter().all(|&b| b == PATTERN),
        "the unmapped page changed after the reset"
    );
    ensure!(
        unit.mapped_pages() == mapped_before,
        "{} pages mapped after the test, {mapped_before} before: a mapping was left behind",
        unit.mapped_pages()
    );
    crate::println!(
        "iommu fault: request failed with a DMA fault at {:#x}, pattern intact, device reset \
         (generation {generation} -> {}), 1000 requests right after",
        page.0,
        device.generation()
    );
    Ok(())
}

/// The IOTLB forgets an unmapped page: a zero-copy request's destination is written by the device
/// (its translation is now cached), the request comes back and the page is unmapped; a second
/// request's destination descriptor then points at that page (`iommu::inject`). The write must
/// fault and leave the page as the CPU last wrote it: a missed or late IOTLB invalidation would
/// let the device write through the cached translation.
pub fn page_unmapped_after_a_request_is_out_of_reach() -> TestResult {
    let (unit, function) = match confined() {
        Ok(c) => c,
        Err(skip) => return skip,
    };
    let device: &Device = function.device;
    let key = [0x44u8; 16];
    let iv = [0x55u8; 16];
    let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &key)
        .map_err(|e| format!("session: {e}"))?;
    let queue = device.data_queue_for(crate::arch::percpu::cpu_index());
    let len = 3 * PAGE_SIZE;
    let first = device
        .start_cipher_owned(
            queue,
            &session.as_cipher_session(),
            &iv,
            OwnedBuffers {
                src: vec![0x66; len],
                dst: vec![0; len],
            },
        )
        .and_then(|r| r.wait())
        .map_err(|e| format!("first request: {}", e.error))?;
    let mut used = first.dst;
    // A page entirely inside the destination: the device wrote it, and it is the buffer's own.
    let offset = (used.as_ptr() as usize).next_multiple_of(PAGE_SIZE) - used.as_ptr() as usize;
    let page = used.as_ptr() as u64 + offset as u64;
    ensure!(
        used[offset..offset + PAGE_SIZE].iter().any(|&b| b != 0),
        "the device did not write the first destination"
    );
    ensure!(
        !unit.is_mapped(page, PAGE_SIZE),
        "the first destination's page {page:#x} is still mapped after the request came back"
    );
    const PATTERN: u8 = 0xc3;
    used[offset..offset + PAGE_SIZE].fill(PATTERN);
    let generation = device.generation();
    let dst = vec![0u8; PAGE_SIZE];
    crate::println!(
        "note: the next request's destination descriptor points at {page:#x}, unmapped after the \
         previous request: QEMU's complaints about a translation failure there are expected"
    );
    iommu::inject::redirect_next_share(dst.as_ptr() as u64, page);
    let result = device
        .start_cipher_owned(
            queue,
            &session.as_cipher_session(),
            &iv,
            OwnedBuffers {
                src: vec![0x77; PAGE_SIZE],
                dst,
            },
        )
        .and_then(|r| r.wait());
    iommu::inject::disarm();
    match result {
        Err(failure) => ensure!(
            matches!(failure.error, Error::DmaFault { address, write: true, .. } if address == page),
            "the second request failed with \"{}\", expected a DMA fault writing {page:#x}",
            failure.error
        ),
        Ok(_) => {
            return Err(format!(
                "the second request succeeded: the device reached {page:#x} after it was unmapped"
            ));
        }
    }
    ensure!(
        used[offset..offset + PAGE_SIZE]
            .iter()
            .all(|&b| b == PATTERN),
        "the unmapped page changed: the device wrote through a stale translation"
    );
    let start = crate::arch::tsc::now_ns();
    while device.generation() == generation || device.state() != DeviceState::Running {
        ensure!(
            crate::arch::tsc::now_ns() - start < 10_000_000_000,
            "no recovery within 10 s (state {:?})",
            device.state()
        );
        crate::sched::sleep_ns(1_000_000);
    }
    Ok(())
}
