//! The request engine: one virtqueue with its lock discipline (docs/ARCHITECTURE.md, "The
//! request path"):
//!
//! - `submit` takes the queue lock (local interrupts off) only to add descriptors, record the
//!   request as in flight and ask whether the device wants a notification; the doorbell is rung
//!   after the lock is dropped (`KickMode::Unlocked`) — or, for the baseline experiment, with it
//!   held (`KickMode::Locked`).
//! - `handle_interrupt` takes the same lock only to pop used entries and detach their requests,
//!   then completes them and wakes their waiters after dropping it.
//! - A full ring puts the submitter to sleep on `space` until a drain frees descriptors.
//!
//! The only way to reach the ring is [`QueueGuard`], which offers exactly add, kick-prepare and
//! drain; the [`Notify`] doorbell lives outside the lock, so ringing it under the lock takes a
//! deliberate choice (the `Locked` baseline).
//!
//! The device is not trusted: a used entry whose id is not a request in flight puts the queue in
//! the `broken` state (every in-flight request fails with `MalformedCompletion`, later submits
//! get `DeviceNeedsReset`); a used length longer than the request's writable buffers fails that
//! request. Neither can crash or corrupt memory.
//!
//! Requests are found by token (the head descriptor index), never by comparing ring indices, so
//! nothing depends on the 16-bit indices not wrapping. The in-flight table (indexed by token)
//! names the request's slot in the queue's preallocated `Storage`; a request is posted as at
//! most four descriptors (its readable bytes, the caller's source and destination when it hands
//! them over, its writable bytes). The rings themselves are `ring.rs`.
//!
//! The queue's state lives in a [`QueueCore`] behind an `Arc`, so a request can hold its
//! queue without borrowing it; [`CryptoQueue`] is the owner's handle.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use spin::Once;

use virtio_drivers::Hal;
use virtio_drivers::transport::Transport;

use super::ring::{Popped, QUEUE_SIZE, Regions, Ring};
use super::slots::{Finish, Storage, StorageConfig};
use crate::error::Error;
use crate::sync::{IrqSpinLock, SpinGuard, WaitQueue, spinlock::IrqsOff};

mod reset;
mod submit;

/// Doorbells one submitter rings at most for requests others added while it was ringing.
const MAX_RINGS_FOR_OTHERS: usize = 4;

/// How long a request (and a wait for ring space or a slot) may take before `Timeout`.
pub const DEFAULT_TIMEOUT_NS: u64 = 10_000_000_000;

/// What a queue needs of the device it belongs to (the device's lifecycle implements it): the
/// engine names no layer above it.
pub trait QueueOwner: Send + Sync {
    /// The error a new request gets while the device does not take requests, or `Ok`.
    fn check_open(&self) -> Result<(), Error>;
    /// The device's generation: requests bound to another one are refused.
    fn generation(&self) -> u64;
    /// The queue saw the device break the protocol: close every queue and reset the device.
    /// Any context.
    fn request_recovery(&self);
}

/// Rings a queue's doorbell. Implementations must not take the queue lock.
pub trait Notify: Send + Sync {
    fn notify(&self);
}

/// Where the doorbell is rung relative to the queue lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KickMode {
    /// Kick prepared under the lock, doorbell rung after it is dropped (the design).
    Unlocked = 0,
    /// Doorbell rung with the lock held (the baseline "virtio: Support releasing lock during kick" replaced).
    Locked = 1,
}

/// What posting records about a request besides its bytes (its builder carries it).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Seal {
    /// The least used length a correct answer has.
    pub(crate) min_used: u32,
    /// The device generation the request's session belongs to.
    pub(crate) generation: Option<u64>,
    /// Trailing writable bytes that are the device's reply (its status): preset by the builder,
    /// written by the device where they are whatever the used length says, never cleared.
    pub(crate) reply_len: u32,
}

/// A finished request, handed to its [`OnComplete`] handler: turn it into the request with
/// `Request::from` (the request module).
pub struct Finished<H: Hal> {
    pub(crate) core: Arc<QueueCore<H>>,
    pub(crate) slot: u16,
    pub(crate) readable: usize,
    pub(crate) writable: usize,
}

/// Called with the finished request after the queue lock is dropped.
///
/// Runs in whatever context drained the queue: usually the queue's interrupt handler. There it
/// must not allocate, sleep or take a lock that tasks hold with interrupts enabled; it may build
/// and submit the next request (streams do), which allocates nothing for requests that fit the
/// queue's preallocated memory. The submitter keeps its own reference to the handler, so the one
/// the queue drops after the call is never the last.
pub trait OnComplete<H: Hal>: Send + Sync {
    fn on_complete(&self, finished: Finished<H>);
}

/// One posted request, by token: its slot and the regions given to `add` (`pop_used` must get
/// the same ones back): the slot's readable bytes, then the caller's own buffers if it handed
/// some over (source, destination), then the slot's writable bytes; and its handler, if it
/// completes to one instead of a waiting task.
struct Posted<H: Hal> {
    slot: u16,
    regions: Regions,
    handler: Option<Arc<dyn OnComplete<H>>>,
}

/// A request a drain popped, until it is completed after the queue lock.
struct Drained<H: Hal> {
    slot: u16,
    handler: Option<Arc<dyn OnComplete<H>>>,
    result: Result<u32, Error>,
    device_may_own: bool,
}

impl<H: Hal> Drained<H> {
    fn new(posted: Posted<H>, result: Result<u32, Error>, device_may_own: bool) -> Self {
        Drained {
            slot: posted.slot,
            handler: posted.handler,
            result,
            device_may_own,
        }
    }
}

/// No request is posted under this token.
const NO_SLOT: u16 = u16::MAX;

/// The state behind the queue lock: the rings, the in-flight table, and whether a doorbell is
/// being rung. The table is two parts, so that it costs a slot's worth per request slot rather
/// than per ring entry: the slot posted under each token (a ring entry), and what was posted
/// from each slot.
struct Locked<H: Hal> {
    ring: Ring<H>,
    /// By token (the head descriptor's index): the slot posted under it, or `NO_SLOT`.
    slot_of: Vec<u16>,
    /// By slot: its request's regions and handler while it is in flight (one entry per request
    /// slot, sized when the queue's memory is provisioned).
    posted: Vec<Option<Posted<H>>>,
    /// A submitter is ringing the doorbell (unlocked kick mode). Others only add: the ringer
    /// looks at the ring again after its doorbell and rings once more for what they added.
    doorbell_pending: bool,
}

impl<H: Hal> Locked<H> {
    fn new(ring: Ring<H>, slots: usize) -> Self {
        Locked {
            ring,
            slot_of: alloc::vec![NO_SLOT; QUEUE_SIZE],
            posted: (0..slots).map(|_| None).collect(),
            doorbell_pending: false,
        }
    }

    /// Requests in flight.
    fn in_flight(&self) -> usize {
        self.posted.iter().filter(|p| p.is_some()).count()
    }
}

/// The platform's IOMMU as a drain sees it. Any context; never allocates.
pub trait DmaGuard: Send + Sync {
    /// A drain on this CPU is about to pop answers: the unmaps `pop_used` makes until
    /// [`popped`](Self::popped) may leave their IOTLB invalidation to it (one for the batch).
    fn popping(&self) {}
    /// The drain popped answers (`popped`; none: `false`) and is about to hand them over:
    /// finishes the invalidations of what it unmapped, then, if it popped any, asks whether the
    /// device made a DMA access outside what was mapped for it since the last call, and if so
    /// returns the error those answers get ([`Error::DmaFault`]: an answer that came back after
    /// a fault cannot be trusted). Recovery calls it too (`true`).
    fn popped(&self, popped: bool) -> Option<Error>;
}

/// The IOMMU of a device whose DMA goes through one (`set_dma_fault_check`).
pub type DmaFaultCheck = Arc<dyn DmaGuard>;

/// How `post` waits for ring space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpaceWait {
    /// Sleep on the queue's space wait queue (task context, no spinlock held).
    Sleep,
    /// Drain the queue and spin (the `ctrl=poll` baseline, which holds a preemption-off lock).
    Poll,
    /// Do not wait: a full ring is `QueueFull` at once (interrupt context, where nothing may
    /// sleep: a completion handler posting the next chunk of a stream).
    Never,
}

#[cfg(test)]
std::thread_local! {
    /// Runs once in this thread's next `fail_all`, between taking a request off the ring and
    /// completing it (tests: a whole recovery runs in that window).
    pub(crate) static BETWEEN_DETACH_AND_FAIL: core::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { core::cell::RefCell::new(None) };
}

/// Statistics of one queue (monotonic counters).
#[derive(Default)]
pub struct QueueCounters {
    pub submitted: AtomicU64,
    pub completed: AtomicU64,
    pub notifies: AtomicU64,
    pub malformed: AtomicU64,
    pub full_waits: AtomicU64,
    /// Submissions that left their doorbell to a submitter already ringing.
    pub rode_doorbell: AtomicU64,
}

/// One virtqueue of the crypto device: the owner's handle (the kernel keeps it in the device;
/// requests hold the [`QueueCore`] it shares).
pub struct CryptoQueue<H: Hal> {
    core: Arc<QueueCore<H>>,
}

/// A queue's state: ring, doorbell, request memory, counters.
pub struct QueueCore<H: Hal> {
    index: u16,
    locked: IrqSpinLock<Locked<H>>,
    doorbell: Box<dyn Notify>,
    /// Tasks waiting for free descriptors.
    space: WaitQueue,
    storage: Once<Storage<H>>,
    kick_mode: AtomicU8,
    /// A task about to sleep on one of this queue's requests drains the queue first (`reap=`).
    reap: AtomicBool,
    /// Closed to new requests: the device broke the protocol or is being reset.
    broken: AtomicBool,
    /// How long a submitter may wait for ring space or a slot.
    timeout_ns: AtomicU64,
    /// Device resets seen (counted once the reset was read back): a request posted before the
    /// last one is no longer the device's, whoever fails it and when.
    resets: AtomicU64,
    /// The device's lifecycle, once the queue belongs to a device: a protocol violation asks it
    /// for a reset, and a closed queue reports its state.
    lifecycle: Once<Arc<dyn QueueOwner>>,
    /// The IOMMU's fault check, when the device's DMA goes through one (`set_dma_fault_check`).
    dma_faults: Once<DmaFaultCheck>,
    /// With an IOMMU: the regions of requests failed while the device could still reach them,
    /// whose mappings are given back once it is reset (capacity for every request slot,
    /// reserved up front: filled from interrupt context).
    unshare_after_reset: IrqSpinLock<Vec<Regions>>,
    pub counters: QueueCounters,
}

/// Access to the ring while the queue lock is held: add, kick-prepare and drain, nothing else.
pub struct QueueGuard<'a, H: Hal> {
    locked: SpinGuard<'a, Locked<H>, IrqsOff>,
}

impl<H: Hal> QueueGuard<'_, H> {
    /// Adds the request's descriptors and moves it into the in-flight table under its token; a
    /// request that could not be added stays with the caller.
    fn add(&mut self, posted: &mut Option<Posted<H>>) -> Result<u16, Error> {
        let Some(regions) = posted.as_ref().map(|p| p.regions) else {
            return Err(Error::EmptyRequest);
        };
        // SAFETY: the regions are the slot's memory (and the caller's buffers the slot keeps),
        // which stay allocated and untouched by the CPU while the slot is `InFlight` or
        // `Abandoned`, until `pop` hands them back after the device used them, or the device
        // is reset (module invariants of `slots`).
        let token = unsafe { self.locked.ring.add(&regions) }?;
        let locked = &mut *self.locked;
        if let Some(entry) = posted.take() {
            let slot = entry.slot;
            locked.slot_of[token as usize] = slot;
            locked.posted[slot as usize] = Some(entry);
        }
        Ok(token)
    }

    /// Pops the next used entry, if any, with its request (see [`Ring::pop`]).
    fn pop(&mut self) -> Option<Popped<Posted<H>>> {
        let Locked {
            ring,
            slot_of,
            posted: by_slot,
            ..
        } = &mut *self.locked;
        ring.pop(
            |token| {
                let slot = core::mem::replace(slot_of.get_mut(token as usize)?, NO_SLOT);
                by_slot.get_mut(slot as usize).and_then(Option::take)
            },
            |posted| &posted.regions,
        )
    }

    /// Detaches one request still in flight, if any (the queue is broken).
    fn take_any(&mut self) -> Option<Posted<H>> {
        let locked = &mut *self.locked;
        let token = locked.slot_of.iter().position(|&s| s != NO_SLOT)?;
        let slot = core::mem::replace(&mut locked.slot_of[token], NO_SLOT);
        locked.posted.get_mut(slot as usize).and_then(Option::take)
    }
}

impl<H: Hal> core::ops::Deref for CryptoQueue<H> {
    type Target = QueueCore<H>;
    fn deref(&self) -> &QueueCore<H> {
        &self.core
    }
}

impl<H: Hal> CryptoQueue<H> {
    /// Sets up virtqueue `index` on `transport` (between FEATURES_OK and DRIVER_OK).
    ///
    /// The used ring is read through `H::mmio_phys_to_virt`, which must therefore translate the
    /// queue's DMA memory as well (the kernel's and the test HAL's are identity maps).
    pub fn new<T: Transport>(
        transport: &mut T,
        index: u16,
        doorbell: Box<dyn Notify>,
    ) -> Result<Self, Error> {
        Self::with_event_idx(transport, index, doorbell, false)
    }

    /// Like [`new`](Self::new) on a device that negotiated VIRTIO_RING_F_EVENT_IDX
    /// (`event_idx`): doorbells and interrupts are then suppressed by ring indices.
    pub fn with_event_idx<T: Transport>(
        transport: &mut T,
        index: u16,
        doorbell: Box<dyn Notify>,
        event_idx: bool,
    ) -> Result<Self, Error> {
        let ring = Ring::new(transport, index, event_idx)?;
        // `bench kick` shows the hold times' distribution, not only their maximum.
        let locked = IrqSpinLock::with_hold_histogram("virtqueue", Locked::new(ring, 0));
        Ok(CryptoQueue {
            core: Arc::new(QueueCore {
                index,
                // The in-flight table is sized when the request memory is provisioned.
                locked,
                doorbell,
                space: WaitQueue::new(),
                storage: Once::new(),
                kick_mode: AtomicU8::new(KickMode::Unlocked as u8),
                reap: AtomicBool::new(true),
                broken: AtomicBool::new(false),
                timeout_ns: AtomicU64::new(DEFAULT_TIMEOUT_NS),
                resets: AtomicU64::new(0),
                lifecycle: Once::new(),
                dma_faults: Once::new(),
                unshare_after_reset: IrqSpinLock::new("unshare-after-reset", Vec::new()),
                counters: QueueCounters::default(),
            }),
        })
    }
}

impl<H: Hal> CryptoQueue<H> {
    pub(crate) fn core(&self) -> &Arc<QueueCore<H>> {
        &self.core
    }

    /// Another handle on a queue (an owned request that sends again).
    pub(crate) fn from_core(core: Arc<QueueCore<H>>) -> Self {
        CryptoQueue { core }
    }

    /// Preallocates the queue's request memory (the device does this for its control and data
    /// queues; a queue used without it gets [`StorageConfig::DATA`] on first use). Only the first
    /// call has an effect.
    pub fn provision(&self, config: StorageConfig) -> Result<(), Error> {
        if self.core.storage.get().is_none() {
            let storage = Storage::new(config)?;
            let slots = storage.capacity();
            self.core.storage.call_once(|| storage);
            self.core.size_in_flight_table(slots);
        }
        Ok(())
    }

    /// Request slots of the queue (the most requests that can be built or in flight at once).
    pub fn slot_capacity(&self) -> usize {
        self.core.storage().capacity()
    }

    /// Drains the used ring: the interrupt handler's work, also used by pollers. Completes each
    /// finished request after the lock is dropped (waking its task or running its handler).
    /// Returns how many completed. Never allocates.
    pub fn handle_interrupt(&self) -> usize {
        self.core.drain()
    }

    /// Hands the queue to a poller or back to interrupts (see `QueueCore::set_polled`).
    pub fn set_polled(&self, polled: bool) {
        self.core.set_polled(polled)
    }

    /// Marks the queue broken and fails every request in flight with `error` (device reset
    /// needed, or it broke the protocol). Their memory stays with the queue (quarantined) until
    /// the device is reset. Callable from interrupt context.
    pub fn fail_all(&self, error: Error) {
        self.core.fail_all(error)
    }
}

impl<H: Hal> QueueCore<H> {
    pub fn index(&self) -> u16 {
        self.index
    }

    pub(crate) fn storage(&self) -> &Storage<H> {
        if let Some(storage) = self.storage.get() {
            return storage;
        }
        let storage = self.storage.call_once(|| {
            Storage::new(StorageConfig::DATA).expect("memory for a queue's request slots")
        });
        self.size_in_flight_table(storage.capacity());
        storage
    }

    /// Gives the in-flight table an entry per request slot (task context, once the request
    /// memory exists and before anything is posted).
    fn size_in_flight_table(&self, slots: usize) {
        let mut locked = self.locked.lock();
        if locked.posted.len() < slots {
            locked.posted.resize_with(slots, || None);
        }
    }

    pub fn set_kick_mode(&self, mode: KickMode) {
        self.kick_mode.store(mode as u8, Ordering::Relaxed);
    }

    pub fn kick_mode(&self) -> KickMode {
        if self.kick_mode.load(Ordering::Relaxed) == KickMode::Locked as u8 {
            KickMode::Locked
        } else {
            KickMode::Unlocked
        }
    }

    /// `reap=on|off`: whether a task about to sleep on one of this queue's requests first
    /// drains the queue itself (it collects answers whose interrupt has not come yet, and
    /// sleeps only if its own is not among them).
    pub fn set_reap(&self, on: bool) {
        self.reap.store(on, Ordering::Relaxed);
    }

    pub fn reaps(&self) -> bool {
        self.reap.load(Ordering::Relaxed)
    }

    /// Whether the queue lock is free right now (tests: a doorbell checks it is rung unlocked).
    #[cfg(test)]
    pub(crate) fn lock_is_free(&self) -> bool {
        self.locked.try_lock().is_some()
    }

    /// The queue lock's statistics (acquisitions, contention, wait and hold times).
    pub fn lock_stats(&self) -> crate::sync::LockStatSnapshot {
        self.locked.stats()
    }

    pub fn reset_lock_stats(&self) {
        self.locked.reset_stats()
    }

    /// Whether the queue is closed to new requests: the device broke its protocol, needs a
    /// reset or is being reset.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// The error a request gets from a closed queue: `DeviceReset` while its device is being
    /// recovered, `DeviceNeedsReset` otherwise (no device to recover it, or recovery failed).
    pub fn closed_error(&self) -> Error {
        match self.lifecycle.get().map(|l| l.check_open()) {
            Some(Err(e)) => e,
            // Open again: the recovery finished between the caller's closed check and this
            // one, so the device was reset meanwhile (retry), not left needing a reset.
            Some(Ok(())) => Error::DeviceReset,
            None => Error::DeviceNeedsReset,
        }
    }

    /// The device's DMA goes through an IOMMU: every drain that popped answers asks `check`
    /// first, and a fault fails those answers with its error and asks for a reset; requests
    /// failed by a reset give their mappings back once the device is reset. Only the first call
    /// has an effect. Task context (reserves memory).
    pub fn set_dma_fault_check(&self, check: DmaFaultCheck) {
        if self.dma_faults.get().is_none() {
            // At most one request per slot is in flight.
            let slots = self.storage().capacity();
            self.unshare_after_reset.lock().reserve(slots);
            self.dma_faults.call_once(|| check);
        }
    }

    /// Makes the queue part of a device: a protocol violation then asks `lifecycle` for a reset.
    pub fn attach_lifecycle(&self, lifecycle: Arc<dyn QueueOwner>) {
        self.lifecycle.call_once(|| lifecycle);
    }

    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns.load(Ordering::Relaxed)
    }

    /// Bounds every wait of a submitter (ring space, a free slot).
    pub fn set_timeout_ns(&self, ns: u64) {
        self.timeout_ns.store(ns, Ordering::Relaxed);
    }

    /// Hands the queue to a poller (`true`: the device is asked for no interrupts at all, and
    /// only [`CryptoQueue::handle_interrupt`] calls finish its requests) or back to interrupts
    /// (`false`, which drains what finished meanwhile). For measuring the device's own rate.
    pub(crate) fn set_polled(self: &Arc<Self>, polled: bool) {
        self.locked.lock().ring.set_polled(polled);
        if !polled {
            self.drain();
        }
    }

    /// Requests currently in flight (posted and not yet returned).
    pub fn in_flight(&self) -> usize {
        self.locked.lock().in_flight()
    }

    /// Request slots not free (being built, in flight, finished but not dropped, or kept for
    /// the device).
    pub fn slots_in_use(&self) -> usize {
        self.storage().slots_in_use()
    }

    /// Delivers `result` to the request in `slot` (after the queue lock is dropped): wakes its
    /// waiter or runs its handler, or releases an abandoned slot. `device_may_own`: failed
    /// without the device having returned it.
    fn complete(
        self: &Arc<Self>,
        slot: u16,
        handler: Option<Arc<dyn OnComplete<H>>>,
        result: Result<u32, Error>,
        device_may_own: bool,
    ) {
        let resets = self.resets.load(Ordering::Acquire);
        let finish = self
            .storage()
            .finish(slot, result, device_may_own, resets, handler.is_some());
        match (finish, handler) {
            (Finish::ToHandler { readable, writable }, Some(handler)) => {
                handler.on_complete(Finished {
                    core: self.clone(),
                    slot,
                    readable,
                    writable,
                });
            }
            (Finish::NotPosted, _) => {
                // The in-flight table only names posted slots.
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Arc-taking twin of `CryptoQueue::handle_interrupt`.
    pub(crate) fn drain(self: &Arc<Self>) -> usize {
        const BATCH: usize = 32;
        if self.is_broken() {
            // The bad entry stays at the head of the used ring; it was counted and reported once.
            return 0;
        }
        let mut total = 0;
        let mut first = true;
        loop {
            // Small entries, finished in place: a drain runs per interrupt and per poll, and
            // moving a batch of whole in-flight entries costs a memcpy of kilobytes each time.
            let mut done: heapless::Vec<Drained<H>, BATCH> = heapless::Vec::new();
            let mut broken = false;
            let mut empty = false;
            if let Some(iommu) = self.dma_faults.get() {
                iommu.popping();
            }
            {
                let mut guard = QueueGuard {
                    locked: self.locked.lock(),
                };
                if first {
                    // No interrupt per entry while this drain pops them (it ends with
                    // `enable_interrupts`).
                    guard.locked.ring.suppress_interrupts();
                    first = false;
                }
                while done.len() < BATCH - 1 {
                    match guard.pop() {
                        None if guard.locked.ring.enable_interrupts() => {
                            guard.locked.ring.suppress_interrupts()
                        }
                        None => {
                            empty = true;
                            break;
                        }
                        Some(Popped::Used(entry, len)) => {
                            let _ = done.push(Drained::new(entry, Ok(len), false));
                        }
                        Some(Popped::BadLength(entry, what)) => {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            let error = Error::MalformedCompletion { what };
                            let _ = done.push(Drained::new(entry, Err(error), false));
                        }
                        Some(Popped::NotInFlight) => {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            broken = true;
                            break;
                        }
                        Some(Popped::Unpoppable(entry)) => {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            // Not popped: the device may still use it.
                            let error = Error::MalformedCompletion {
                                what: "used entry could not be popped",
                            };
                            let _ = done.push(Drained::new(entry, Err(error), true));
                            broken = true;
                            break;
                        }
                    }
                }
                if broken {
                    self.broken.store(true, Ordering::Release);
                }
            }
            // With an IOMMU: a fault recorded before these answers were published makes them
            // untrustworthy (the device may have read or written garbage in place of the pages
            // it could not reach), so they fail with the fault and the device is reset.
            let mut faulted = false;
            if let Some(iommu) = self.dma_faults.get()
                && let Some(fault) = iommu.popped(!done.is_empty())
                && !done.is_empty()
            {
                for entry in done.iter_mut() {
                    entry.result = Err(fault);
                }
                faulted = true;
            }
            let finished = done.len();
            for entry in done.iter_mut() {
                let handler = entry.handler.take();
                self.complete(entry.slot, handler, entry.result, entry.device_may_own);
            }
            if faulted {
                self.counters
                    .completed
                    .fetch_add(finished as u64, Ordering::Relaxed);
                total += finished;
                if let Some(lifecycle) = self.lifecycle.get() {
                    // Closes every queue of the device, this one included.
                    QueueOwner::request_recovery(&**lifecycle);
                }
                self.close();
                break;
            }
            total += finished;
            self.counters
                .completed
                .fetch_add(finished as u64, Ordering::Relaxed);
            if broken {
                // The ring cannot be trusted: fail what is in flight (its memory stays
                // quarantined until a reset) and ask the device's recovery task for that reset.
                self.fail_all(Error::MalformedCompletion {
                    what: "used id is not a request in flight",
                });
                if let Some(lifecycle) = self.lifecycle.get() {
                    QueueOwner::request_recovery(&**lifecycle);
                }
                break;
            }
            if empty {
                break;
            }
        }
        if total > 0 {
            self.space.wake_all();
        }
        total
    }

    /// Free descriptors right now.
    pub fn free_descriptors(&self) -> usize {
        self.locked.lock().ring.free_descriptors()
    }
}
