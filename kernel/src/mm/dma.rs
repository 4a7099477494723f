//! DMA memory for virtio-drivers: contiguous, zeroed frames; addresses are identity-mapped, so
//! sharing a buffer is translating its address.

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use super::{PAGE_SIZE, frames, paging};

/// The kernel's implementation of virtio-drivers' `Hal`.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, contiguous, identity-mapped frames owned by the caller until
// `dma_dealloc`; `mmio_phys_to_virt` returns a mapping of the requested range; `share` returns
// the physical address of memory that is identity-mapped and stays valid as the contract says.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match frames::alloc_contiguous(pages, 1) {
            Some(paddr) => {
                // SAFETY: the frames were just allocated to us and are identity-mapped.
                unsafe { core::ptr::write_bytes(paddr as *mut u8, 0, pages * PAGE_SIZE) };
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

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        virt_to_phys(buffer.as_ptr() as *mut u8 as u64)
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Physical address of kernel memory (identity-mapped).
pub fn virt_to_phys(vaddr: u64) -> PhysAddr {
    vaddr
}
