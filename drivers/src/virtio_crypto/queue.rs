//! One virtqueue with the lock discipline of the design (docs/ARCHITECTURE.md, "request path"):
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
//! most two descriptors (its readable bytes, its writable bytes), both inside the slot's memory.
//!
//! The queue's state lives in a [`QueueCore`] behind an `Arc`, so a [`Request`] can hold its
//! queue without borrowing it; [`CryptoQueue`] is the owner's handle.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use spin::Once;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::lifecycle::Lifecycle;
use super::request::{Request, RequestBuilder, Seal};
use super::slots::{OnComplete, Phase, Storage, StorageConfig};
use crate::error::Error;
use crate::sync::{IrqSpinLock, SpinGuard, WaitQueue, spinlock::IrqsOff};

/// Entries per virtqueue (QEMU's virtio-crypto offers 1024).
pub const QUEUE_SIZE: usize = 1024;

/// Doorbells one submitter rings at most for requests others added while it was ringing.
const MAX_RINGS_FOR_OTHERS: usize = 4;

/// How long a request (and a wait for ring space or a slot) may take before `Timeout`.
pub const DEFAULT_TIMEOUT_NS: u64 = 10_000_000_000;

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
    /// Doorbell rung with the lock held (the baseline the third seed replaced).
    Locked = 1,
}

/// One posted request, by token: its slot and the regions given to `add` (`pop_used` must get
/// the same ones back): the slot's readable bytes, then the caller's own buffers if it handed
/// some over (source, destination), then the slot's writable bytes.
#[derive(Clone, Copy)]
struct Posted {
    slot: u16,
    readable: (usize, usize),
    writable: (usize, usize),
    /// The caller's source and destination buffers (address, length), zero copy.
    external: Option<((usize, usize), (usize, usize))>,
    /// The least used length a correct answer has (the reply the device must write).
    min_used: u32,
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

/// Gives back the mappings of a request the ring no longer holds but `pop_used` never saw (failed
/// by a reset): the same regions and directions `VirtQueue::add` shared.
fn unshare_posted<H: Hal>(posted: &Posted) {
    let (src, dst) = posted.external.unwrap_or(((0, 0), (0, 0)));
    for ((addr, len), direction) in [
        (posted.readable, BufferDirection::DriverToDevice),
        (src, BufferDirection::DriverToDevice),
        (dst, BufferDirection::DeviceToDriver),
        (posted.writable, BufferDirection::DeviceToDriver),
    ] {
        if let (Some(ptr), true) = (NonNull::new(addr as *mut u8), len > 0) {
            // SAFETY: the region was shared by `add` for this request and is still allocated
            // (the slot or the caller's buffers the slot holds); the device was reset, so it no
            // longer reaches it.
            unsafe {
                H::unshare(
                    addr as PhysAddr,
                    NonNull::slice_from_raw_parts(ptr, len),
                    direction,
                )
            };
        }
    }
}

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
    /// What `post` did, in order, on this thread (tests check the barrier's place).
    pub(crate) static TRACE: core::cell::RefCell<Vec<&'static str>> =
        const { core::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
std::thread_local! {
    /// Runs once, under the queue lock, just before this thread's next drain asks for
    /// interrupts again (tests: a completion lands in the window the drain's re-check covers).
    pub(crate) static BEFORE_ENABLE: core::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { core::cell::RefCell::new(None) };
}

#[inline]
fn trace(_event: &'static str) {
    #[cfg(test)]
    TRACE.with(|t| t.borrow_mut().push(_event));
}

/// A popped used entry with its used length, or the protocol error (with the entry if it was
/// already detached).
type PopResult = Result<(Posted, u32), (Option<Posted>, Error)>;

/// The state behind the queue lock.
struct Ring<H: Hal> {
    vq: Box<VirtQueue<H, QUEUE_SIZE>>,
    in_flight: Vec<Option<Posted>>,
    view: RingView,
    /// Entries popped so far, mod 2^16: the used-ring slot of the next entry is this mod SIZE
    /// (it moves in step with virtio-drivers' private `last_used_idx`).
    popped: u16,
    /// Entries added so far, mod 2^16 (in step with virtio-drivers' private avail index).
    added: u16,
    /// `added` at the last kick-prepare: the "old" index of the EVENT_IDX need-event check.
    kicked: u16,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated: notifications both ways go by ring indices
    /// (`avail_event`, `used_event`) instead of flags.
    event_idx: bool,
    /// Interrupts stay off for good (a poller drains the queue: `bench limit`).
    polled: bool,
    /// A submitter is ringing the doorbell (unlocked kick mode). Others only add: the ringer
    /// looks at the ring again after its doorbell and rings once more for what they added.
    doorbell_pending: bool,
}

/// Whether a side that published index `new` (having last notified at `old`) must notify the
/// other, which asked to hear once the index passes `event` (virtio 1.1, 2.6.7.2 and 2.6.10.2).
/// Everything is mod 2^16: correct across the wrap of the 16-bit indices, and when several
/// entries were added since the last notification (`event` anywhere in `[old, new)`).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The check virtio-drivers 0.13 makes instead (`avail_idx >= avail_event + 1`): plain `>=` on
/// 16-bit indices, wrong once they wrap. Kept for the host test that shows the difference.
#[cfg(test)]
pub(crate) fn virtio_drivers_should_notify(event: u16, new: u16) -> bool {
    new >= event.wrapping_add(1)
}

/// What virtio-drivers does not expose of the rings: the full 32-bit id of a used element (it
/// returns the id cut to 16 bits, which would let an id of 0x1_0000 + t pass for token t), the
/// device's `avail_event` and the driver's `used_event`.
struct RingView {
    avail: NonNull<u8>,
    used: NonNull<u8>,
}

// SAFETY: both rings are DMA memory owned by the queue for its whole life; every access is
// volatile and made under the queue lock.
unsafe impl Send for RingView {}

impl RingView {
    const HEADER: usize = 4; // flags: u16, idx: u16
    const USED_ELEMENT: usize = 8; // id: u32, len: u32
    const AVAIL_ELEMENT: usize = 2; // head: u16
    const USED_LEN: usize = Self::HEADER + QUEUE_SIZE * Self::USED_ELEMENT + 2;
    const AVAIL_LEN: usize = Self::HEADER + QUEUE_SIZE * Self::AVAIL_ELEMENT + 2;

    fn raw_id(&self, popped: u16) -> u32 {
        let slot = popped as usize % QUEUE_SIZE;
        // SAFETY: `used` maps the whole used ring (USED_LEN bytes), see `Ring::new`.
        unsafe {
            core::ptr::read_volatile(
                self.used
                    .as_ptr()
                    .add(Self::HEADER + slot * Self::USED_ELEMENT)
                    .cast::<u32>(),
            )
        }
    }

    /// The device's `avail_event`: notify it once the avail index passes this.
    fn avail_event(&self) -> u16 {
        // SAFETY: the field after the used ring's elements, inside USED_LEN (see `Ring::new`).
        unsafe {
            core::ptr::read_volatile(
                self.used
                    .as_ptr()
                    .add(Self::HEADER + QUEUE_SIZE * Self::USED_ELEMENT)
                    .cast::<u16>(),
            )
        }
    }

    /// The driver's `used_event`: interrupt once the used index passes this.
    fn set_used_event(&self, index: u16) {
        // SAFETY: the field after the avail ring's elements, inside AVAIL_LEN (see `Ring::new`);
        // only the driver writes it, under the queue lock.
        unsafe {
            core::ptr::write_volatile(
                self.avail
                    .as_ptr()
                    .add(Self::HEADER + QUEUE_SIZE * Self::AVAIL_ELEMENT)
                    .cast::<u16>(),
                index,
            )
        }
    }
}

/// Passes everything to the real transport and remembers where queue `index`'s rings are.
struct RingFinder<'t, T: Transport> {
    transport: &'t mut T,
    index: u16,
    areas: Option<(PhysAddr, PhysAddr)>,
}

impl<T: Transport> Transport for RingFinder<'_, T> {
    fn device_type(&self) -> DeviceType {
        self.transport.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.transport.read_device_features()
    }
    fn write_driver_features(&mut self, features: u64) {
        self.transport.write_driver_features(features)
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.transport.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.transport.notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.transport.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.transport.set_status(status)
    }
    fn set_guest_page_size(&mut self, size: u32) {
        self.transport.set_guest_page_size(size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.transport.requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        if queue == self.index {
            self.areas = Some((driver_area, device_area));
        }
        self.transport
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.transport.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.transport.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.transport.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.transport.read_config_generation()
    }
    fn read_config_space<V: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<V> {
        self.transport.read_config_space(offset)
    }
    fn write_config_space<V: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> virtio_drivers::Result<()> {
        self.transport.write_config_space(offset, value)
    }
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
    /// What the akcipher checks did with the device's answers.
    pub akcipher: super::akcipher::AkcipherCounters,
}

/// One virtqueue of the crypto device: the owner's handle (the kernel keeps it in the device;
/// requests hold the [`QueueCore`] it shares).
pub struct CryptoQueue<H: Hal> {
    core: Arc<QueueCore<H>>,
}

/// A queue's state: ring, doorbell, request memory, counters.
pub struct QueueCore<H: Hal> {
    index: u16,
    ring: IrqSpinLock<Ring<H>>,
    doorbell: Box<dyn Notify>,
    /// Tasks waiting for free descriptors.
    space: WaitQueue,
    storage: Once<Storage<H>>,
    kick_mode: AtomicU8,
    /// Closed to new requests: the device broke the protocol or is being reset.
    broken: AtomicBool,
    /// How long a submitter may wait for ring space or a slot.
    timeout_ns: AtomicU64,
    /// The device's lifecycle, once the queue belongs to a device: a protocol violation asks it
    /// for a reset, and a closed queue reports its state.
    lifecycle: Once<Arc<Lifecycle>>,
    /// The IOMMU's fault check, when the device's DMA goes through one (`set_dma_fault_check`).
    dma_faults: Once<DmaFaultCheck>,
    /// With an IOMMU: requests failed while the device could still reach them, whose mappings
    /// are given back once it is reset (capacity for every request slot, reserved up front: filled
    /// from interrupt context).
    unshare_after_reset: IrqSpinLock<Vec<Posted>>,
    pub counters: QueueCounters,
}

/// Access to the ring while the queue lock is held: add, kick-prepare and drain, nothing else.
pub struct QueueGuard<'a, H: Hal> {
    ring: SpinGuard<'a, Ring<H>, IrqsOff>,
}

/// The buffers of one request as `add` takes them: readable then writable, empty ones left
/// out (fixed arrays: no allocation, usable in interrupt context).
struct Slices<'a> {
    readable: [&'a [u8]; 2],
    writable: [&'a mut [u8]; 2],
    readable_count: usize,
    writable_count: usize,
}

/// Rebuilds the slices `add` was given from a posted request's regions.
///
/// # Safety
/// The regions must be valid memory for the returned lifetime and not otherwise accessed
/// meanwhile (a slot's memory and the caller's buffers it holds, owned by the device between
/// `add` and `pop_used`); the readable and writable regions must not overlap.
unsafe fn as_slices<'a>(posted: &Posted) -> Slices<'a> {
    let (src, dst) = match posted.external {
        Some((src, dst)) => (src, dst),
        None => ((0, 0), (0, 0)),
    };
    let mut slices = Slices {
        readable: [&[], &[]],
        writable: [&mut [], &mut []],
        readable_count: 0,
        writable_count: 0,
    };
    for (addr, len) in [posted.readable, src] {
        if len > 0 {
            // SAFETY: guaranteed by the caller.
            slices.readable[slices.readable_count] =
                unsafe { core::slice::from_raw_parts(addr as *const u8, len) };
            slices.readable_count += 1;
        }
    }
    for (addr, len) in [dst, posted.writable] {
        if len > 0 {
            // SAFETY: guaranteed by the caller.
            slices.writable[slices.writable_count] =
                unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) };
            slices.writable_count += 1;
        }
    }
    slices
}

impl Posted {
    /// Descriptors the request takes in the ring (one per non-empty region).
    fn descriptors(&self) -> usize {
        let (src, dst) = self.external.unwrap_or(((0, 0), (0, 0)));
        [self.readable, src, dst, self.writable]
            .iter()
            .filter(|(_, len)| *len > 0)
            .count()
    }

    /// Bytes the device may write: the caller's destination, then the slot's writable part.
    fn writable_len(&self) -> usize {
        self.external.map_or(0, |(_, (_, len))| len) + self.writable.1
    }
}

impl<H: Hal> QueueGuard<'_, H> {
    /// Adds the request's descriptors and records it as in flight under its token.
    fn add(&mut self, posted: Posted) -> Result<u16, Error> {
        // SAFETY: the regions are the slot's memory, which stays allocated (the queue owns it)
        // and untouched by the CPU while the slot is `InFlight`/`Abandoned`, until `pop` hands
        // it back after the device used it (module invariants of `slots`).
        let token = unsafe {
            let mut s = as_slices(&posted);
            self.ring.vq.add(
                &s.readable[..s.readable_count],
                &mut s.writable[..s.writable_count],
            )
        };
        match token {
            Ok(token) => {
                trace("publish-avail");
                self.ring.added = self.ring.added.wrapping_add(1);
                self.ring.in_flight[token as usize] = Some(posted);
                Ok(token)
            }
            Err(virtio_drivers::Error::QueueFull) => Err(Error::QueueFull),
            Err(_) => Err(Error::MalformedCompletion {
                what: "virtqueue refused the request",
            }),
        }
    }

    /// Whether the device asked to be notified of new buffers (kick prepare). A full barrier
    /// first: the avail index was published by a store, and the device's NO_NOTIFY flag (or
    /// `avail_event`) is read by a load; without it the load may pass the store (x86's store
    /// buffer), the device may have re-enabled notifications after checking the old avail
    /// index, and both sides sleep (Linux's `virtio_mb()` at the start of
    /// `virtqueue_kick_prepare`). With EVENT_IDX the check covers every entry added since the
    /// last kick-prepare, mod 2^16 ([`need_event`]).
    fn kick_prepare(&mut self) -> bool {
        core::sync::atomic::fence(Ordering::SeqCst);
        trace("mb");
        let ring = &mut *self.ring;
        let notify = if ring.event_idx {
            need_event(ring.view.avail_event(), ring.added, ring.kicked)
        } else {
            ring.vq.should_notify()
        };
        ring.kicked = ring.added;
        trace("read-no-notify");
        notify
    }

    /// Asks the device not to interrupt for used entries: a drain is running (it will see them)
    /// or a poller owns the queue.
    fn suppress_interrupts(&mut self) {
        if self.ring.event_idx {
            // Half the index space ahead: the device publishes at most QUEUE_SIZE entries past
            // `popped` before the drain moves it, so it never reaches this.
            let far = self.ring.popped.wrapping_add(0x8000);
            self.ring.view.set_used_event(far);
        } else {
            self.ring.vq.set_dev_notify(false);
        }
    }

    /// Asks for an interrupt at the next used entry (unless a poller owns the queue), then
    /// looks at the used ring once more: an entry published before the device could see the
    /// request is found here instead of waiting for an interrupt that will not come. The
    /// barrier orders the store of the request before the load of the used index (Linux's
    /// `virtqueue_enable_cb` followed by `virtqueue_poll`). Returns whether entries wait.
    fn enable_interrupts(&mut self) -> bool {
        #[cfg(test)]
        if let Some(hook) = BEFORE_ENABLE.with(|h| h.borrow_mut().take()) {
            hook();
        }
        if !self.ring.polled {
            if self.ring.event_idx {
                self.ring.view.set_used_event(self.ring.popped);
            } else {
                self.ring.vq.set_dev_notify(true);
            }
            core::sync::atomic::fence(Ordering::SeqCst);
        }
        self.ring.vq.can_pop()
    }

    /// Pops the next used entry, if any, with its request. `Err` means the device broke the
    /// protocol (an id that is not a request in flight, or an entry that cannot be popped): the
    /// ring can no longer be trusted; a request already detached comes back with the error.
    fn pop(&mut self) -> Option<PopResult> {
        let token = self.ring.vq.peek_used()?;
        // virtio-drivers returns the 32-bit id cut to 16 bits: check the full id ourselves.
        let raw_id = self.ring.view.raw_id(self.ring.popped);
        let entry = (raw_id == token as u32)
            .then(|| {
                self.ring
                    .in_flight
                    .get_mut(token as usize)
                    .and_then(Option::take)
            })
            .flatten();
        let Some(entry) = entry else {
            return Some(Err((
                None,
                Error::MalformedCompletion {
                    what: "used id is not a request in flight",
                },
            )));
        };
        // SAFETY: these are the regions `add` posted under this token (the in-flight table is
        // indexed by token), still owned by the queue.
        let used = unsafe {
            let mut s = as_slices(&entry);
            self.ring.vq.pop_used(
                token,
                &s.readable[..s.readable_count],
                &mut s.writable[..s.writable_count],
            )
        };
        Some(match used {
            Ok(len) => {
                self.ring.popped = self.ring.popped.wrapping_add(1);
                if self.ring.event_idx {
                    // virtio-drivers just moved `used_event` to `popped`; the drain that pops
                    // wants no interrupts until it is done.
                    self.suppress_interrupts();
                }
                Ok((entry, len))
            }
            Err(_) => Err((
                Some(entry),
                Error::MalformedCompletion {
                    what: "used entry could not be popped",
                },
            )),
        })
    }

    fn free_descriptors(&self) -> usize {
        self.ring.vq.available_desc()
    }

    /// Detaches one request still in flight, if any (the queue is broken).
    fn take_any(&mut self) -> Option<Posted> {
        self.ring.in_flight.iter_mut().find_map(Option::take)
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
        Ok(CryptoQueue {
            core: Arc::new(QueueCore {
                index,
                ring: IrqSpinLock::new("virtqueue", ring),
                doorbell,
                space: WaitQueue::new(),
                storage: Once::new(),
                kick_mode: AtomicU8::new(KickMode::Unlocked as u8),
                broken: AtomicBool::new(false),
                timeout_ns: AtomicU64::new(DEFAULT_TIMEOUT_NS),
                lifecycle: Once::new(),
                dma_faults: Once::new(),
                unshare_after_reset: IrqSpinLock::new("unshare-after-reset", Vec::new()),
                counters: QueueCounters::default(),
            }),
        })
    }
}

impl<H: Hal> Ring<H> {
    /// Sets up virtqueue `index`'s rings on `transport`.
    fn new<T: Transport>(transport: &mut T, index: u16, event_idx: bool) -> Result<Self, Error> {
        let mut finder = RingFinder {
            transport,
            index,
            areas: None,
        };
        let vq = VirtQueue::<H, QUEUE_SIZE>::new(&mut finder, index, false, event_idx).map_err(
            |_| Error::NotSupported {
                what: "a virtqueue of 1024 entries",
            },
        )?;
        let (driver_area, device_area) = finder.areas.ok_or(Error::NotSupported {
            what: "a queue without rings",
        })?;
        // SAFETY: the areas are the avail and used rings virtio-drivers just allocated for this
        // queue; translating them gives memory that lives as long as the queue.
        let view = unsafe {
            RingView {
                avail: H::mmio_phys_to_virt(driver_area, RingView::AVAIL_LEN),
                used: H::mmio_phys_to_virt(device_area, RingView::USED_LEN),
            }
        };
        let in_flight = (0..QUEUE_SIZE).map(|_| None).collect();
        Ok(Ring {
            vq: Box::new(vq),
            in_flight,
            view,
            popped: 0,
            added: 0,
            kicked: 0,
            event_idx,
            polled: false,
            doorbell_pending: false,
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
            self.core.storage.call_once(|| storage);
        }
        Ok(())
    }

    /// Takes a slot for a request of `readable + writable` bytes (sleeping while every slot is
    /// in use) and returns its builder. No allocation for requests that fit the queue's
    /// preallocated memory.
    pub fn reserve(&self, readable: usize, writable: usize) -> Result<RequestBuilder<H>, Error> {
        if readable + writable == 0 {
            return Err(Error::EmptyRequest);
        }
        if self.is_broken() {
            return Err(self.closed_error());
        }
        let deadline = crate::sync::platform::get()
            .now_ns()
            .saturating_add(self.timeout_ns());
        let (slot, base) = self
            .core
            .storage()
            .reserve(readable, writable, &|| self.is_broken(), deadline)
            .map_err(|e| match e {
                Error::DeviceNeedsReset => self.closed_error(),
                e => e,
            })?;
        if self.is_broken() {
            let _none = self.core.storage().release(slot, false);
            return Err(self.closed_error());
        }
        Ok(RequestBuilder::new(
            self.core.clone(),
            slot,
            base,
            readable,
            writable,
        ))
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
        self.storage.call_once(|| {
            Storage::new(StorageConfig::DATA).expect("memory for a queue's request slots")
        })
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

    /// Whether the queue lock is free right now (tests: a doorbell checks it is rung unlocked).
    #[cfg(test)]
    pub(crate) fn lock_is_free(&self) -> bool {
        self.ring.try_lock().is_some()
    }

    /// The queue lock's statistics (acquisitions, contention, wait and hold times).
    pub fn lock_stats(&self) -> crate::sync::LockStatSnapshot {
        self.ring.stats()
    }

    pub fn reset_lock_stats(&self) {
        self.ring.reset_stats()
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
            let slots = self.storage().config.slots;
            self.unshare_after_reset.lock().reserve(slots);
            self.dma_faults.call_once(|| check);
        }
    }

    /// Makes the queue part of a device: a protocol violation then asks `lifecycle` for a reset.
    pub fn attach_lifecycle(&self, lifecycle: Arc<Lifecycle>) {
        self.lifecycle.call_once(|| lifecycle);
    }

    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns.load(Ordering::Relaxed)
    }

    /// Bounds every wait of a submitter (ring space, a free slot).
    pub fn set_timeout_ns(&self, ns: u64) {
        self.timeout_ns.store(ns, Ordering::Relaxed);
    }

    /// Closes the queue to new requests and wakes every submitter waiting for space or a slot
    /// (they get [`closed_error`](Self::closed_error)). Requests in flight stay in flight: the
    /// device may still own their memory. Any context.
    pub fn close(&self) {
        self.broken.store(true, Ordering::Release);
        // Take and drop the queue lock: a submitter that checked `broken` under it before the
        // store above has finished its add, so the in-flight table is final for `fail_after_reset`.
        drop(self.ring.lock());
        self.space.wake_all();
        if let Some(storage) = self.storage.get() {
            storage.wake_all();
        }
    }

    /// After the device was reset (status 0 read back: it reaches no request memory any more):
    /// fails every request still in flight with `error` and frees the memory of every request
    /// the device held (in flight, abandoned by a timed-out waiter, or quarantined). Returns
    /// how many requests were in flight. Task context. The queue must be closed.
    pub fn fail_after_reset(self: &Arc<Self>, error: Error) -> usize {
        let mut failed = 0;
        let iommu = self.dma_faults.get().is_some();
        while let Some(entry) = self.detach_one() {
            if iommu {
                unshare_posted::<H>(&entry);
            }
            self.complete(entry.slot, Err(error), false);
            failed += 1;
        }
        let parked = core::mem::take(&mut *self.unshare_after_reset.lock());
        for entry in &parked {
            unshare_posted::<H>(entry);
        }
        self.storage().reclaim_after_reset();
        if iommu {
            // Keep the reservation for the next reset (this is task context).
            let mut list = self.unshare_after_reset.lock();
            *list = parked;
            list.clear();
        }
        failed
    }

    /// Replaces the ring with a fresh one set up on `transport` (after a reset, between
    /// FEATURES_OK and DRIVER_OK); the request slots stay. Nothing may be in flight
    /// ([`fail_after_reset`](Self::fail_after_reset) first). The queue stays closed until
    /// [`reopen`](Self::reopen).
    pub fn rebuild<T: Transport>(&self, transport: &mut T) -> Result<(), Error> {
        let event_idx = self.ring.lock().event_idx;
        let fresh = Ring::<H>::new(transport, self.index, event_idx)?;
        let old = {
            let mut ring = self.ring.lock();
            if ring.in_flight.iter().any(Option::is_some) {
                return Err(Error::NotSupported {
                    what: "rebuilding a queue with requests in flight",
                });
            }
            core::mem::replace(&mut *ring, fresh)
        };
        drop(old); // outside the lock: frees the old rings' DMA memory
        Ok(())
    }

    /// Hands the queue to a poller (`true`: the device is asked for no interrupts at all, and
    /// only [`CryptoQueue::handle_interrupt`] calls finish its requests) or back to interrupts
    /// (`false`, which drains what finished meanwhile). For measuring the device's own rate.
    pub(crate) fn set_polled(self: &Arc<Self>, polled: bool) {
        {
            let mut guard = QueueGuard {
                ring: self.ring.lock(),
            };
            guard.ring.polled = polled;
            if polled {
                guard.suppress_interrupts();
            }
        }
        if !polled {
            self.drain();
        }
    }

    /// Opens a rebuilt queue to new requests.
    pub fn reopen(&self) {
        self.broken.store(false, Ordering::Release);
    }

    /// Requests currently in flight (posted and not yet returned).
    pub fn in_flight(&self) -> usize {
        self.ring
            .lock()
            .in_flight
            .iter()
            .filter(|e| e.is_some())
            .count()
    }

    /// Request slots not free (being built, in flight, finished but not dropped, or kept for
    /// the device).
    pub fn slots_in_use(&self) -> usize {
        self.storage().slots_in_use()
    }

    /// After a device reset: memory of requests failed while the device had them is reusable.
    pub fn reclaim_after_reset(&self) -> usize {
        self.storage().reclaim_after_reset()
    }

    /// Marks a built request (slot in `Building`) in flight with its handler and returns what
    /// the ring needs of it, with the device generation it is bound to. In flight before the
    /// add: the device may answer before `add` returns.
    fn prepare(
        &self,
        slot: u16,
        seal: Seal,
        handler: Option<Arc<dyn OnComplete<H>>>,
    ) -> (Posted, Option<u64>) {
        let storage = self.storage();
        let mut st = storage.slots[slot as usize].state.lock();
        let (base, _) = storage.region(slot, &st);
        let posted = Posted {
            slot,
            readable: (base, st.readable),
            writable: (base + st.readable, st.writable),
            external: st.external.as_ref().map(|b| {
                (
                    (b.src.as_ptr() as usize, b.src.len()),
                    (b.dst.as_ptr() as usize, b.dst.len()),
                )
            }),
            min_used: seal.min_used,
        };
        st.phase = Phase::InFlight;
        st.on_complete = handler;
        st.min_used = seal.min_used;
        st.generation = seal.generation;
        (posted, seal.generation)
    }

    /// Undoes `prepare` for a request that was not added: back in `Building`, owned by the
    /// caller; its handler is dropped outside the slot lock.
    fn unprepare(&self, slot: u16) {
        let handler = {
            let mut st = self.storage().slots[slot as usize].state.lock();
            st.phase = Phase::Building;
            st.on_complete.take()
        };
        drop(handler);
    }

    /// Adds a prepared request unless the queue is closed or the request's generation is gone.
    /// Checked under the lock: `fail_all`/`close` set `broken` before draining under the same
    /// lock, so a request is either drained by them or refused here, never stranded.
    fn admit(
        &self,
        guard: &mut QueueGuard<'_, H>,
        posted: Posted,
        generation: Option<u64>,
    ) -> Result<u16, Error> {
        let stale = match (generation, self.lifecycle.get()) {
            (Some(g), Some(l)) => g != l.generation(),
            _ => false,
        };
        if self.is_broken() {
            Err(self.closed_error())
        } else if stale {
            Err(Error::SessionLost)
        } else {
            let token = guard.add(posted)?;
            self.counters.submitted.fetch_add(1, Ordering::Relaxed);
            Ok(token)
        }
    }

    /// Ends a lock hold after requests were added (`unkicked` of them since the last
    /// kick-prepare): asks whether the device wants a doorbell and rings it after dropping the
    /// lock (or, for the `Locked` baseline, before).
    ///
    /// Unlocked, one submitter rings at a time: one that finds a doorbell pending only adds
    /// (its requests ride on it), and the ringer, once its doorbell returns, looks at the ring
    /// again under the lock and rings once more if anything was added meanwhile and the device
    /// wants to hear. A doorbell is a trip into QEMU that waits for its global lock, so the
    /// requests of every CPU that add during one share the next.
    fn kick(&self, mut guard: QueueGuard<'_, H>, unkicked: usize) {
        if unkicked == 0 {
            return;
        }
        if self.kick_mode() == KickMode::Locked {
            if guard.kick_prepare() {
                self.ring_doorbell();
            }
            return;
        }
        if guard.ring.doorbell_pending {
            self.counters.rode_doorbell.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !guard.kick_prepare() {
            return;
        }
        guard.ring.doorbell_pending = true;
        drop(guard);
        // Bounded: a ringer (perhaps in interrupt context) is not kept ringing for others for
        // ever. Its last doorbell covers what was added until it cleared the flag; whoever adds
        // after that rings for itself.
        for _ in 0..MAX_RINGS_FOR_OTHERS {
            self.ring_doorbell();
            let mut guard = QueueGuard {
                ring: self.ring.lock(),
            };
            let more = guard.ring.added != guard.ring.kicked;
            if !more || !guard.kick_prepare() {
                guard.ring.doorbell_pending = false;
                return;
            }
        }
        self.ring.lock().doorbell_pending = false;
        self.ring_doorbell();
    }

    /// Posts a built request (slot in `Building`): marks it in flight, adds its descriptors under
    /// the queue lock, rings the doorbell after it. While the ring is full it waits (`wait`) for
    /// space, at most the queue's timeout (`Timeout`), and gives up when the queue is closed
    /// (`DeviceReset` while the device is being reset). On error the slot is back in
    /// `Building`, owned by the caller.
    pub(crate) fn post(
        self: &Arc<Self>,
        slot: u16,
        seal: Seal,
        handler: Option<Arc<dyn OnComplete<H>>>,
        wait: SpaceWait,
    ) -> Result<(), Error> {
        let (posted, generation) = self.prepare(slot, seal, handler);
        let descriptors = posted.descriptors();
        let platform = crate::sync::platform::get();
        let deadline = platform.now_ns().saturating_add(self.timeout_ns());
        let error = loop {
            let mut guard = QueueGuard {
                ring: self.ring.lock(),
            };
            match self.admit(&mut guard, posted, generation) {
                Ok(_token) => {
                    self.kick(guard, 1);
                    return Ok(());
                }
                Err(Error::QueueFull) if wait == SpaceWait::Never => {
                    drop(guard);
                    self.counters.full_waits.fetch_add(1, Ordering::Relaxed);
                    break Error::QueueFull;
                }
                Err(Error::QueueFull) => {
                    drop(guard);
                    self.counters.full_waits.fetch_add(1, Ordering::Relaxed);
                    let space = || {
                        (self.is_broken() || self.ring.lock().vq.available_desc() >= descriptors)
                            .then_some(())
                    };
                    let waited = match wait {
                        SpaceWait::Sleep => self.space.wait_until_deadline(space, deadline).is_ok(),
                        SpaceWait::Never => false,
                        SpaceWait::Poll => loop {
                            self.drain();
                            if space().is_some() {
                                break true;
                            }
                            if platform.now_ns() >= deadline {
                                break false;
                            }
                            core::hint::spin_loop();
                        },
                    };
                    if !waited {
                        break Error::Timeout;
                    }
                }
                Err(e) => {
                    drop(guard);
                    break e;
                }
            }
        };
        self.unprepare(slot);
        Err(error)
    }

    /// Posts built requests (slots in `Building`) in order, completion collected by waiting:
    /// added under as few lock holds as the ring allows, with one kick-prepare (and at most one
    /// doorbell) at the end instead of one per request. A full ring rings for what was added,
    /// then waits for space like [`post`](Self::post). Returns how many were posted (a prefix
    /// of `slots`) and the error that stopped the rest, whose slots are back in `Building`.
    pub(crate) fn post_batch(
        self: &Arc<Self>,
        slots: &[(u16, Seal)],
    ) -> (usize, Result<(), Error>) {
        const CHUNK: usize = 32;
        let mut done = 0;
        let mut unkicked = 0;
        while done < slots.len() {
            let chunk = &slots[done..(done + CHUNK).min(slots.len())];
            let mut prepared: heapless::Vec<(Posted, Option<u64>), CHUNK> = heapless::Vec::new();
            for &(slot, seal) in chunk {
                let _ = prepared.push(self.prepare(slot, seal, None));
            }
            let mut guard = QueueGuard {
                ring: self.ring.lock(),
            };
            let mut added = 0;
            let mut error = None;
            for &(posted, generation) in &prepared {
                match self.admit(&mut guard, posted, generation) {
                    Ok(_token) => added += 1,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            unkicked += added;
            if done + added == slots.len() || error.is_some() {
                self.kick(guard, unkicked);
                unkicked = 0;
            } else {
                // The doorbell waits for the last chunk (the device sees these then).
                drop(guard);
            }
            for &(posted, _) in &prepared[added..] {
                self.unprepare(posted.slot);
            }
            done += added;
            match error {
                None => {}
                // Wait for space with the next request, then go on in batches.
                Some(Error::QueueFull) => {
                    match self.post(slots[done].0, slots[done].1, None, SpaceWait::Sleep) {
                        Ok(()) => done += 1,
                        Err(e) => return (done, Err(e)),
                    }
                }
                Some(e) => return (done, Err(e)),
            }
        }
        (done, Ok(()))
    }

    fn ring_doorbell(&self) {
        self.counters.notifies.fetch_add(1, Ordering::Relaxed);
        self.doorbell.notify();
    }

    /// Delivers `result` to the request in `slot` (after the queue lock is dropped): wakes its
    /// waiter or runs its handler, or releases an abandoned slot. `device_may_own`: failed
    /// without the device having returned it.
    fn complete(self: &Arc<Self>, slot: u16, result: Result<u32, Error>, device_may_own: bool) {
        let storage = self.storage();
        let mut st = storage.slots[slot as usize].state.lock();
        match st.phase {
            Phase::InFlight => {
                if !device_may_own {
                    // The slot's writable bytes the device did not write (all of them on a
                    // failure) still hold an earlier request's: zero them before anyone can
                    // read them. (A caller's own destination comes first and is its own.)
                    let before = st.external.as_ref().map_or(0, |b| b.dst.len());
                    let written = match result {
                        Ok(len) => (len as usize).saturating_sub(before).min(st.writable),
                        Err(_) => 0,
                    };
                    let (base, _) = storage.region(slot, &st);
                    let tail = st.writable - written;
                    // SAFETY: the device returned the request (or never had it), so the slot's
                    // region is the CPU's; this is inside its writable part, which `reserve`
                    // sized; the slot lock is held, so no owner reads it meanwhile.
                    unsafe {
                        core::ptr::write_bytes((base + st.readable + written) as *mut u8, 0, tail);
                    }
                }
                st.outcome = Some(result);
                st.device_may_own = device_may_own;
                st.phase = Phase::Done;
                if let Some(handler) = st.on_complete.take() {
                    let (readable, writable) = (st.readable, st.writable);
                    drop(st);
                    handler.on_complete(Request::for_handler(
                        self.clone(),
                        slot,
                        readable,
                        writable,
                    ));
                } else if let Some(waiter) = &st.waiter {
                    // Woken under the slot lock: the waiter removes its own registration under
                    // the same lock, so the `Arc` is never dropped here.
                    waiter.wake();
                }
            }
            Phase::Abandoned if device_may_own => st.phase = Phase::Quarantined,
            Phase::Abandoned => {
                drop(st);
                let _none = storage.release(slot, false);
            }
            _ => {
                // The in-flight table only names InFlight/Abandoned slots.
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
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
            let mut done: heapless::Vec<(u16, Result<u32, Error>, bool), BATCH> =
                heapless::Vec::new();
            let mut broken = false;
            let mut empty = false;
            if let Some(iommu) = self.dma_faults.get() {
                iommu.popping();
            }
            {
                let mut guard = QueueGuard {
                    ring: self.ring.lock(),
                };
                if first {
                    // No interrupt per entry while this drain pops them (it ends with
                    // `enable_interrupts`).
                    guard.suppress_interrupts();
                    first = false;
                }
                while done.len() < BATCH - 1 {
                    match guard.pop() {
                        None if guard.enable_interrupts() => guard.suppress_interrupts(),
                        None => {
                            empty = true;
                            break;
                        }
                        Some(Ok((entry, len))) => {
                            let result = if len as usize > entry.writable_len() {
                                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                                Err(Error::MalformedCompletion {
                                    what: "used length longer than the buffers posted",
                                })
                            } else if len < entry.min_used {
                                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                                Err(Error::MalformedCompletion {
                                    what: "used length shorter than the reply",
                                })
                            } else {
                                Ok(len)
                            };
                            let _ = done.push((entry.slot, result, false));
                        }
                        Some(Err((entry, error))) => {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            if let Some(entry) = entry {
                                // Not popped: the device may still use it.
                                let _ = done.push((entry.slot, Err(error), true));
                            }
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
                    entry.1 = Err(fault);
                }
                faulted = true;
            }
            let finished = done.len();
            for (slot, result, device_may_own) in done {
                self.complete(slot, result, device_may_own);
            }
            if faulted {
                self.counters
                    .completed
                    .fetch_add(finished as u64, Ordering::Relaxed);
                total += finished;
                self.close();
                if let Some(lifecycle) = self.lifecycle.get() {
                    lifecycle.request_recovery();
                }
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
                    lifecycle.request_recovery();
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

    /// See [`CryptoQueue::fail_all`].
    pub(crate) fn fail_all(self: &Arc<Self>, error: Error) {
        self.broken.store(true, Ordering::Release);
        // One at a time, completing outside the lock: no allocation, usable from interrupts.
        while let Some(entry) = self.detach_one() {
            if self.dma_faults.get().is_some() {
                // Mapped until the reset: the device may still use it.
                let mut list = self.unshare_after_reset.lock();
                if list.len() < list.capacity() {
                    list.push(entry);
                }
            }
            self.complete(entry.slot, Err(error), true);
        }
        self.space.wake_all();
        if let Some(storage) = self.storage.get() {
            storage.wake_all();
        }
    }

    /// Takes one in-flight request off the ring (the guard is dropped before returning).
    fn detach_one(&self) -> Option<Posted> {
        QueueGuard {
            ring: self.ring.lock(),
        }
        .take_any()
    }

    /// Free descriptors right now.
    pub fn free_descriptors(&self) -> usize {
        QueueGuard {
            ring: self.ring.lock(),
        }
        .free_descriptors()
    }
}
