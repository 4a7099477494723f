//! Memory: physical frames from the PVH memory map, the kernel heap, DMA memory for virtio, and
//! page-table edits for MMIO above the boot identity map.
//!
//! Everything below 4 GiB is identity-mapped at boot, so a physical address below that is also
//! its virtual address. RAM above 4 GiB is not used.

pub mod dma;
pub mod frames;
pub mod heap;
pub mod paging;

use crate::arch::pvh::MemRegion;

pub const PAGE_SIZE: usize = 4096;

unsafe extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The physical range the kernel image occupies.
pub fn kernel_image() -> (u64, u64) {
    // SAFETY: linker-defined symbols; only their addresses are taken.
    unsafe {
        (
            &__kernel_start as *const u8 as u64,
            &__kernel_end as *const u8 as u64,
        )
    }
}

/// Sets up frames and heap. Returns (usable RAM bytes, heap bytes).
pub fn init(memmap: &[MemRegion]) -> (u64, usize) {
    let (kernel_start, kernel_end) = kernel_image();
    let ram = frames::init(memmap, kernel_start, kernel_end);
    let heap = heap::init(ram);
    (ram, heap)
}
