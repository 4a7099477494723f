//! Memory tests: heap, frames, DMA.

use alloc::boxed::Box;
use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use virtio_drivers::{BufferDirection, Hal};

use super::TestResult;
use crate::ensure;
use crate::mm::{PAGE_SIZE, dma::KernelHal, frames, heap};

/// Allocates blocks of many sizes, fills each with its own pattern, checks every pattern, frees
/// in an interleaved order, and checks the heap's usage returns to where it started.
pub fn heap_alloc_free_many_sizes() -> TestResult {
    let (used_before, _) = heap::usage();
    let mut blocks: Vec<Box<[u8]>> = Vec::new();
    let mut size = 1usize;
    let mut seed = 0u8;
    while size <= 256 * 1024 {
        for extra in [0, 1, 7] {
            seed = seed.wrapping_add(31);
            blocks.push(alloc::vec![seed; size + extra].into_boxed_slice());
        }
        size *= 2;
    }
    let mut seed = 0u8;
    for (i, block) in blocks.iter().enumerate() {
        seed = seed.wrapping_add(31);
        ensure!(
            block.iter().all(|&b| b == seed),
            "block {i} ({} bytes) was overwritten",
            block.len()
        );
    }
    let count = blocks.len();
    // Free every other block first, then the rest: exercises coalescing of holes.
    let (even, odd): (Vec<_>, Vec<_>) = blocks
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    drop(odd);
    drop(even);
    let (used_after, _) = heap::usage();
    ensure!(
        used_after == used_before,
        "heap use is {used_after} bytes after freeing {count} blocks, was {used_before}"
    );
    Ok(())
}

/// Takes every kind of allocation the allocator offers, checks no frame appears twice, frees them,
/// and checks the free count comes back and a double free is refused.
pub fn frames_never_handed_out_twice() -> TestResult {
    let (free_before, _) = frames::usage();
    let mut seen = BTreeSet::new();
    let mut runs = Vec::new();
    for i in 0..600usize {
        let count = [1, 1, 2, 3, 8, 17][i % 6];
        let align = if i % 5 == 0 { 8 } else { 1 };
        let paddr = frames::alloc_contiguous(count, align).ok_or("out of frames")?;
        ensure!(
            paddr % (align * PAGE_SIZE) as u64 == 0,
            "run at {paddr:#x} not aligned to {align} frames"
        );
        for f in 0..count as u64 {
            let frame = paddr + f * PAGE_SIZE as u64;
            ensure!(seen.insert(frame), "frame {frame:#x} handed out twice");
        }
        runs.push((paddr, count));
    }
    let (kernel_start, kernel_end) = crate::mm::kernel_image();
    ensure!(
        seen.iter()
            .all(|&f| f >= 1 << 20 && (f + PAGE_SIZE as u64 <= kernel_start || f >= kernel_end)),
        "a frame below 1 MiB or inside the kernel image was handed out"
    );
    for &(paddr, count) in &runs {
        frames::free(paddr, count).map_err(|e| alloc::format!("free failed: {e:?}"))?;
    }
    let (free_after, _) = frames::usage();
    ensure!(
        free_after == free_before,
        "free frames {free_after} after the test, {free_before} before"
    );
    let (paddr, _) = runs[0];
    ensure!(
        frames::free(paddr, 1) == Err(frames::FreeError::NotAllocated { paddr }),
        "a double free was accepted"
    );
    Ok(())
}

/// DMA memory comes back zeroed (even after a previous user dirtied it) and page-aligned.
pub fn dma_alloc_is_zeroed_and_contiguous() -> TestResult {
    for round in 0..2 {
        let (paddr, vaddr) = KernelHal::dma_alloc(4, BufferDirection::Both);
        ensure!(paddr != 0, "dma_alloc failed in round {round}");
        ensure!(
            paddr % PAGE_SIZE as u64 == 0,
            "DMA buffer at {paddr:#x} not page-aligned"
        );
        // SAFETY: dma_alloc returned 4 identity-mapped pages that are ours until dma_dealloc.
        let buffer = unsafe { core::slice::from_raw_parts_mut(vaddr.as_ptr(), 4 * PAGE_SIZE) };
        ensure!(
            buffer.iter().all(|&b| b == 0),
            "DMA buffer not zeroed in round {round}"
        );
        buffer.fill(0xa5);
        // SAFETY: the same allocation, freed once.
        let rc = unsafe { KernelHal::dma_dealloc(paddr, vaddr, 4) };
        ensure!(rc == 0, "dma_dealloc returned {rc}");
    }
    Ok(())
}
