//! The split virtqueue (virtio 1.2, 2.7) as this driver uses it: descriptors in, used entries
//! out, and the notification checks both ways. It knows regions of memory and tokens, nothing
//! of requests, slots or locks: the engine (`queue.rs`) holds a `Ring` behind its queue lock.
//!
//! virtio-drivers' `VirtQueue` keeps the descriptor table and its free list; this type adds
//! what it does not expose or gets wrong: the full 32-bit used id (it cuts ids to 16 bits), a
//! least used length per entry, the device's `avail_event` and the driver's `used_event`, and a
//! need-event check that is right across the 16-bit wrap. Its own indices (`popped`, `added`)
//! move in step with virtio-drivers' private ones.

use alloc::boxed::Box;
#[cfg(test)]
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Hal, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::error::Error;

/// Entries per virtqueue (QEMU's virtio-crypto offers 1024).
pub const QUEUE_SIZE: usize = 1024;

/// A piece of memory one descriptor points at: its address as the device sees it, and length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    pub addr: usize,
    pub len: usize,
}

/// One request's descriptors: its readable bytes, the caller's own source and destination if
/// it handed them over (zero copy; empty otherwise), its writable bytes; and the least used
/// length a correct answer has. Kept small: the in-flight table holds one per ring entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Regions {
    pub(crate) readable: Region,
    pub(crate) src: Region,
    pub(crate) dst: Region,
    pub(crate) writable: Region,
    pub(crate) min_used: u32,
}

impl Regions {
    /// Descriptors they take in the ring (one per non-empty region).
    pub(crate) fn descriptors(&self) -> usize {
        [self.readable, self.src, self.dst, self.writable]
            .iter()
            .filter(|r| r.len > 0)
            .count()
    }

    /// Bytes the device may write: the caller's destination, then the writable bytes.
    pub(crate) fn writable_len(&self) -> usize {
        self.dst.len + self.writable.len
    }
}

/// What [`Ring::pop`] found at the head of the used ring.
pub(crate) enum Popped<E> {
    /// An entry in flight, with a used length it may have.
    Used(E, u32),
    /// An entry in flight whose used length it cannot have (longer than its writable part, or
    /// shorter than the least it must write): the entry is off the ring; only it failed.
    BadLength(E, &'static str),
    /// An id that is not in flight: the ring cannot be trusted any more.
    NotInFlight,
    /// An entry in flight that virtio-drivers would not pop: the device may still use it.
    Unpoppable(E),
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

#[cfg(test)]
std::thread_local! {
    /// Runs at each of this thread's full barriers, after the fence: the host tests' model of a
    /// store buffer publishes the driver's ring stores to the fake device here, and only here.
    pub(crate) static AT_FULL_BARRIER: core::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { core::cell::RefCell::new(None) };
    /// Runs once, right after this thread's next kick-prepare read the device's NO_NOTIFY flag
    /// (or `avail_event`): the fake device acts in the window a weak memory order leaves there.
    pub(crate) static AFTER_NO_NOTIFY_READ: core::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { core::cell::RefCell::new(None) };
}

/// A full barrier (Linux's `virtio_mb`): the driver's stores before it (the avail index, the
/// `used_event`) are visible to the device before the driver's loads after it (the device's
/// NO_NOTIFY flag or `avail_event`, the used index). x86 lets a load pass an earlier store to
/// another address (its store buffer); only a full fence forbids it.
#[inline]
fn full_barrier() {
    core::sync::atomic::fence(Ordering::SeqCst);
    #[cfg(test)]
    AT_FULL_BARRIER.with(|h| {
        if let Some(publish) = h.borrow_mut().as_mut() {
            publish();
        }
    });
}

#[inline]
fn trace(_event: &'static str) {
    #[cfg(test)]
    TRACE.with(|t| t.borrow_mut().push(_event));
}

/// One virtqueue's rings. Every method must be called under the owner's queue lock.
pub(crate) struct Ring<H: Hal> {
    vq: Box<VirtQueue<H, QUEUE_SIZE>>,
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

/// The buffers of one request as `add` takes them: readable then writable, empty ones left
/// out (fixed arrays: no allocation, usable in interrupt context).
struct Slices<'a> {
    readable: [&'a [u8]; 2],
    writable: [&'a mut [u8]; 2],
    readable_count: usize,
    writable_count: usize,
}

/// Rebuilds the slices `add` was given from a request's regions.
///
/// # Safety
/// The regions must be valid memory for the returned lifetime and not otherwise accessed
/// meanwhile (a slot's memory and the caller's buffers it holds, owned by the device between
/// `add` and `pop_used`); the readable and writable regions must not overlap.
unsafe fn as_slices<'a>(regions: &Regions) -> Slices<'a> {
    let (src, dst) = (regions.src, regions.dst);
    let mut slices = Slices {
        readable: [&[], &[]],
        writable: [&mut [], &mut []],
        readable_count: 0,
        writable_count: 0,
    };
    for r in [regions.readable, src] {
        if r.len > 0 {
            // SAFETY: guaranteed by the caller.
            slices.readable[slices.readable_count] =
                unsafe { core::slice::from_raw_parts(r.addr as *const u8, r.len) };
            slices.readable_count += 1;
        }
    }
    for r in [dst, regions.writable] {
        if r.len > 0 {
            // SAFETY: guaranteed by the caller.
            slices.writable[slices.writable_count] =
                unsafe { core::slice::from_raw_parts_mut(r.addr as *mut u8, r.len) };
            slices.writable_count += 1;
        }
    }
    slices
}

impl<H: Hal> Ring<H> {
    /// Sets up virtqueue `index`'s rings on `transport` (between FEATURES_OK and DRIVER_OK).
    pub(crate) fn new<T: Transport>(
        transport: &mut T,
        index: u16,
        event_idx: bool,
    ) -> Result<Self, Error> {
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
        Ok(Ring {
            vq: Box::new(vq),
            view,
            popped: 0,
            added: 0,
            kicked: 0,
            event_idx,
            polled: false,
        })
    }

    pub(crate) fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Adds a request's descriptors and publishes them; returns its token.
    ///
    /// # Safety
    /// The regions must stay valid, and untouched by the CPU, until the token is popped (or the
    /// device is reset); the readable and writable regions must not overlap.
    pub(crate) unsafe fn add(&mut self, regions: &Regions) -> Result<u16, Error> {
        // SAFETY: the caller's contract.
        let token = unsafe {
            let mut s = as_slices(regions);
            self.vq.add(
                &s.readable[..s.readable_count],
                &mut s.writable[..s.writable_count],
            )
        };
        match token {
            Ok(token) => {
                trace("publish-avail");
                self.added = self.added.wrapping_add(1);
                Ok(token)
            }
            Err(virtio_drivers::Error::QueueFull) => Err(Error::QueueFull),
            Err(_) => Err(Error::MalformedCompletion {
                what: "virtqueue refused the request",
            }),
        }
    }

    /// Whether entries were added since the last kick-prepare.
    pub(crate) fn unkicked(&self) -> bool {
        self.added != self.kicked
    }

    /// Whether the device asked to be notified of new buffers (kick prepare). A full barrier
    /// first: the avail index was published by a store, and the device's NO_NOTIFY flag (or
    /// `avail_event`) is read by a load; without it the load may pass the store (x86's store
    /// buffer), the device may have re-enabled notifications after checking the old avail
    /// index, and both sides sleep (Linux's `virtio_mb()` at the start of
    /// `virtqueue_kick_prepare`). With EVENT_IDX the check covers every entry added since the
    /// last kick-prepare, mod 2^16 ([`need_event`]).
    pub(crate) fn kick_prepare(&mut self) -> bool {
        full_barrier();
        trace("mb");
        let notify = if self.event_idx {
            need_event(self.view.avail_event(), self.added, self.kicked)
        } else {
            self.vq.should_notify()
        };
        self.kicked = self.added;
        trace("read-no-notify");
        #[cfg(test)]
        if let Some(hook) = AFTER_NO_NOTIFY_READ.with(|h| h.borrow_mut().take()) {
            hook();
        }
        notify
    }

    /// Asks the device not to interrupt for used entries: a drain is running (it will see them)
    /// or a poller owns the queue.
    pub(crate) fn suppress_interrupts(&mut self) {
        if self.event_idx {
            // Half the index space ahead: the device publishes at most QUEUE_SIZE entries past
            // `popped` before the drain moves it, so it never reaches this.
            let far = self.popped.wrapping_add(0x8000);
            self.view.set_used_event(far);
        } else {
            self.vq.set_dev_notify(false);
        }
    }

    /// Hands the ring to a poller (no interrupts at all) or back.
    pub(crate) fn set_polled(&mut self, polled: bool) {
        self.polled = polled;
        if polled {
            self.suppress_interrupts();
        }
    }

    /// Asks for an interrupt at the next used entry (unless a poller owns the queue), then
    /// looks at the used ring once more: an entry published before the device could see the
    /// request is found here instead of waiting for an interrupt that will not come. The
    /// barrier orders the store of the request before the load of the used index (Linux's
    /// `virtqueue_enable_cb` followed by `virtqueue_poll`). Returns whether entries wait.
    pub(crate) fn enable_interrupts(&mut self) -> bool {
        #[cfg(test)]
        if let Some(hook) = BEFORE_ENABLE.with(|h| h.borrow_mut().take()) {
            hook();
        }
        if !self.polled {
            if self.event_idx {
                self.view.set_used_event(self.popped);
            } else {
                self.vq.set_dev_notify(true);
            }
            full_barrier();
        }
        self.vq.can_pop()
    }

    /// Pops the next used entry, if any. `take` detaches the entry posted under a token (`None`
    /// if that token is not in flight) and `regions` gives back what was posted for it. The
    /// full 32-bit id must be the token (virtio-drivers returns it cut to 16 bits), and the
    /// used length must fit the entry (at most its writable bytes, at least its `min_used`).
    pub(crate) fn pop<E>(
        &mut self,
        take: impl FnOnce(u16) -> Option<E>,
        regions: impl Fn(&E) -> &Regions,
    ) -> Option<Popped<E>> {
        let token = self.vq.peek_used()?;
        let raw_id = self.view.raw_id(self.popped);
        let Some(entry) = (raw_id == token as u32).then(|| take(token)).flatten() else {
            return Some(Popped::NotInFlight);
        };
        let posted = *regions(&entry);
        // SAFETY: these are the regions `add` posted under this token (the caller's table is
        // indexed by token), still owned by the caller.
        let used = unsafe {
            let mut s = as_slices(&posted);
            self.vq.pop_used(
                token,
                &s.readable[..s.readable_count],
                &mut s.writable[..s.writable_count],
            )
        };
        let Ok(len) = used else {
            return Some(Popped::Unpoppable(entry));
        };
        self.popped = self.popped.wrapping_add(1);
        if self.event_idx {
            // virtio-drivers just moved `used_event` to `popped`; the drain that pops wants no
            // interrupts until it is done.
            self.suppress_interrupts();
        }
        Some(if len as usize > posted.writable_len() {
            Popped::BadLength(entry, "used length longer than the buffers posted")
        } else if len < posted.min_used {
            Popped::BadLength(entry, "used length shorter than the reply")
        } else {
            Popped::Used(entry, len)
        })
    }

    /// Free descriptors right now.
    pub(crate) fn free_descriptors(&self) -> usize {
        self.vq.available_desc()
    }
}
