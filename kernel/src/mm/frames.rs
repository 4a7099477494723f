//! Physical frame allocator: a bitmap over the usable RAM below 4 GiB (1 = free). Hands out
//! single frames or physically contiguous runs; freeing a frame that is not allocated is reported
//! and ignored, never corrupts the map.

use vcrypt_drivers::sync::IrqSpinLock;

use super::PAGE_SIZE;
use crate::arch::pvh::{MEMMAP_RAM, MemRegion};

const MAX_PHYS: u64 = 4 << 30;
const FRAMES: usize = (MAX_PHYS / PAGE_SIZE as u64) as usize;
const WORDS: usize = FRAMES / 64;
/// Frames below 1 MiB stay out of the allocator (real-mode trampoline, BIOS data).
const LOW_RESERVED: u64 = 1 << 20;

struct Bitmap {
    free: [u64; WORDS],
    free_count: usize,
    total: usize,
}

static BITMAP: IrqSpinLock<Bitmap> = IrqSpinLock::new(
    "frames",
    Bitmap {
        free: [0; WORDS],
        free_count: 0,
        total: 0,
    },
);

/// Why a free was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum FreeError {
    NotAllocated { paddr: u64 },
    OutOfRange { paddr: u64 },
}

impl Bitmap {
    fn is_free(&self, frame: usize) -> bool {
        self.free[frame / 64] & (1 << (frame % 64)) != 0
    }
    fn set_free(&mut self, frame: usize, free: bool) {
        if free {
            self.free[frame / 64] |= 1 << (frame % 64);
        } else {
            self.free[frame / 64] &= !(1 << (frame % 64));
        }
    }
}

/// Marks the RAM of `memmap` free, minus the kernel image and low memory. Returns usable bytes.
pub fn init(memmap: &[MemRegion], kernel_start: u64, kernel_end: u64) -> u64 {
    let mut map = BITMAP.lock();
    let mut ignored_high = 0u64;
    for region in memmap.iter().filter(|r| r.kind == MEMMAP_RAM) {
        let start = region
            .addr
            .div_ceil(PAGE_SIZE as u64)
            .max(LOW_RESERVED / PAGE_SIZE as u64);
        let end_addr = region.addr + region.size;
        if end_addr > MAX_PHYS {
            ignored_high += end_addr - end_addr.min(MAX_PHYS).max(region.addr);
        }
        let end = end_addr.min(MAX_PHYS) / PAGE_SIZE as u64;
        for frame in start..end {
            let paddr = frame * PAGE_SIZE as u64;
            if paddr + PAGE_SIZE as u64 > kernel_start && paddr < kernel_end {
                continue;
            }
            if !map.is_free(frame as usize) {
                map.set_free(frame as usize, true);
                map.free_count += 1;
            }
        }
    }
    map.total = map.free_count;
    if ignored_high > 0 {
        log::warn!("{} MiB of RAM above 4 GiB is not used", ignored_high >> 20);
    }
    (map.total * PAGE_SIZE) as u64
}

/// Allocates `count` physically contiguous frames, aligned to `align` frames (a power of two).
/// The memory is not zeroed.
pub fn alloc_contiguous(count: usize, align: usize) -> Option<u64> {
    if count == 0 || !align.is_power_of_two() {
        return None;
    }
    let mut map = BITMAP.lock();
    if map.free_count < count {
        return None;
    }
    let mut start = 0;
    while start + count <= FRAMES {
        // Skip whole empty words quickly.
        if start % 64 == 0 && map.free[start / 64] == 0 {
            start += 64;
            continue;
        }
        match (start..start + count).find(|&f| !map.is_free(f)) {
            None => {
                for f in start..start + count {
                    map.set_free(f, false);
                }
                map.free_count -= count;
                return Some((start * PAGE_SIZE) as u64);
            }
            Some(busy) => start = (busy + 1).next_multiple_of(align),
        }
    }
    None
}

/// Allocates one frame.
pub fn alloc() -> Option<u64> {
    alloc_contiguous(1, 1)
}

/// Returns `count` frames starting at `paddr` to the allocator.
pub fn free(paddr: u64, count: usize) -> Result<(), FreeError> {
    let first = (paddr / PAGE_SIZE as u64) as usize;
    if !paddr.is_multiple_of(PAGE_SIZE as u64) || first + count > FRAMES {
        return Err(FreeError::OutOfRange { paddr });
    }
    let mut map = BITMAP.lock();
    if let Some(f) = (first..first + count).find(|&f| map.is_free(f)) {
        return Err(FreeError::NotAllocated {
            paddr: (f * PAGE_SIZE) as u64,
        });
    }
    for f in first..first + count {
        map.set_free(f, true);
    }
    map.free_count += count;
    Ok(())
}

/// (free frames, total frames).
pub fn usage() -> (usize, usize) {
    let map = BITMAP.lock();
    (map.free_count, map.total)
}
