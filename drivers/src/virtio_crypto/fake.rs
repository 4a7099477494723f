//! Host fakes for the virtqueue tests: a `Hal` over the heap, a `Transport` that records where
//! each queue's rings are, a device-side view of a split ring ([`FakeRing`]) that reads and
//! writes that memory the way a device would, a counting doorbell, and a thread that plays a
//! minimal virtio-crypto device ([`FakeCryptoDevice`]) so `CryptoDevice`/`Session` calls run
//! end to end.
//!
//! Addresses: "physical" == virtual on the host, so the device side simply dereferences the
//! addresses the driver published in descriptors and in `queue_set`.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

use super::config::CryptoConfig;
use super::device::CryptoDevice;
use super::queue::{CryptoQueue, Notify};
use super::ring::QUEUE_SIZE;
use super::wire;

// ---------------------------------------------------------------------------------------------
// Hal

/// DMA on the host heap: page aligned, zeroed, paddr == vaddr.
pub struct FakeHal;

fn dma_layout(pages: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("dma layout")
}

std::thread_local! {
    static SHARE_HOOK: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Runs `hook` inside the next `FakeHal::share` on the calling thread, i.e. while that thread's
/// `submit` holds the queue lock (`share` is called from `VirtQueue::add`). Lets a test stop a
/// submitter at a known point inside the critical section.
pub fn on_next_share(hook: impl FnOnce() + 'static) {
    SHARE_HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned, exclusively owned memory until `dma_dealloc`;
// `share` returns the buffer's own address, which stays valid as long as the caller keeps the
// buffer (the `add`/`pop_used` contract).
unsafe impl Hal for FakeHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size (pages >= 1 for every virtqueue part).
        let p = unsafe { std::alloc::alloc_zeroed(dma_layout(pages)) };
        let p = NonNull::new(p).expect("host dma_alloc failed");
        (p.as_ptr() as PhysAddr, p)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: allocated by `dma_alloc` above with the same layout (caller's contract).
        unsafe { std::alloc::dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("null mmio address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        if let Some(hook) = SHARE_HOOK.with(|h| h.borrow_mut().take()) {
            hook();
        }
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

// ---------------------------------------------------------------------------------------------
// Transport

/// Where `queue_set` put one queue's rings.
#[derive(Clone, Copy, Debug)]
pub struct RingAddrs {
    pub size: u16,
    pub desc: PhysAddr,
    pub avail: PhysAddr,
    pub used: PhysAddr,
}

/// A transport for a device with a fixed number of 1024-entry queues. Only queue setup matters;
/// doorbells go through [`Notify`], not `Transport::notify`.
pub struct FakeTransport {
    rings: Vec<Option<RingAddrs>>,
    status: DeviceStatus,
}

impl FakeTransport {
    pub fn new(queues: usize) -> Self {
        FakeTransport {
            rings: vec![None; queues],
            status: DeviceStatus::empty(),
        }
    }

    /// The device's view of queue `queue`, set up by `CryptoQueue::new`.
    pub fn ring(&self, queue: u16) -> FakeRing {
        FakeRing::new(self.rings[queue as usize].expect("queue_set was not called for this queue"))
    }
}

impl Transport for FakeTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::Crypto
    }
    fn read_device_features(&mut self) -> u64 {
        0
    }
    fn write_driver_features(&mut self, _driver_features: u64) {}
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        if (queue as usize) < self.rings.len() {
            QUEUE_SIZE as u32
        } else {
            0
        }
    }
    fn notify(&mut self, _queue: u16) {}
    fn get_status(&self) -> DeviceStatus {
        self.status
    }
    fn set_status(&mut self, status: DeviceStatus) {
        if status.is_empty() {
            // A reset forgets every queue.
            self.rings.iter_mut().for_each(|r| *r = None);
        }
        self.status = status;
    }
    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.rings[queue as usize] = Some(RingAddrs {
            size: size as u16,
            desc: descriptors,
            avail: driver_area,
            used: device_area,
        });
    }
    fn queue_unset(&mut self, queue: u16) {
        self.rings[queue as usize] = None;
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.rings.get(queue as usize).is_some_and(Option::is_some)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }
    fn read_config_generation(&self) -> u32 {
        0
    }
    // No config space: `CryptoDevice` takes its `CryptoConfig` ready-made.
    fn read_config_space<T>(&self, _offset: usize) -> virtio_drivers::Result<T> {
        Err(virtio_drivers::Error::ConfigSpaceMissing)
    }
    fn write_config_space<T>(&mut self, _offset: usize, _value: T) -> virtio_drivers::Result<()> {
        Err(virtio_drivers::Error::ConfigSpaceMissing)
    }
}

// ---------------------------------------------------------------------------------------------
// The device side of a split ring (virtio 1.x 2.7; no EVENT_IDX, no INDIRECT_DESC)

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// One descriptor as the device read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn writable(&self) -> bool {
        self.flags & VIRTQ_DESC_F_WRITE != 0
    }
}

/// A descriptor chain taken from the available ring; `id` is its head index.
#[derive(Clone, Debug)]
pub struct Chain {
    pub id: u16,
    pub descs: Vec<Desc>,
}

impl Chain {
    /// Copies of the device-readable buffers, in chain order.
    pub fn readable(&self) -> Vec<Vec<u8>> {
        self.descs
            .iter()
            .filter(|d| !d.writable())
            .map(|d| {
                let mut v = vec![0u8; d.len as usize];
                // SAFETY: the driver posted `addr..addr+len` and keeps it alive until the chain
                // is used; nobody writes a device-readable buffer meanwhile.
                unsafe { ptr::copy_nonoverlapping(d.addr as *const u8, v.as_mut_ptr(), v.len()) };
                v
            })
            .collect()
    }

    /// Total length of the device-writable buffers.
    pub fn writable_len(&self) -> u32 {
        self.descs
            .iter()
            .filter(|d| d.writable())
            .map(|d| d.len)
            .sum()
    }

    /// Reads `out.len()` bytes of the device-writable buffers from offset `at` (across them, in
    /// chain order).
    pub fn read_writable(&self, at: usize, out: &mut [u8]) {
        let mut pos = 0;
        for d in self.descs.iter().filter(|d| d.writable()) {
            for i in 0..d.len as usize {
                if (at..at + out.len()).contains(&(pos + i)) {
                    // SAFETY: inside a device-writable buffer the driver posted and does not
                    // touch until the chain is used.
                    out[pos + i - at] =
                        unsafe { core::ptr::read_volatile((d.addr as *const u8).add(i)) };
                }
            }
            pos += d.len as usize;
        }
    }

    /// Writes `data` across the device-writable buffers in chain order (like a device filling
    /// `dst` then `status`). Returns the bytes written (at most `writable_len`).
    pub fn write(&self, data: &[u8]) -> usize {
        let mut rest = data;
        for d in self.descs.iter().filter(|d| d.writable()) {
            let n = rest.len().min(d.len as usize);
            // SAFETY: a device-writable buffer the driver posted and does not touch until the
            // chain is used.
            unsafe { ptr::copy_nonoverlapping(rest.as_ptr(), d.addr as *mut u8, n) };
            rest = &rest[n..];
        }
        data.len() - rest.len()
    }
}

/// The device's view of one queue: takes chains off the available ring and returns them on the
/// used ring. One `FakeRing` per queue (it is the only writer of the used ring); it must not be
/// used after the `CryptoQueue` that owns the ring memory is dropped.
pub struct FakeRing {
    addrs: RingAddrs,
    last_avail: u16,
    taken: u64,
}

impl FakeRing {
    /// Another device-side view of the rings at `addrs` (to publish used entries from a hook).
    pub fn new(addrs: RingAddrs) -> Self {
        FakeRing {
            addrs,
            last_avail: 0,
            taken: 0,
        }
    }

    fn u16_at(&self, addr: u64) -> &AtomicU16 {
        // SAFETY: `addr` is a 2-byte-aligned field of a ring the driver allocated; the rings
        // outlive this `FakeRing` (see the type's doc).
        unsafe { AtomicU16::from_ptr(addr as *mut u16) }
    }

    fn avail_idx(&self) -> &AtomicU16 {
        self.u16_at(self.addrs.avail + 2)
    }

    fn used_flags(&self) -> &AtomicU16 {
        self.u16_at(self.addrs.used)
    }

    fn used_idx(&self) -> &AtomicU16 {
        self.u16_at(self.addrs.used + 2)
    }

    fn read_desc(&self, i: u16) -> Desc {
        let base = (self.addrs.desc + 16 * i as u64) as *const u8;
        // SAFETY: `i < size`, inside the descriptor table; fields at their spec offsets.
        unsafe {
            Desc {
                addr: ptr::read_volatile(base as *const u64),
                len: ptr::read_volatile(base.add(8) as *const u32),
                flags: ptr::read_volatile(base.add(12) as *const u16),
                next: ptr::read_volatile(base.add(14) as *const u16),
            }
        }
    }

    /// Chains made available since the last call, in ring order.
    pub fn pending(&mut self) -> Vec<Chain> {
        // Acquire pairs with the driver's Release store of avail.idx (after its fence), so the
        // ring entries and descriptors read below are the ones it published.
        let idx = self.avail_idx().load(Ordering::Acquire);
        let size = self.addrs.size;
        let mut chains = Vec::new();
        while self.last_avail != idx {
            let slot = (self.last_avail % size) as u64;
            // SAFETY: slot < size, inside avail.ring.
            let head =
                unsafe { ptr::read_volatile((self.addrs.avail + 4 + 2 * slot) as *const u16) };
            assert!(head < size, "avail ring names descriptor {head}");
            let mut descs = Vec::new();
            let mut i = head;
            loop {
                let d = self.read_desc(i);
                descs.push(d);
                assert!(descs.len() <= size as usize, "descriptor chain loops");
                if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                    break;
                }
                i = d.next;
            }
            chains.push(Chain { id: head, descs });
            self.last_avail = self.last_avail.wrapping_add(1);
            self.taken += 1;
        }
        chains
    }

    /// Where the rings are.
    pub fn addrs(&self) -> RingAddrs {
        self.addrs
    }

    /// The used ring's 16-bit index as published.
    pub fn used_index(&self) -> u16 {
        self.used_idx().load(Ordering::Acquire)
    }

    /// Chains taken off the available ring so far (not wrapped).
    pub fn taken(&self) -> u64 {
        self.taken
    }

    /// Puts `(id, len)` on the used ring and publishes it. `id` is a u32 as on the wire, so
    /// tests can send ids the driver never posted.
    pub fn complete(&mut self, id: u32, len: u32) {
        // Only this `FakeRing` writes used.idx, so a relaxed read of it is current.
        let idx = self.used_idx().load(Ordering::Relaxed);
        let elem = self.addrs.used + 4 + 8 * (idx % self.addrs.size) as u64;
        // SAFETY: the slot is inside used.ring; the driver reads it only after seeing used.idx
        // move past it, which the Release store below orders after these writes.
        unsafe {
            ptr::write_volatile(elem as *mut u32, id);
            ptr::write_volatile((elem + 4) as *mut u32, len);
        }
        self.used_idx()
            .store(idx.wrapping_add(1), Ordering::Release);
    }

    /// Sets the device's `avail_event` (EVENT_IDX: "kick me once the avail index passes this").
    pub fn set_avail_event(&mut self, index: u16) {
        let at = self.addrs.used + 4 + 8 * self.addrs.size as u64;
        self.u16_at(at).store(index, Ordering::Release);
    }

    /// EVENT_IDX, as a device does once it has taken everything it saw: asks to be kicked
    /// for the next entry it has not taken (`avail_event` = the entries taken so far), then,
    /// after a full barrier, looks at the avail index again and returns whether entries came
    /// meanwhile: those it must take without waiting for a doorbell, which the driver may have
    /// decided against before it saw the new `avail_event` (virtio 1.2, 2.7.10). Setting it to
    /// the avail index read after taking would skip entries added in between.
    pub fn ask_for_next_kick(&mut self) -> bool {
        let taken = self.last_avail;
        self.set_avail_event(taken);
        core::sync::atomic::fence(Ordering::SeqCst);
        self.avail_index() != taken
    }

    /// The driver's `used_event` (EVENT_IDX: "interrupt me once the used index passes this").
    pub fn used_event(&self) -> u16 {
        let at = self.addrs.avail + 4 + 2 * self.addrs.size as u64;
        self.u16_at(at).load(Ordering::Acquire)
    }

    /// The driver's avail flags (bit 0: VIRTQ_AVAIL_F_NO_INTERRUPT).
    pub fn avail_flags(&self) -> u16 {
        self.u16_at(self.addrs.avail).load(Ordering::Acquire)
    }

    /// The avail index as published by the driver.
    pub fn avail_index(&self) -> u16 {
        self.avail_idx().load(Ordering::Acquire)
    }

    /// Whether the device must interrupt after publishing used entries up to `new` (having last
    /// interrupted at `old`), by the driver's current `used_event` or NO_INTERRUPT flag.
    pub fn wants_interrupt(&self, event_idx: bool, new: u16, old: u16) -> bool {
        if event_idx {
            super::ring::need_event(self.used_event(), new, old)
        } else {
            self.avail_flags() & 1 == 0
        }
    }

    /// Sets or clears VIRTQ_USED_F_NO_NOTIFY (the device's "don't kick me").
    pub fn set_no_notify(&mut self, on: bool) {
        self.used_flags().store(
            if on { VIRTQ_USED_F_NO_NOTIFY } else { 0 },
            Ordering::Release,
        );
    }
}

/// One queue on a fake transport, the device's view of its ring, and its doorbell: the rig of
/// the queue tests. One slot per descriptor, so the ring (not the slots) is what fills up.
pub struct QueueRig {
    pub queue: CryptoQueue<FakeHal>,
    pub ring: FakeRing,
    pub bell: CountingNotify,
}

pub fn queue_rig(event_idx: bool, bell: CountingNotify) -> QueueRig {
    crate::sync::platform::host::install();
    let mut transport = FakeTransport::new(1);
    let queue =
        CryptoQueue::with_event_idx(&mut transport, 0, Box::new(bell.clone()), event_idx).unwrap();
    queue
        .provision(super::slots::StorageConfig {
            slots: QUEUE_SIZE,
            inline_bytes: 128,
            large_blocks: 0,
            large_bytes: 0,
        })
        .unwrap();
    QueueRig {
        queue,
        ring: transport.ring(0),
        bell,
    }
}

// ---------------------------------------------------------------------------------------------
// Doorbell

/// Counts doorbell rings and optionally signals a device thread.
#[derive(Clone, Default)]
pub struct CountingNotify {
    count: Arc<AtomicUsize>,
    signal: Option<Sender<()>>,
}

impl CountingNotify {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_signal(signal: Sender<()>) -> Self {
        CountingNotify {
            count: Arc::default(),
            signal: Some(signal),
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Notify for CountingNotify {
    fn notify(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        if let Some(signal) = &self.signal {
            let _ = signal.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A CryptoDevice on fakes, and a thread that answers it

/// A config advertising the cipher service with AES-CBC, HW_READY, 64-byte keys.
pub fn config(data_queues: u32) -> CryptoConfig {
    CryptoConfig {
        status: wire::S_HW_READY,
        max_dataqueues: data_queues,
        crypto_services: 1 << wire::SERVICE_CIPHER,
        cipher_algo_l: 1 << wire::CIPHER_AES_CBC,
        max_cipher_key_len: 64,
        max_size: 1 << 30,
        ..CryptoConfig::default()
    }
}

/// A `CryptoDevice` with a control queue (ring 0) and `data_queues` data queues (rings 1..),
/// every doorbell being a clone of `bell`, and the device's view of each ring.
pub fn crypto_device(
    data_queues: u16,
    bell: &CountingNotify,
) -> (CryptoDevice<FakeHal>, Vec<FakeRing>) {
    crate::sync::platform::host::install();
    let mut transport = FakeTransport::new(1 + data_queues as usize);
    let mut queue =
        |i| CryptoQueue::<FakeHal>::new(&mut transport, i, Box::new(bell.clone())).unwrap();
    let control = queue(0);
    let data = (1..=data_queues).map(&mut queue).collect();
    let rings = (0..=data_queues).map(|i| transport.ring(i)).collect();
    let device = CryptoDevice::new(
        String::from("fake-crypto"),
        config(data_queues as u32),
        control,
        data,
        Box::new(|| false),
    )
    .unwrap();
    (device, rings)
}

/// The interrupt of `dev`'s ring `q` (0: control, 1..: data queues) as the fake device thread
/// raises it: drains that queue.
pub fn drain_on_interrupt(dev: Arc<CryptoDevice<FakeHal>>) -> impl Fn(u16) + Send + 'static {
    move |q| {
        if q == 0 {
            dev.control.handle_interrupt();
        } else {
            dev.data[q as usize - 1].handle_interrupt();
        }
    }
}

/// Test side of a device's DEVICE_NEEDS_RESET bit and of its recovery steps.
#[derive(Clone, Default)]
pub struct FakeStatus {
    pub needs_reset: Arc<AtomicBool>,
    /// Recovery steps in order (`reset`, `negotiate`, `route q`, `driver_ok`).
    pub steps: Arc<std::sync::Mutex<Vec<String>>>,
}

/// The fake transport's recovery steps; `at_reset` runs right after the reset (status 0 read
/// back), before anything is failed.
pub struct FakeSteps<'a> {
    pub status: FakeStatus,
    pub at_reset: &'a mut dyn FnMut(),
}

impl super::device::Recover<FakeTransport> for FakeSteps<'_> {
    fn reset_and_wait(&mut self, t: &mut FakeTransport) -> Result<(), crate::error::Error> {
        t.set_status(DeviceStatus::empty());
        self.status.needs_reset.store(false, Ordering::SeqCst);
        self.status.steps.lock().unwrap().push("reset".into());
        (self.at_reset)();
        Ok(())
    }
    fn renegotiate(&mut self, t: &mut FakeTransport) -> Result<(), crate::error::Error> {
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
        self.status.steps.lock().unwrap().push("negotiate".into());
        Ok(())
    }
    fn route_queue(&mut self, _: &mut FakeTransport, q: u16) -> Result<(), crate::error::Error> {
        self.status
            .steps
            .lock()
            .unwrap()
            .push(std::format!("route {q}"));
        Ok(())
    }
    fn driver_ok(&mut self, t: &mut FakeTransport) -> Result<(), crate::error::Error> {
        t.set_status(DeviceStatus::DRIVER_OK);
        self.status.steps.lock().unwrap().push("driver_ok".into());
        Ok(())
    }
}

/// Like [`crypto_device`], keeping the transport (for recovery) and a settable NEEDS_RESET bit;
/// the control queue gets `control_slots` request slots.
pub fn crypto_device_with(
    data_queues: u16,
    bell: &CountingNotify,
    control_slots: usize,
) -> (
    CryptoDevice<FakeHal>,
    Vec<FakeRing>,
    FakeTransport,
    FakeStatus,
) {
    crate::sync::platform::host::install();
    let mut transport = FakeTransport::new(1 + data_queues as usize);
    let mut queue =
        |i| CryptoQueue::<FakeHal>::new(&mut transport, i, Box::new(bell.clone())).unwrap();
    let control = queue(0);
    control
        .provision(super::slots::StorageConfig {
            slots: control_slots,
            ..super::slots::StorageConfig::CONTROL
        })
        .unwrap();
    let data = (1..=data_queues).map(&mut queue).collect();
    let rings = (0..=data_queues).map(|i| transport.ring(i)).collect();
    let status = FakeStatus::default();
    let flag = status.needs_reset.clone();
    let device = CryptoDevice::new(
        String::from("fake-crypto"),
        config(data_queues as u32),
        control,
        data,
        Box::new(move || flag.load(Ordering::SeqCst)),
    )
    .unwrap();
    (device, rings, transport, status)
}

/// The key the fake device refuses (to reach the ERR path of create-session).
pub const REJECTED_KEY: [u8; 16] = [0xee; 16];
/// What the fake device does to cipher data.
pub const XOR: u8 = 0x5a;

/// A thread that plays a virtio-crypto device on `rings` (ring 0 = control queue):
/// - create-session (AES-CBC only, else NOTSUPP; `REJECTED_KEY` gets ERR): a fresh id, OK;
/// - destroy-session: OK if the id is live, else ERR (as QEMU answers);
/// - cipher data: dst = src ^ `XOR`, OK; an unknown session gets INVSESS.
///
/// After using buffers of ring q it calls `interrupt(q)`, standing in for the MSI-X vector.
/// It serves on every doorbell and also polls each millisecond. Dropping it stops and joins the
/// thread; drop it before the queues whose rings it reads.
pub struct FakeCryptoDevice {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeCryptoDevice {
    pub fn spawn(
        mut rings: Vec<FakeRing>,
        doorbell: Receiver<()>,
        interrupt: impl Fn(u16) + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sessions = HashSet::new();
            let mut next_id = 0x5e55_0000_0000_0001u64;
            while !stopped.load(Ordering::Acquire) {
                let mut served = false;
                for (q, ring) in rings.iter_mut().enumerate() {
                    let chains = ring.pending();
                    for chain in &chains {
                        let len = if q == 0 {
                            control_request(chain, &mut sessions, &mut next_id)
                        } else {
                            data_request(chain, &sessions)
                        };
                        ring.complete(chain.id as u32, len);
                    }
                    if !chains.is_empty() {
                        interrupt(q as u16);
                        served = true;
                    }
                }
                if !served {
                    let _ = doorbell.recv_timeout(Duration::from_millis(1));
                }
            }
        });
        FakeCryptoDevice {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeCryptoDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let result = thread.join();
            // Re-raise a device-thread panic in the test, unless the test is already failing.
            if result.is_err() && !std::thread::panicking() {
                panic!("fake crypto device thread panicked");
            }
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Answers a control request; returns the used length.
fn control_request(chain: &Chain, sessions: &mut HashSet<u64>, next_id: &mut u64) -> u32 {
    // The device reads the readable descriptors as one stream (the driver may split it anyhow).
    let stream = chain.readable().concat();
    assert!(stream.len() >= wire::CTRL_REQ_LEN, "control request header");
    let (req, rest) = stream.split_at(wire::CTRL_REQ_LEN);
    match u32_at(req, 0) {
        wire::CIPHER_CREATE_SESSION => {
            let (algo, key_len) = (
                u32_at(req, wire::CTRL_HDR_LEN),
                u32_at(req, wire::CTRL_HDR_LEN + 4),
            );
            let key = rest;
            assert_eq!(
                key.len(),
                key_len as usize,
                "key descriptor length != key_len"
            );
            let (id, status) = if algo != wire::CIPHER_AES_CBC {
                (0, wire::STATUS_NOTSUPP)
            } else if key[..] == REJECTED_KEY[..] {
                (0, wire::STATUS_ERR)
            } else {
                let id = *next_id;
                *next_id += 1;
                sessions.insert(id);
                (id, wire::STATUS_OK)
            };
            let mut reply = [0u8; wire::SESSION_INPUT_LEN];
            reply[0..8].copy_from_slice(&id.to_le_bytes());
            reply[8..12].copy_from_slice(&status.to_le_bytes());
            chain.write(&reply) as u32
        }
        wire::CIPHER_DESTROY_SESSION => {
            let ok = sessions.remove(&u64_at(req, wire::CTRL_HDR_LEN));
            chain.write(&[if ok {
                wire::STATUS_OK
            } else {
                wire::STATUS_ERR
            } as u8]) as u32
        }
        _ => chain.write(&[wire::STATUS_NOTSUPP as u8]) as u32,
    }
}

/// Answers a cipher data request (header, [iv], src | dst, status); returns the used length.
fn data_request(chain: &Chain, sessions: &HashSet<u64>) -> u32 {
    let stream = chain.readable().concat();
    let hdr = &stream[..wire::DATA_HDR_LEN];
    let (session, iv_len, src_len, dst_len) = (
        u64_at(hdr, 8),
        u32_at(hdr, wire::OP_HDR_LEN) as usize,
        u32_at(hdr, wire::OP_HDR_LEN + 4) as usize,
        u32_at(hdr, wire::OP_HDR_LEN + 8) as usize,
    );
    assert_eq!(
        stream.len(),
        wire::DATA_HDR_LEN + iv_len + src_len,
        "header, iv and src"
    );
    let src = &stream[wire::DATA_HDR_LEN + iv_len..];
    let mut out: Vec<u8> = vec![0; dst_len + 1];
    out[dst_len] = if sessions.contains(&session) {
        for (o, s) in out.iter_mut().zip(src.iter()) {
            *o = s ^ XOR;
        }
        wire::STATUS_OK as u8
    } else {
        wire::STATUS_INVSESS as u8
    };
    chain.write(&out) as u32
}
