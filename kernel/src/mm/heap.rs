//! The kernel heap: `linked_list_allocator` over one contiguous run of frames, behind a lock that
//! disables interrupts (an interrupt handler never allocates, but a task holding the heap lock
//! must not be interrupted by code that might).

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use linked_list_allocator::Heap;
use vcrypt_drivers::sync::IrqSpinLock;

use super::{PAGE_SIZE, frames};

struct KernelHeap(IrqSpinLock<Heap>);

/// Allocations since boot (every CPU), for tests that prove a path allocates nothing.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Heap allocations made so far (monotonic, all CPUs).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap(IrqSpinLock::new("heap", Heap::empty()));

// SAFETY: `Heap` returns blocks that fit the layout and are not handed out twice; the lock
// serialises every access.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        self.0
            .lock()
            .allocate_first_fit(layout)
            .map_or(core::ptr::null_mut(), |p| p.as_ptr())
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: the caller passes a block this allocator returned, with its layout.
            unsafe { self.0.lock().deallocate(ptr, layout) }
        }
    }
}

/// The smallest heap the kernel runs with.
pub const MIN_HEAP: usize = 4 << 20;

/// Gives the heap half of usable RAM (at least [`MIN_HEAP`], at most 1 GiB). Returns its size,
/// or `None` when there is no run of frames that large.
pub fn init(usable_ram: u64) -> Option<usize> {
    let bytes = (usable_ram / 2).clamp(MIN_HEAP as u64, 1 << 30) as usize;
    let frames_needed = bytes / PAGE_SIZE;
    let base = frames::alloc_contiguous(frames_needed, 512)?;
    // SAFETY: the frames are ours alone from now on and identity-mapped.
    unsafe { HEAP.0.lock().init(base as *mut u8, bytes) };
    Some(bytes)
}

/// (used bytes, free bytes).
pub fn usage() -> (usize, usize) {
    let heap = HEAP.0.lock();
    (heap.used(), heap.free())
}
