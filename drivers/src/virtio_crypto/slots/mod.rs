//! Per-queue request memory: a fixed table of request slots, each with its own preallocated DMA
//! block, plus a small pool of large bounce blocks. A request's bytes are one contiguous region,
//! `[device-readable parts | device-writable parts]`, taken from (in order of preference) its
//! slot's inline block, a free large block, or a heap block kept in the slot ("spill", the only
//! case that allocates, for requests above the large-block size).
//!
//! Why slots and not the descriptor token: the request's header, IV and data must be in place
//! before `VirtQueue::add` publishes them, and the token is only known once `add` returns. So a
//! request owns a slot from building to release, and the queue's in-flight table (indexed by
//! token) names the slot.
//!
//! Invariants:
//! - A slot's phase changes only through this module's methods (`reserve`/`assign`, `post`,
//!   `unpost`, `finish`, `abandon`, `release`, `reclaim_after_reset`), each under the slot's
//!   lock; nothing outside it can reach a slot's state.
//! - A slot's memory is touched by the CPU only in the phases `Building` and `Done` (by the one
//!   `Request` that owns it), and by the device only in `InFlight`/`Abandoned`.
//! - Memory the device may still reach is never freed or reused: a request dropped while in
//!   flight is `Abandoned` and released only when the device returns it; a request failed while
//!   the device still had it (`fail_all`, device needs a reset) is `Quarantined` on release and
//!   comes back only through `Storage::reclaim_after_reset`.
//! - Slot and large-block free lists are behind one `IrqSpinLock` ("request-slots"), a leaf lock;
//!   a slot's state is behind its own `IrqSpinLock` ("request-slot"), taken before "request-slots"
//!   and before the scheduler's locks (a waiter is woken under it, so the waiter's `Arc` is never
//!   dropped in interrupt context).
//! - Nothing here allocates after `Storage::new` except a spill for an oversized request, in
//!   task context.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::ptr::NonNull;

use crate::error::Error;
use crate::sync::{IrqSpinLock, IrqsOff, SpinGuard, WaitQueue, Wake};

mod phase;

pub(crate) use phase::{CpuView, Finish};

/// Most slots a queue can have (one per descriptor of the ring).
pub const MAX_SLOTS: usize = 1024;
/// Most large bounce blocks a queue can have.
pub const MAX_LARGE: usize = 64;

/// How much request memory a queue preallocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// Requests that can be built or in flight at once.
    pub slots: usize,
    /// Bytes of each slot's own block.
    pub inline_bytes: usize,
    /// Large bounce blocks shared by the slots.
    pub large_blocks: usize,
    /// Bytes of each large block.
    pub large_bytes: usize,
}

impl StorageConfig {
    /// Control queue: headers, keys (at most 64 bytes) and replies only.
    pub const CONTROL: StorageConfig = StorageConfig {
        slots: 256,
        inline_bytes: 256,
        large_blocks: 0,
        large_bytes: 0,
    };
    /// Data queue: a 4 KiB cipher request fits a slot; 64 KiB ones take a large block.
    pub const DATA: StorageConfig = StorageConfig {
        slots: 256,
        inline_bytes: 8 * 1024 + 256,
        large_blocks: 16,
        large_bytes: 128 * 1024 + 256,
    };
}

/// A heap block the device reads and writes. Kernel heap addresses are physical addresses
/// (identity map), so the block can be posted as is; it is never a stack address.
pub(crate) struct DmaBlock {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the block is plain memory owned by this value; who may touch it when is governed by
// the slot phases (module invariants), not by the thread that holds the value.
unsafe impl Send for DmaBlock {}
// SAFETY: as above; shared references only hand out raw addresses.
unsafe impl Sync for DmaBlock {}

impl DmaBlock {
    const ALIGN: usize = 64;

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(1), Self::ALIGN).expect("DMA block layout")
    }

    /// A zeroed block of `len` bytes (at least 1), or `None` if the heap is exhausted.
    pub(crate) fn new(len: usize) -> Option<Self> {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(Self::layout(len)) };
        NonNull::new(ptr).map(|ptr| DmaBlock { ptr, len })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// The block as the DMA interface takes it.
    fn as_dma(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.ptr, self.len)
    }
}

impl Drop for DmaBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; dropped only when no device can reach it
        // (module invariants).
        unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// Where a request's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Memory {
    Inline,
    Large(u8),
    Spill,
}

/// A slot's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Free,
    /// Owned by a `RequestBuilder`/`Request`; the CPU writes the request.
    Building,
    /// Posted; the device owns the memory.
    InFlight,
    /// Posted, and its `Request` was dropped (a timeout): released when the device returns it.
    Abandoned,
    /// The device returned it (or it was failed); its `Request` reads the result.
    Done,
    /// Failed while the device still had it; kept until the device is reset.
    Quarantined,
}

/// A caller's own buffers a request points the device at instead of copying them (zero copy):
/// `src` is device-readable, `dst` device-writable. Kernel heap memory is identity-mapped, so
/// their addresses are what the device gets.
pub struct OwnedBuffers {
    pub src: Vec<u8>,
    pub dst: Vec<u8>,
}

impl core::fmt::Debug for OwnedBuffers {
    /// Lengths only: the bytes may be secret.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "OwnedBuffers {{ src: {} B, dst: {} B }}",
            self.src.len(),
            self.dst.len()
        )
    }
}

/// What a released slot leaves for its releaser to free (in task context): a spill, a caller's
/// buffers nobody took back.
#[must_use]
#[derive(Default)]
pub(crate) struct Leftovers {
    _spill: Option<DmaBlock>,
    _external: Option<OwnedBuffers>,
}

struct SlotState {
    phase: Phase,
    memory: Memory,
    /// The caller's buffers, while the request points at them (kept here so they outlive the
    /// device's use even if the request is dropped in flight; freed only in task context).
    external: Option<OwnedBuffers>,
    /// A heap block for a request too large for the preallocated ones; kept for reuse and freed
    /// only in task context (by the next reservation that does not need it, or a task's drop).
    spill: Option<DmaBlock>,
    readable: usize,
    writable: usize,
    /// Used length or why it failed, once `Done`.
    outcome: Option<Result<u32, Error>>,
    /// Failed by `fail_all` before the device returned it: the CPU must not touch its memory
    /// (the `Request` shows it as empty) until a reset.
    device_may_own: bool,
    /// The least used length a correct answer has (checked by the drain).
    min_used: u32,
    /// Trailing writable bytes that are the device's reply (never cleared by the completion).
    reply_len: u32,
    /// The queue's reset count when the request was posted: a later reset ended the device's
    /// hold on it.
    posted_after_resets: u64,
    /// The device generation the request's session belongs to: posted only in that one.
    generation: Option<u64>,
    /// Zeroize the readable part on release (it holds key material).
    wipe_readable: bool,
    waiter: Option<Arc<dyn Wake>>,
}

struct Slot {
    inline: DmaBlock,
    state: IrqSpinLock<SlotState>,
}

struct FreeLists {
    slots: heapless::Vec<u16, MAX_SLOTS>,
    large: heapless::Vec<u8, MAX_LARGE>,
}

/// One queue's request memory.
pub(crate) struct Storage<H: virtio_drivers::Hal> {
    config: StorageConfig,
    slots: Box<[Slot]>,
    large: Box<[DmaBlock]>,
    free: IrqSpinLock<FreeLists>,
    /// Tasks waiting for a free slot.
    space: WaitQueue,
    /// The memory is shared with a device through `H` (its DMA interface).
    _hal: core::marker::PhantomData<fn() -> H>,
}

impl<H: virtio_drivers::Hal> Drop for Storage<H> {
    fn drop(&mut self) {
        for block in self
            .slots
            .iter()
            .map(|s| &s.inline)
            .chain(self.large.iter())
        {
            // SAFETY: shared in `new`; nothing reaches a queue's storage when it is dropped.
            unsafe {
                H::unshare(
                    block.addr() as virtio_drivers::PhysAddr,
                    block.as_dma(),
                    virtio_drivers::BufferDirection::Both,
                )
            };
        }
    }
}

impl<H: virtio_drivers::Hal> Storage<H> {
    pub(crate) fn new(config: StorageConfig) -> Result<Self, Error> {
        let config = StorageConfig {
            slots: config.slots.clamp(1, MAX_SLOTS),
            large_blocks: config.large_blocks.min(MAX_LARGE),
            ..config
        };
        let no_memory = Error::NotSupported {
            what: "request memory (the heap is exhausted)",
        };
        let mut slots = Vec::with_capacity(config.slots);
        for _ in 0..config.slots {
            slots.push(Slot {
                inline: DmaBlock::new(config.inline_bytes).ok_or(no_memory)?,
                state: IrqSpinLock::new(
                    "request-slot",
                    SlotState {
                        phase: Phase::Free,
                        memory: Memory::Inline,
                        spill: None,
                        external: None,
                        readable: 0,
                        writable: 0,
                        outcome: None,
                        device_may_own: false,
                        min_used: 0,
                        reply_len: 0,
                        posted_after_resets: 0,
                        generation: None,
                        wipe_readable: false,
                        waiter: None,
                    },
                ),
            });
        }
        let mut large = Vec::with_capacity(config.large_blocks);
        for _ in 0..config.large_blocks {
            large.push(DmaBlock::new(config.large_bytes).ok_or(no_memory)?);
        }
        let mut free = FreeLists {
            slots: heapless::Vec::new(),
            large: heapless::Vec::new(),
        };
        // Popped from the back: slot 0 first.
        for i in (0..config.slots).rev() {
            let _ = free.slots.push(i as u16);
        }
        for i in (0..config.large_blocks).rev() {
            let _ = free.large.push(i as u8);
        }
        // Mapped for the device once, for the queue's life (behind an IOMMU the device reaches
        // only what the DMA interface shared; `add` shares each request's regions again, which
        // then costs no mapping change).
        for block in slots.iter().map(|s| &s.inline).chain(&large) {
            // SAFETY: the block is allocated and stays so until `Storage` is dropped, which
            // unshares it first.
            let _ = unsafe { H::share(block.as_dma(), virtio_drivers::BufferDirection::Both) };
        }
        Ok(Storage {
            config,
            slots: slots.into_boxed_slice(),
            large: large.into_boxed_slice(),
            free: IrqSpinLock::new("request-slots", free),
            space: WaitQueue::new(),
            _hal: core::marker::PhantomData,
        })
    }

    /// Takes a free slot for a request of `readable + writable` bytes, sleeping while none is
    /// free; `broken` ends the wait (`DeviceNeedsReset`), and so does `deadline_ns` (`Timeout`).
    /// Returns the slot and the address of its region (at least `readable + writable` bytes,
    /// fixed while the slot is not free). Task context (may allocate a spill for an oversized
    /// request).
    pub(crate) fn reserve(
        &self,
        readable: usize,
        writable: usize,
        broken: &dyn Fn() -> bool,
        deadline_ns: u64,
    ) -> Result<(u16, usize), Error> {
        let slot = self.take_when_free(1, broken, deadline_ns, |free| free.slots.pop())?;
        let slot = slot.expect("a free slot");
        self.assign(slot, readable, writable)
            .map(|base| (slot, base))
    }

    /// Takes `count` free slots at once, sleeping until that many are free (all or none: a
    /// batch never holds some while it waits for the rest, so two batches cannot each hold part
    /// and wait for the other). `broken` and `deadline_ns` end the wait as in
    /// [`reserve`](Self::reserve); more slots than the queue has is `BatchTooLarge` at once.
    /// The slots are off the free list and unassigned: give each to [`assign`](Self::assign)
    /// or back to [`give_back`](Self::give_back).
    pub(crate) fn take(
        &self,
        count: usize,
        broken: &dyn Fn() -> bool,
        deadline_ns: u64,
    ) -> Result<Vec<u16>, Error> {
        if count > self.config.slots {
            return Err(Error::BatchTooLarge {
                got: count,
                max: self.config.slots,
            });
        }
        let mut taken = Vec::with_capacity(count);
        self.take_when_free(count, broken, deadline_ns, |free| {
            let at = free.slots.len() - count;
            taken.extend(free.slots[at..].iter().rev());
            free.slots.truncate(at);
        })?;
        Ok(taken)
    }

    /// Sleeps until `count` slots are free, then calls `take` on the free lists with them (under
    /// their lock: it must not allocate). `broken` and `deadline_ns` end the wait.
    fn take_when_free<T>(
        &self,
        count: usize,
        broken: &dyn Fn() -> bool,
        deadline_ns: u64,
        mut take: impl FnMut(&mut FreeLists) -> T,
    ) -> Result<T, Error> {
        loop {
            {
                let mut free = self.free.lock();
                if free.slots.len() >= count {
                    return Ok(take(&mut free));
                }
            }
            if broken() {
                return Err(Error::DeviceNeedsReset);
            }
            self.space
                .wait_until_deadline(
                    || (broken() || self.free.lock().slots.len() >= count).then_some(()),
                    deadline_ns,
                )
                .map_err(|_| Error::Timeout)?;
        }
    }

    /// Gives slots taken by [`take`](Self::take) and never assigned back to the free list.
    pub(crate) fn give_back(&self, slots: &[u16]) {
        for &slot in slots {
            self.release_now(slot, None);
        }
    }

    /// Gives `slot` (taken, not yet assigned) the memory for a request of `readable + writable`
    /// bytes and makes it `Building`; returns the region's address. On an error the slot is
    /// free again. Task context (may allocate a spill).
    pub(crate) fn assign(
        &self,
        slot: u16,
        readable: usize,
        writable: usize,
    ) -> Result<usize, Error> {
        let total = readable + writable;
        let large = (total > self.config.inline_bytes && total <= self.config.large_bytes)
            .then(|| self.free.lock().large.pop())
            .flatten();
        let memory = if total <= self.config.inline_bytes {
            Memory::Inline
        } else if let Some(i) = large {
            Memory::Large(i)
        } else {
            Memory::Spill
        };
        let mut old_spill = None;
        let mut new_spill = None;
        if memory == Memory::Spill {
            let st = self.slots[slot as usize].state.lock();
            if st.spill.as_ref().is_none_or(|b| b.len() < total) {
                drop(st);
                // Outside the slot lock: the heap lock is a leaf taken with interrupts off.
                new_spill = Some(DmaBlock::new(total));
            }
        }
        let mut st = self.slots[slot as usize].state.lock();
        match new_spill {
            Some(Some(block)) => old_spill = st.spill.replace(block),
            Some(None) => {
                drop(st);
                self.release_now(slot, large);
                return Err(Error::RequestTooLarge {
                    got: total as u64,
                    max: self.config.large_bytes as u64,
                });
            }
            None if memory != Memory::Spill => old_spill = st.spill.take(),
            None => {}
        }
        // Left by a request released in interrupt context; freed below, in task context.
        let old_external = st.external.take();
        st.phase = Phase::Building;
        st.memory = memory;
        st.readable = readable;
        st.writable = writable;
        st.outcome = None;
        st.device_may_own = false;
        st.min_used = 0;
        st.reply_len = 0;
        st.generation = None;
        st.wipe_readable = false;
        let (base, _) = self.region(slot, &st);
        drop(st);
        drop(old_spill); // task context
        drop(old_external);
        Ok(base)
    }

    /// Base address and length of the region `memory` names for `slot`.
    fn region(&self, slot: u16, st: &SlotState) -> (usize, usize) {
        let s = &self.slots[slot as usize];
        match st.memory {
            Memory::Inline => (s.inline.addr(), s.inline.len()),
            Memory::Large(i) => (self.large[i as usize].addr(), self.large[i as usize].len()),
            Memory::Spill => st
                .spill
                .as_ref()
                .map_or((s.inline.addr(), 0), |b| (b.addr(), b.len())),
        }
    }

    /// Puts `slot` back on the free list (its state lock must not be held). Wipes key material
    /// first. With `take_heap` the slot's heap memory (spill, a caller's buffers) is handed back
    /// for the caller to free (in task context); otherwise nothing is freed, and this is
    /// callable from interrupt context.
    pub(crate) fn release(&self, slot: u16, take_heap: bool) -> Leftovers {
        let st = self.slots[slot as usize].state.lock();
        self.release_locked(slot, st, take_heap)
    }

    /// [`release`](Self::release) with the slot's lock already held (dropped before the free
    /// list's is taken).
    fn release_locked(
        &self,
        slot: u16,
        mut st: SpinGuard<'_, SlotState, IrqsOff>,
        take_heap: bool,
    ) -> Leftovers {
        if st.wipe_readable {
            let (base, len) = self.region(slot, &st);
            let n = st.readable.min(len);
            // SAFETY: the slot is not in flight (the caller releases it after the device
            // returned it or before it was posted), so nothing else touches its memory.
            let bytes = unsafe { core::slice::from_raw_parts_mut(base as *mut u8, n) };
            zeroize::Zeroize::zeroize(bytes);
            st.wipe_readable = false;
        }
        st.phase = Phase::Free;
        st.outcome = None;
        let leftovers = if take_heap {
            Leftovers {
                _spill: st.spill.take(),
                _external: st.external.take(),
            }
        } else {
            Leftovers::default()
        };
        let large = match st.memory {
            Memory::Large(i) => Some(i),
            _ => None,
        };
        drop(st);
        self.release_now(slot, large);
        leftovers
    }

    fn release_now(&self, slot: u16, large: Option<u8>) {
        {
            let mut free = self.free.lock();
            let _ = free.slots.push(slot);
            if let Some(i) = large {
                let _ = free.large.push(i);
            }
        }
        self.space.wake_one();
    }

    /// After the device was reset (it can reach no request memory any more): quarantined slots
    /// become free again, and failed requests still held by their owner own their memory again.
    /// Returns how many slots were freed.
    pub fn reclaim_after_reset(&self) -> usize {
        let mut reclaimed = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            let quarantined = {
                let mut st = slot.state.lock();
                // A request failed while the device had it and still held by its owner: the
                // memory is the CPU's again. Without this its drop, after the reset, would
                // quarantine the slot until the next reset (a leak), and it would show no
                // bytes (found by lifecycle_props).
                if st.phase == Phase::Done && st.device_may_own {
                    // Never cleared when it failed (the device could still write): its
                    // writable part may hold an earlier request's bytes. Its reply (preset by
                    // its builder) stays.
                    let (base, len) = self.region(i as u16, &st);
                    let reply = (st.reply_len as usize).min(st.writable);
                    let clear = (st.writable - reply).min(len.saturating_sub(st.readable));
                    // SAFETY: the device was reset (it reaches no request memory) and the slot
                    // lock is held; this is inside the slot's region, in its writable part.
                    unsafe { core::ptr::write_bytes((base + st.readable) as *mut u8, 0, clear) };
                    st.device_may_own = false;
                }
                st.phase == Phase::Quarantined
            };
            if quarantined {
                drop(self.release(i as u16, true));
                reclaimed += 1;
            }
        }
        reclaimed
    }

    /// How many slots the queue has.
    pub(crate) fn capacity(&self) -> usize {
        self.config.slots
    }

    /// Slots not free (building, in flight, done, abandoned or quarantined).
    pub(crate) fn slots_in_use(&self) -> usize {
        self.config.slots - self.free.lock().slots.len()
    }

    /// Test hook: every slot's phase and memory block, and the free lists, as the property
    /// tests check them against the memory a fake device still holds.
    #[cfg(test)]
    pub(crate) fn view(&self) -> StorageView {
        let slots = (0..self.slots.len())
            .map(|i| {
                let st = self.slots[i].state.lock();
                SlotView {
                    phase: st.phase,
                    device_may_own: st.device_may_own,
                    block: self.region(i as u16, &st),
                }
            })
            .collect();
        let free = self.free.lock();
        StorageView {
            slots,
            free_slots: free.slots.iter().copied().collect(),
            free_large: free
                .large
                .iter()
                .map(|&i| (self.large[i as usize].addr(), self.large[i as usize].len()))
                .collect(),
        }
    }

    /// Wakes every task waiting for a slot (the queue broke).
    pub(crate) fn wake_all(&self) {
        self.space.wake_all();
    }
}

/// One slot as [`Storage::view`] saw it (tests).
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotView {
    pub(crate) phase: Phase,
    pub(crate) device_may_own: bool,
    /// Base and length of the block the slot's request lives in (inline, large or spill).
    pub(crate) block: (usize, usize),
}

/// A queue's request memory as [`Storage::view`] saw it (tests).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct StorageView {
    pub(crate) slots: Vec<SlotView>,
    pub(crate) free_slots: Vec<u16>,
    /// Base and length of each free large block.
    pub(crate) free_large: Vec<(usize, usize)>,
}
