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
//! nothing depends on the 16-bit indices not wrapping.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Hal, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::error::Error;
use crate::sync::{Completion, IrqSpinLock, SpinGuard, WaitQueue, spinlock::IrqsOff};

/// Entries per virtqueue (QEMU's virtio-crypto offers 1024).
pub const QUEUE_SIZE: usize = 1024;

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

/// The buffers of one request: device-readable parts first, then device-writable ones. Owned by
/// the queue while the device has them, handed back through the completion.
pub struct Buffers {
    pub readable: heapless::Vec<Vec<u8>, 3>,
    pub writable: heapless::Vec<Vec<u8>, 2>,
}

impl Buffers {
    /// Pointers to the buffers' heap storage (writable ones derived from mutable borrows).
    fn pointers(
        &mut self,
    ) -> (
        heapless::Vec<NonNull<[u8]>, 3>,
        heapless::Vec<NonNull<[u8]>, 2>,
    ) {
        let readable = self
            .readable
            .iter()
            .map(|b| NonNull::from(b.as_slice()))
            .collect();
        let writable = self
            .writable
            .iter_mut()
            .map(|b| NonNull::from(b.as_mut_slice()))
            .collect();
        (readable, writable)
    }

    fn writable_len(&self) -> usize {
        self.writable.iter().map(|b| b.len()).sum()
    }
}

/// What a finished request gives back: its buffers, and the used length or why it failed.
pub struct Finished {
    pub buffers: Buffers,
    pub result: Result<u32, Error>,
}

/// The completion a submitter waits on.
pub type RequestCompletion = Completion<Finished>;

struct InFlight {
    buffers: Buffers,
    completion: Arc<RequestCompletion>,
}

/// The state behind the queue lock.
struct Ring<H: Hal> {
    vq: Box<VirtQueue<H, QUEUE_SIZE>>,
    in_flight: Vec<Option<InFlight>>,
    used: UsedRing,
    /// Entries popped so far, mod 2^16: the used-ring slot of the next entry is this mod SIZE
    /// (it moves in step with virtio-drivers' private `last_used_idx`).
    popped: u16,
}

/// A read-only view of the used ring, for what virtio-drivers does not expose: the full 32-bit
/// id of a used element (it returns the id cut to 16 bits, which would let an id of
/// 0x1_0000 + t pass for token t).
struct UsedRing {
    base: NonNull<u8>,
}

// SAFETY: the used ring is DMA memory owned by the queue for its whole life; reads are volatile.
unsafe impl Send for UsedRing {}

impl UsedRing {
    const HEADER: usize = 4; // flags: u16, idx: u16
    const ELEMENT: usize = 8; // id: u32, len: u32

    fn raw_id(&self, popped: u16) -> u32 {
        let slot = popped as usize % QUEUE_SIZE;
        // SAFETY: `base` maps the whole used ring (header + QUEUE_SIZE elements), see `new`.
        unsafe {
            core::ptr::read_volatile(
                self.base
                    .as_ptr()
                    .add(Self::HEADER + slot * Self::ELEMENT)
                    .cast::<u32>(),
            )
        }
    }
}

/// Passes everything to the real transport and remembers where queue `index`'s used ring is.
struct UsedRingFinder<'t, T: Transport> {
    transport: &'t mut T,
    index: u16,
    device_area: Option<PhysAddr>,
}

impl<T: Transport> Transport for UsedRingFinder<'_, T> {
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
            self.device_area = Some(device_area);
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
}

/// One virtqueue of the crypto device.
pub struct CryptoQueue<H: Hal> {
    index: u16,
    ring: IrqSpinLock<Ring<H>>,
    doorbell: Box<dyn Notify>,
    space: WaitQueue,
    kick_mode: AtomicU8,
    broken: AtomicBool,
    pub counters: QueueCounters,
}

/// Access to the ring while the queue lock is held: add, kick-prepare and drain, nothing else.
pub struct QueueGuard<'a, H: Hal> {
    ring: SpinGuard<'a, Ring<H>, IrqsOff>,
}

/// Turns the request's buffer pointers into the slice arrays virtio-drivers takes (fixed arrays:
/// no allocation, usable in interrupt context).
///
/// # Safety
/// The pointers must be valid for the returned lifetime and not otherwise accessed meanwhile.
unsafe fn as_slices<'a>(
    readable: &[NonNull<[u8]>],
    writable: &[NonNull<[u8]>],
) -> ([&'a [u8]; 3], [&'a mut [u8]; 2]) {
    let mut inputs: [&[u8]; 3] = [&[], &[], &[]];
    let mut outputs: [&mut [u8]; 2] = [&mut [], &mut []];
    for (slot, p) in inputs.iter_mut().zip(readable) {
        // SAFETY: guaranteed by the caller.
        *slot = unsafe { p.as_ref() };
    }
    for (slot, p) in outputs.iter_mut().zip(writable) {
        // SAFETY: guaranteed by the caller.
        *slot = unsafe { &mut *p.as_ptr() };
    }
    (inputs, outputs)
}

impl<H: Hal> QueueGuard<'_, H> {
    /// Adds the request's descriptors and records it as in flight under its token.
    fn add(
        &mut self,
        mut buffers: Buffers,
        completion: Arc<RequestCompletion>,
    ) -> Result<u16, (Buffers, Error)> {
        let (readable, writable) = buffers.pointers();
        // SAFETY: the slices point into heap buffers that `buffers` owns. Moving `buffers` into
        // the in-flight table does not move their heap storage, and the table keeps them alive
        // and untouched until `pop` hands them back after the device used them.
        let token = unsafe {
            let (inputs, mut outputs) = as_slices(&readable, &writable);
            self.ring
                .vq
                .add(&inputs[..readable.len()], &mut outputs[..writable.len()])
        };
        match token {
            Ok(token) => {
                self.ring.in_flight[token as usize] = Some(InFlight {
                    buffers,
                    completion,
                });
                Ok(token)
            }
            Err(virtio_drivers::Error::QueueFull) => Err((buffers, Error::QueueFull)),
            Err(_) => Err((
                buffers,
                Error::MalformedCompletion {
                    what: "virtqueue refused the request",
                },
            )),
        }
    }

    /// Whether the device asked to be notified of new buffers (kick prepare).
    fn kick_prepare(&self) -> bool {
        self.ring.vq.should_notify()
    }

    /// Pops the next used entry, if any, with its request. `Err` means the device broke the
    /// protocol (an id that is not a request in flight, or an entry that cannot be popped): the
    /// ring can no longer be trusted; a request already detached comes back with the error.
    fn pop(&mut self) -> Option<Result<(InFlight, u32), (Option<InFlight>, Error)>> {
        let token = self.ring.vq.peek_used()?;
        // virtio-drivers returns the 32-bit id cut to 16 bits: check the full id ourselves.
        let raw_id = self.ring.used.raw_id(self.ring.popped);
        let entry = (raw_id == token as u32)
            .then(|| {
                self.ring
                    .in_flight
                    .get_mut(token as usize)
                    .and_then(Option::take)
            })
            .flatten();
        let Some(mut entry) = entry else {
            return Some(Err((
                None,
                Error::MalformedCompletion {
                    what: "used id is not a request in flight",
                },
            )));
        };
        let (readable, writable) = entry.buffers.pointers();
        // SAFETY: these are the buffers `add` posted under this token (the in-flight table is
        // indexed by token), still owned by `entry`.
        let used = unsafe {
            let (inputs, mut outputs) = as_slices(&readable, &writable);
            self.ring.vq.pop_used(
                token,
                &inputs[..readable.len()],
                &mut outputs[..writable.len()],
            )
        };
        Some(match used {
            Ok(len) => {
                self.ring.popped = self.ring.popped.wrapping_add(1);
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
    fn take_any(&mut self) -> Option<InFlight> {
        self.ring.in_flight.iter_mut().find_map(Option::take)
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
        let mut finder = UsedRingFinder {
            transport,
            index,
            device_area: None,
        };
        let vq =
            VirtQueue::<H, QUEUE_SIZE>::new(&mut finder, index, false, false).map_err(|_| {
                Error::NotSupported {
                    what: "a virtqueue of 1024 entries",
                }
            })?;
        let device_area = finder.device_area.ok_or(Error::NotSupported {
            what: "a queue without a used ring",
        })?;
        let used_len = UsedRing::HEADER + QUEUE_SIZE * UsedRing::ELEMENT;
        // SAFETY: `device_area` is the used ring virtio-drivers just allocated for this queue;
        // translating it gives memory that lives as long as the queue.
        let used = UsedRing {
            base: unsafe { H::mmio_phys_to_virt(device_area, used_len) },
        };
        let in_flight = (0..QUEUE_SIZE).map(|_| None).collect();
        Ok(CryptoQueue {
            index,
            ring: IrqSpinLock::new(
                "virtqueue",
                Ring {
                    vq: Box::new(vq),
                    in_flight,
                    used,
                    popped: 0,
                },
            ),
            doorbell,
            space: WaitQueue::new(),
            kick_mode: AtomicU8::new(KickMode::Unlocked as u8),
            broken: AtomicBool::new(false),
            counters: QueueCounters::default(),
        })
    }

    pub fn index(&self) -> u16 {
        self.index
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

    /// The queue lock's statistics (acquisitions, contention, wait and hold times).
    pub fn lock_stats(&self) -> crate::sync::LockStatSnapshot {
        self.ring.stats()
    }

    pub fn reset_lock_stats(&self) {
        self.ring.reset_stats()
    }

    /// Whether the device broke this queue's protocol (or needs a reset).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> usize {
        self.ring
            .lock()
            .in_flight
            .iter()
            .filter(|e| e.is_some())
            .count()
    }

    /// Posts a request and returns the completion to wait on. Sleeps while the ring is full.
    pub fn submit(&self, mut buffers: Buffers) -> Result<Arc<RequestCompletion>, Error> {
        let descriptors = buffers.readable.len() + buffers.writable.len();
        if descriptors == 0
            || buffers
                .readable
                .iter()
                .chain(buffers.writable.iter())
                .any(|b| b.is_empty())
        {
            return Err(Error::EmptyRequest);
        }
        let completion = Arc::new(RequestCompletion::new());
        loop {
            let mut guard = QueueGuard {
                ring: self.ring.lock(),
            };
            // Checked under the lock: `fail_all` sets `broken` before draining under the same
            // lock, so a request is either drained by it or refused here, never stranded.
            if self.is_broken() {
                return Err(Error::DeviceNeedsReset);
            }
            match guard.add(buffers, completion.clone()) {
                Ok(_token) => {
                    self.counters.submitted.fetch_add(1, Ordering::Relaxed);
                    let notify = guard.kick_prepare();
                    if notify && self.kick_mode() == KickMode::Locked {
                        self.ring_doorbell();
                        drop(guard);
                    } else {
                        drop(guard);
                        if notify {
                            self.ring_doorbell();
                        }
                    }
                    return Ok(completion);
                }
                Err((returned, Error::QueueFull)) => {
                    drop(guard);
                    buffers = returned;
                    self.counters.full_waits.fetch_add(1, Ordering::Relaxed);
                    self.space.wait_until(|| {
                        (self.is_broken() || self.ring.lock().vq.available_desc() >= descriptors)
                            .then_some(())
                    });
                }
                Err((_, e)) => return Err(e),
            }
        }
    }

    fn ring_doorbell(&self) {
        self.counters.notifies.fetch_add(1, Ordering::Relaxed);
        self.doorbell.notify();
    }

    /// Drains the used ring: the interrupt handler's work, also used by pollers. Completes each
    /// finished request after the lock is dropped. Returns how many completed. Never allocates.
    pub fn handle_interrupt(&self) -> usize {
        const BATCH: usize = 32;
        if self.is_broken() {
            // The bad entry stays at the head of the used ring; it was counted and reported once.
            return 0;
        }
        let mut total = 0;
        loop {
            let mut done: heapless::Vec<(InFlight, Result<u32, Error>), BATCH> =
                heapless::Vec::new();
            let mut broken = false;
            {
                let mut guard = QueueGuard {
                    ring: self.ring.lock(),
                };
                while done.len() < BATCH - 1 {
                    match guard.pop() {
                        None => break,
                        Some(Ok((entry, len))) => {
                            let result = if len as usize > entry.buffers.writable_len() {
                                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                                Err(Error::MalformedCompletion {
                                    what: "used length longer than the buffers posted",
                                })
                            } else {
                                Ok(len)
                            };
                            let _ = done.push((entry, result));
                        }
                        Some(Err((entry, error))) => {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            if let Some(entry) = entry {
                                let _ = done.push((entry, Err(error)));
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
            let finished = done.len();
            for (entry, result) in done {
                let _ = entry.completion.complete(Finished {
                    buffers: entry.buffers,
                    result,
                });
            }
            total += finished;
            self.counters
                .completed
                .fetch_add(finished as u64, Ordering::Relaxed);
            if broken {
                self.fail_all(Error::MalformedCompletion {
                    what: "used id is not a request in flight",
                });
                break;
            }
            if finished < BATCH - 1 {
                break;
            }
        }
        if total > 0 {
            self.space.wake_all();
        }
        total
    }

    /// Marks the queue broken and fails every request in flight with `error` (device reset
    /// needed, or it broke the protocol). Their buffers stay with the completions.
    pub fn fail_all(&self, error: Error) {
        self.broken.store(true, Ordering::Release);
        // One at a time, completing outside the lock: no allocation, usable from interrupts.
        while let Some(entry) = self.detach_one() {
            let _ = entry.completion.complete(Finished {
                buffers: entry.buffers,
                result: Err(error),
            });
        }
        self.space.wake_all();
    }

    /// Takes one in-flight request off the ring (the guard is dropped before returning).
    fn detach_one(&self) -> Option<InFlight> {
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
