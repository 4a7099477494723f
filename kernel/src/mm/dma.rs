//! DMA memory for virtio-drivers: contiguous, zeroed frames; addresses are identity-mapped, so
//! sharing a buffer is translating its address.
//!
//! Behind an IOMMU (`mm::iommu`, translation on) the addresses handed to the device are I/O
//! virtual addresses equal to the physical ones, and only what passes through here is mapped:
//! ring memory from `dma_alloc` until `dma_dealloc`, and each shared buffer from `share` until
//! its `unshare` (device-readable buffers read-only, device-writable ones write-only).

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use super::{PAGE_SIZE, frames, iommu, paging};

/// The kernel's implementation of virtio-drivers' `Hal`.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, contiguous, identity-mapped frames owned by the caller until
// `dma_dealloc`; `mmio_phys_to_virt` returns a mapping of the requested range; `share` returns
// the physical address of memory that is identity-mapped and stays valid as the contract says.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match frames::alloc_contiguous(pages, 1) {
            Some(paddr) => {
                // SAFETY: the frames were just allocated to us and are identity-mapped.
                unsafe { core::ptr::write_bytes(paddr as *mut u8, 0, pages * PAGE_SIZE) };
                // Ring memory: the descriptor table and the available ring are read by the device;
                // the used ring is written by it, and read (its flags) too.
                if let Some(iommu) = iommu::get()
                    && let Err(e) = iommu.map(
                        paddr,
                        pages * PAGE_SIZE,
                        true,
                        direction != BufferDirection::DriverToDevice,
                    )
                {
                    log::error!("dma_alloc: {e:?}");
                    let _ = frames::free(paddr, pages);
                    return (0, NonNull::dangling());
                }
                // Memory only the device writes is a used ring: started USED_RING_SHIFT bytes
                // into its first page (see there). virtio-drivers sizes it in whole pages, so the
                // ring (4 + 8 x size + 2 bytes) still fits.
                let paddr = if iommu::enabled() && direction == BufferDirection::DeviceToDriver {
                    paddr + USED_RING_SHIFT
                } else {
                    paddr
                };
                (
                    paddr,
                    NonNull::new(paddr as *mut u8).expect("frame 0 is never allocated"),
                )
            }
            // virtio-drivers turns a zero address into Error::DmaError.
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        let paddr = paddr & !(PAGE_SIZE as u64 - 1);
        if let Some(iommu) = iommu::get() {
            iommu.unmap_all(paddr, pages * PAGE_SIZE);
        }
        match frames::free(paddr, pages) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("dma_dealloc: {e:?}");
                -1
            }
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let vaddr = paging::map_mmio(paddr, size as u64)
            .unwrap_or_else(|e| panic!("MMIO at {paddr:#x}: {e}"));
        NonNull::new(vaddr as *mut u8).expect("MMIO at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let paddr = virt_to_phys(buffer.as_ptr() as *mut u8 as u64);
        if let Some(iommu) = iommu::get() {
            if let Some(iova) = iommu::inject::take_redirect(paddr) {
                return iova;
            }
            let (reads, writes) = device_access(direction);
            if let Err(e) = iommu.map(paddr, buffer.len(), reads, writes) {
                // Not mapped: the device faults on it instead of reaching it, and the request
                // fails with the fault (`take_fault`).
                log::error!("share: {e:?}");
            }
        }
        paddr
    }

    unsafe fn unshare(_paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let paddr = virt_to_phys(buffer.as_ptr() as *mut u8 as u64);
        if let Some(iommu) = iommu::get() {
            if iommu::inject::take_skip_unshare(paddr) {
                return;
            }
            let (reads, writes) = device_access(direction);
            iommu.unmap(paddr, buffer.len(), reads, writes);
        }
    }
}

/// Where a used ring starts in its memory behind an IOMMU: 4 bytes in, so that its 8-byte
/// elements (after the 4-byte header) start at multiples of 8 and none crosses a page. QEMU 7.2
/// writes a used element through a cached mapping of the ring, and when the write crosses a page
/// of an IOMMU-translated ring it continues at the offset within the ring taken as an I/O
/// virtual address (`softmmu/physmem.c`: `address_space_write_cached_slow` hands the offset to
/// `flatview_write_continue`): element 511 of a 1024-entry ring, at page offset 4092, would
/// write its length to I/O virtual address 0x1000 (seen: a DMA fault there, reason 5, after
/// 511 requests on a queue).
const USED_RING_SHIFT: u64 = 4;

/// What the device may do with a buffer of this direction: (read it, write it).
fn device_access(direction: BufferDirection) -> (bool, bool) {
    match direction {
        BufferDirection::DriverToDevice => (true, false),
        BufferDirection::DeviceToDriver => (false, true),
        BufferDirection::Both => (true, true),
    }
}

/// Physical address of kernel memory (identity-mapped).
pub fn virt_to_phys(vaddr: u64) -> PhysAddr {
    vaddr
}
