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

use virtio_drivers::Hal;
use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::Transport;

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
unsafe fn as_slices<'a>(readable: &[NonNull<[u8]>], writable: &[NonNull<[u8]>]) -> ([&'a [u8]; 3], [&'a mut [u8]; 2]) {
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
    fn add(&mut self, buffers: Buffers, completion: Arc<RequestCompletion>) -> Result<u16, (Buffers, Error)> {
        let readable: heapless::Vec<NonNull<[u8]>, 3> =
            buffers.readable.iter().map(|b| NonNull::from(b.as_slice())).collect();
        let writable: heapless::Vec<NonNull<[u8]>, 2> =
            buffers.writable.iter().map(|b| NonNull::from(b.as_slice())).collect();
        // SAFETY: the slices point into heap buffers that `buffers` owns. Moving `buffers` into
        // the in-flight table does not move their heap storage, and the table keeps them alive
        // and untouched until `pop` hands them back after the device used them.
        let token = unsafe {
            let (inputs, mut outputs) = as_slices(&readable, &writable);
            self.ring.vq.add(&inputs[..readable.len()], &mut outputs[..writable.len()])
        };
        match token {
            Ok(token) => {
                self.ring.in_flight[token as usize] = Some(InFlight { buffers, completion });
                Ok(token)
            }
            Err(virtio_drivers::Error::QueueFull) => Err((buffers, Error::QueueFull)),
            Err(_) => Err((buffers, Error::MalformedCompletion { what: "virtqueue refused the request" })),
        }
    }

    /// Whether the device asked to be notified of new buffers (kick prepare).
    fn kick_prepare(&self) -> bool {
        self.ring.vq.should_notify()
    }

    /// Pops the next used entry, if any, with its request. `Err` means the device returned an
    /// id that is not in flight: the ring can no longer be trusted.
    fn pop(&mut self) -> Option<Result<(InFlight, u32), Error>> {
        let token = self.ring.vq.peek_used()?;
        let Some(entry) = self.ring.in_flight.get_mut(token as usize).and_then(Option::take) else {
            return Some(Err(Error::MalformedCompletion { what: "used id is not a request in flight" }));
        };
        let readable: heapless::Vec<NonNull<[u8]>, 3> =
            entry.buffers.readable.iter().map(|b| NonNull::from(b.as_slice())).collect();
        let writable: heapless::Vec<NonNull<[u8]>, 2> =
            entry.buffers.writable.iter().map(|b| NonNull::from(b.as_slice())).collect();
        // SAFETY: these are the buffers `add` posted under this token (the in-flight table is
        // indexed by token), still owned by `entry`.
        let used = unsafe {
            let (inputs, mut outputs) = as_slices(&readable, &writable);
            self.ring.vq.pop_used(token, &inputs[..readable.len()], &mut outputs[..writable.len()])
        };
        Some(match used {
            Ok(len) => Ok((entry, len)),
            Err(_) => Err(Error::MalformedCompletion { what: "used entry could not be popped" }),
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
    pub fn new<T: Transport>(transport: &mut T, index: u16, doorbell: Box<dyn Notify>) -> Result<Self, Error> {
        let vq = VirtQueue::<H, QUEUE_SIZE>::new(transport, index, false, false)
            .map_err(|_| Error::NotSupported { what: "a virtqueue of 1024 entries" })?;
        let in_flight = (0..QUEUE_SIZE).map(|_| None).collect();
        Ok(CryptoQueue {
            index,
            ring: IrqSpinLock::new("virtqueue", Ring { vq: Box::new(vq), in_flight }),
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
        if self.kick_mode.load(Ordering::Relaxed) == KickMode::Locked as u8 { KickMode::Locked } else { KickMode::Unlocked }
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
        self.ring.lock().in_flight.iter().filter(|e| e.is_some()).count()
    }

    /// Posts a request and returns the completion to wait on. Sleeps while the ring is full.
    pub fn submit(&self, mut buffers: Buffers) -> Result<Arc<RequestCompletion>, Error> {
        let descriptors = buffers.readable.len() + buffers.writable.len();
        if descriptors == 0 || buffers.readable.iter().chain(buffers.writable.iter()).any(|b| b.is_empty()) {
            return Err(Error::EmptyRequest);
        }
        let completion = Arc::new(RequestCompletion::new());
        loop {
            let mut guard = QueueGuard { ring: self.ring.lock() };
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
                        (self.is_broken() || self.ring.lock().vq.available_desc() >= descriptors).then_some(())
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
        let mut total = 0;
        loop {
            let mut done: heapless::Vec<(InFlight, Result<u32, Error>), BATCH> = heapless::Vec::new();
            let mut broken = false;
            {
                let mut guard = QueueGuard { ring: self.ring.lock() };
                while !done.is_full() {
                    match guard.pop() {
                        None => break,
                        Some(Ok((entry, len))) => {
                            let result = if len as usize > entry.buffers.writable_len() {
                                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                                Err(Error::MalformedCompletion { what: "used length longer than the buffers posted" })
                            } else {
                                Ok(len)
                            };
                            let _ = done.push((entry, result));
                        }
                        Some(Err(_)) => {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
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
                let _ = entry.completion.complete(Finished { buffers: entry.buffers, result });
            }
            total += finished;
            self.counters.completed.fetch_add(finished as u64, Ordering::Relaxed);
            if broken {
                self.fail_all(Error::MalformedCompletion { what: "used id is not a request in flight" });
                break;
            }
            if finished < BATCH {
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
            let _ = entry.completion.complete(Finished { buffers: entry.buffers, result: Err(error) });
        }
        self.space.wake_all();
    }

    /// Takes one in-flight request off the ring (the guard is dropped before returning).
    fn detach_one(&self) -> Option<InFlight> {
        QueueGuard { ring: self.ring.lock() }.take_any()
    }

    /// Free descriptors right now.
    pub fn free_descriptors(&self) -> usize {
        QueueGuard { ring: self.ring.lock() }.free_descriptors()
    }
}
