//! A virtio-crypto device: one control queue, one or more data queues, the run-time switches of
//! the experiments (`ctrl=poll|sleep`, `kick=locked|unlocked`), readiness and the
//! DEVICE_NEEDS_RESET handling shared by every request.
//!
//! Per-service request building and validation live in `session.rs` (control requests, generic
//! over services) and `cipher.rs` (cipher data requests); the request engine in `request.rs`,
//! `slots.rs` and `queue.rs`.
//!
//! Every public call returns `Result<_, Error>`; nothing a caller or the device does panics.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use virtio_drivers::Hal;
use virtio_drivers::transport::Transport;

use super::config::CryptoConfig;
use super::lifecycle::{DeviceState, Lifecycle};
use super::queue::{CryptoQueue, DmaFaultCheck, KickMode, QueueCore};
use super::request::{Request, RequestBuilder};
use super::routing::QueueRouting;
use super::slots::StorageConfig;
use crate::error::Error;
use crate::sync::{IrqSpinLock, SpinLock, platform};

pub use super::queue::DEFAULT_TIMEOUT_NS;

/// `chain=serial|pipelined`: how chained streams ([`crate::stream`]) on a device run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChainMode {
    /// Every chunk waits for the previous one before it is built (AF_ALG's mutex).
    Serial = 0,
    /// Only CBC encryption waits, and only to enter the ring (the design).
    Pipelined = 1,
}

impl ChainMode {
    pub const ALL: [ChainMode; 2] = [ChainMode::Serial, ChainMode::Pipelined];

    pub fn name(self) -> &'static str {
        match self {
            ChainMode::Serial => "serial",
            ChainMode::Pipelined => "pipelined",
        }
    }

    pub fn from_name(name: &str) -> Option<ChainMode> {
        ChainMode::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Sessions QEMU's builtin backend holds at once (not advertised in the config space).
pub const MAX_SESSIONS: usize = 256;

/// The driver's count of sessions the device may hold, per device generation: exact while
/// every control request is answered; an upper bound after a create or destroy timed out (the
/// device may or may not have done it, so the session stays counted); exact again (zero) after a
/// reset, which drops every session.
pub(crate) struct SessionCounter {
    /// (generation, live)
    live: IrqSpinLock<(u64, usize)>,
}

impl SessionCounter {
    pub(crate) const fn new() -> Self {
        SessionCounter {
            live: IrqSpinLock::new("session-count", (0, 0)),
        }
    }

    /// Counts a session about to be created in `generation`.
    pub(crate) fn take(&self, generation: u64) -> Result<(), Error> {
        let mut live = self.live.lock();
        if live.0 != generation {
            return Err(Error::DeviceReset);
        }
        if live.1 >= MAX_SESSIONS {
            return Err(Error::SessionsExhausted);
        }
        live.1 += 1;
        Ok(())
    }

    /// A session of `generation` is gone (a reset since then already forgot it).
    pub(crate) fn give_back(&self, generation: u64) {
        let mut live = self.live.lock();
        if live.0 == generation {
            live.1 = live.1.saturating_sub(1);
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live.lock().1
    }

    /// The device was reset: it holds no session of the new generation.
    pub(crate) fn reset(&self, generation: u64) {
        *self.live.lock() = (generation, 0);
    }
}

/// How control requests wait for the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CtrlMode {
    /// Sleep on the request's completion; any number in flight (the design).
    Sleep = 0,
    /// One request at a time under a control lock, busy-polling the used ring (the baseline the
    /// ctrl-queue commit replaced).
    Poll = 1,
}

/// A device's run-time switches: the experiments kept as switches (docs/DESIGN.md), one value
/// set on a device at once ([`CryptoDevice::apply_switches`]) and read back to be restored
/// ([`CryptoDevice::switches`]). The default is the design.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSwitches {
    /// `ctrl=sleep|poll`.
    pub ctrl: CtrlMode,
    /// `kick=unlocked|locked`.
    pub kick: KickMode,
    /// `chain=pipelined|serial`.
    pub chain: ChainMode,
    /// `unadvertised=refuse|try`: AES modes QEMU's builtin backend implements but does not
    /// advertise are tried instead of refused.
    pub unadvertised: bool,
    /// `reap=on|off`: a task about to sleep on a request drains its queue first.
    pub reap: bool,
}

impl Default for DeviceSwitches {
    fn default() -> Self {
        DeviceSwitches {
            ctrl: CtrlMode::Sleep,
            kick: KickMode::Unlocked,
            chain: ChainMode::Pipelined,
            unadvertised: false,
            reap: true,
        }
    }
}

/// What every request of a device needs after it was posted, shared by `Arc` so owned requests
/// need no borrow of the device: the device's lifecycle, the DEVICE_NEEDS_RESET reader (an MMIO
/// read: used on configuration interrupts and timeouts only, never per request), the queues to
/// close when the device breaks, and the timeout.
pub struct DeviceHealth<H: Hal> {
    needs_reset: Box<dyn Fn() -> bool + Send + Sync>,
    queues: Vec<Arc<QueueCore<H>>>,
    timeout_ns: AtomicU64,
    lifecycle: Arc<Lifecycle>,
    /// The IOMMU's fault check, when the device's DMA goes through one.
    dma_faults: spin::Once<DmaFaultCheck>,
}

impl<H: Hal> DeviceHealth<H> {
    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns.load(Ordering::Relaxed)
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// Reads the device status (one MMIO read); if DEVICE_NEEDS_RESET is set, asks for recovery
    /// and returns true. For the configuration interrupt and timeouts. Any context.
    pub fn check_needs_reset(&self) -> bool {
        if !(self.needs_reset)() {
            return false;
        }
        self.request_recovery();
        true
    }

    /// Stops new submissions on every queue (waiters for ring space or slots wake with
    /// `DeviceReset`) and asks the recovery task for a reset. Requests in flight stay in flight
    /// until the device is reset: it may still write their memory. Any context.
    pub fn request_recovery(&self) {
        self.lifecycle.request_recovery();
    }

    /// A request timed out: if the device needs a reset, recovery is asked for and the error is
    /// `DeviceReset`; otherwise `Timeout`.
    pub fn timed_out(&self) -> Error {
        if self.check_needs_reset() {
            Error::DeviceReset
        } else {
            Error::Timeout
        }
    }

    /// When a request posted now must have finished.
    pub fn deadline(&self) -> u64 {
        platform::get().now_ns().saturating_add(self.timeout_ns())
    }

    /// Sleeps until `request` finishes or `deadline` passes; returns its used length, or why
    /// it failed (a timeout as [`timed_out`](Self::timed_out) says).
    pub fn wait_until(&self, request: &Request<H>, deadline: u64) -> Result<u32, Error> {
        match request.wait_until(Some(deadline)) {
            Err(Error::Timeout) => Err(self.timed_out()),
            other => other,
        }
    }
}

/// The transport-specific steps of a recovery (the kernel's virtio-pci transport with its
/// interrupt routing; the host tests' fake).
pub trait Recover<T: Transport> {
    /// Writes status 0 and waits (bounded) until it reads back 0: from then on the device
    /// reaches no request memory.
    fn reset_and_wait(&mut self, transport: &mut T) -> Result<(), Error>;
    /// ACKNOWLEDGE | DRIVER, the driver's features, FEATURES_OK written and read back.
    fn renegotiate(&mut self, transport: &mut T) -> Result<(), Error>;
    /// Routes queue `index`'s interrupt again (a reset clears the vector registers); called
    /// before the queue's fresh ring is set up.
    fn route_queue(&mut self, transport: &mut T, index: u16) -> Result<(), Error>;
    /// Routes configuration interrupts again and sets DRIVER_OK.
    fn driver_ok(&mut self, transport: &mut T) -> Result<(), Error>;
}

/// A device and its queues.
pub struct CryptoDevice<H: Hal> {
    pub name: String,
    pub config: CryptoConfig,
    pub control: CryptoQueue<H>,
    pub data: Vec<CryptoQueue<H>>,
    ctrl_mode: AtomicU8,
    /// The `Poll` baseline's control lock: one control request at a time, polled.
    poll_lock: SpinLock<()>,
    unadvertised: AtomicBool,
    /// `chain=serial|pipelined`: how chained streams ([`crate::stream`]) on this device run.
    chain_mode: AtomicU8,
    pub(crate) sessions: SessionCounter,
    health: Arc<DeviceHealth<H>>,
    /// Set once when the device's interrupts are routed.
    routing: spin::Once<QueueRouting>,
}

impl<H: Hal> CryptoDevice<H> {
    /// Assembles a device from queues already set up on its transport, and preallocates their
    /// request memory. `needs_reset` reads the transport's DEVICE_NEEDS_RESET bit.
    pub fn new(
        name: String,
        config: CryptoConfig,
        control: CryptoQueue<H>,
        data: Vec<CryptoQueue<H>>,
        needs_reset: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Result<Self, Error>
    where
        H: 'static,
    {
        if data.is_empty() {
            return Err(Error::NotSupported {
                what: "a device without data queues",
            });
        }
        control.provision(StorageConfig::CONTROL)?;
        for q in &data {
            q.provision(StorageConfig::DATA)?;
        }
        let lifecycle = Arc::new(Lifecycle::new());
        let queues: Vec<_> = core::iter::once(&control)
            .chain(&data)
            .map(|q| q.core().clone())
            .collect();
        for q in &queues {
            q.attach_lifecycle(lifecycle.clone());
        }
        // Whichever queue or path notices a broken device closes all of them. Weak: the queues
        // hold the lifecycle.
        let closable: Vec<_> = queues.iter().map(Arc::downgrade).collect();
        lifecycle.set_queue_closer(Box::new(move || {
            for q in closable.iter().filter_map(alloc::sync::Weak::upgrade) {
                q.close();
            }
        }));
        Ok(CryptoDevice {
            name,
            config,
            control,
            data,
            ctrl_mode: AtomicU8::new(CtrlMode::Sleep as u8),
            poll_lock: SpinLock::new("ctrl-poll", ()),
            unadvertised: AtomicBool::new(false),
            chain_mode: AtomicU8::new(ChainMode::Pipelined as u8),
            sessions: SessionCounter::new(),
            health: Arc::new(DeviceHealth {
                needs_reset,
                queues,
                timeout_ns: AtomicU64::new(DEFAULT_TIMEOUT_NS),
                lifecycle,
                dma_faults: spin::Once::new(),
            }),
            routing: spin::Once::new(),
        })
    }

    pub fn set_ctrl_mode(&self, mode: CtrlMode) {
        self.ctrl_mode.store(mode as u8, Ordering::Relaxed);
    }

    pub fn ctrl_mode(&self) -> CtrlMode {
        if self.ctrl_mode.load(Ordering::Relaxed) == CtrlMode::Poll as u8 {
            CtrlMode::Poll
        } else {
            CtrlMode::Sleep
        }
    }

    /// Sets where every queue of the device rings its doorbell.
    pub fn set_kick_mode(&self, mode: KickMode) {
        self.control.set_kick_mode(mode);
        for q in &self.data {
            q.set_kick_mode(mode);
        }
    }

    /// Sets every switch of the device at once.
    pub fn apply_switches(&self, switches: DeviceSwitches) {
        self.set_ctrl_mode(switches.ctrl);
        self.set_kick_mode(switches.kick);
        self.set_chain_mode(switches.chain);
        self.set_allow_unadvertised(switches.unadvertised);
        self.control.set_reap(switches.reap);
        for q in &self.data {
            q.set_reap(switches.reap);
        }
    }

    /// The device's switches now.
    pub fn switches(&self) -> DeviceSwitches {
        DeviceSwitches {
            ctrl: self.ctrl_mode(),
            kick: self.control.kick_mode(),
            chain: self.chain_mode(),
            unadvertised: self.allows_unadvertised(),
            reap: self.control.reaps(),
        }
    }

    /// Sets how chained streams opened without an explicit mode run (`chain=`).
    pub fn set_chain_mode(&self, mode: ChainMode) {
        self.chain_mode.store(mode as u8, Ordering::Relaxed);
    }

    pub fn chain_mode(&self) -> ChainMode {
        if self.chain_mode.load(Ordering::Relaxed) == ChainMode::Serial as u8 {
            ChainMode::Serial
        } else {
            ChainMode::Pipelined
        }
    }

    /// Allows algorithms the device implements but does not advertise (AES-ECB/CTR/XTS on QEMU's
    /// builtin backend); the device's answer then decides.
    pub fn set_allow_unadvertised(&self, allow: bool) {
        self.unadvertised.store(allow, Ordering::Relaxed);
    }

    pub fn allows_unadvertised(&self) -> bool {
        self.unadvertised.load(Ordering::Relaxed)
    }

    /// Bounds every request of the device, and every wait for ring space or a request slot.
    pub fn set_timeout_ns(&self, ns: u64) {
        self.health.timeout_ns.store(ns, Ordering::Relaxed);
        for q in &self.health.queues {
            q.set_timeout_ns(ns);
        }
    }

    /// The device's lifecycle (state, generation, recovery hook).
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.health.lifecycle
    }

    pub fn state(&self) -> DeviceState {
        self.health.lifecycle.state()
    }

    /// Incremented by every completed reset.
    pub fn generation(&self) -> u64 {
        self.health.lifecycle.generation()
    }

    /// The device's DMA goes through an IOMMU whose faults `check` reports: answers popped after
    /// a fault fail with it ([`Error::DmaFault`]) and the device is reset; a recovery fails the
    /// requests it finds in flight with the fault, when there was one, instead of `DeviceReset`;
    /// mappings of requests failed by a reset are given back once the device is reset. Only
    /// the first call has an effect. Task context.
    pub fn set_dma_fault_check(&self, check: DmaFaultCheck) {
        for q in &self.health.queues {
            q.set_dma_fault_check(check.clone());
        }
        self.health.dma_faults.call_once(|| check);
    }

    /// Stops submissions and asks the recovery task for a reset (see
    /// [`DeviceHealth::request_recovery`]).
    pub fn request_recovery(&self) {
        self.health.request_recovery()
    }

    /// The recovery task's work: with submissions stopped, resets the device and waits for the
    /// reset to complete, only then fails every request in flight with `DeviceReset` and frees
    /// the memory the device held, re-negotiates, sets every queue up on a fresh ring (its
    /// request slots stay), re-routes the interrupts, sets DRIVER_OK and reopens with a new
    /// generation (sessions from before fail with `SessionLost`). Task context; never sleeps.
    /// Returns the new generation; on an error the device is left `Failed`.
    pub fn recover<T: Transport>(
        &self,
        transport: &mut T,
        steps: &mut impl Recover<T>,
    ) -> Result<u64, Error> {
        let lifecycle = &self.health.lifecycle;
        lifecycle.set(DeviceState::Resetting);
        for q in &self.health.queues {
            q.close();
        }
        let result = (|| {
            steps.reset_and_wait(transport)?;
            let error = self
                .health
                .dma_faults
                .get()
                .and_then(|iommu| iommu.popped(true))
                .unwrap_or(Error::DeviceReset);
            for q in &self.health.queues {
                q.fail_after_reset(error);
            }
            steps.renegotiate(transport)?;
            for q in &self.health.queues {
                steps.route_queue(transport, q.index())?;
                q.rebuild(transport)?;
            }
            steps.driver_ok(transport)
        })();
        if let Err(e) = result {
            lifecycle.set(DeviceState::Failed);
            return Err(e);
        }
        let generation = lifecycle.next_generation();
        self.sessions.reset(generation);
        for q in &self.health.queues {
            q.reopen();
        }
        lifecycle.finish();
        Ok(generation)
    }

    /// TEST ONLY (fault injection): posts a cipher request whose `src_len` differs from its
    /// `dst_len` on `queue`, which QEMU answers by flagging DEVICE_NEEDS_RESET (and printing a
    /// complaint). The driver never builds such a request otherwise. The returned request stays
    /// in flight until the device is reset.
    #[doc(hidden)]
    pub fn inject_src_dst_mismatch(&self, queue: &CryptoQueue<H>) -> Result<Request<H>, Error> {
        use super::wire;
        let header =
            wire::CipherDataHeader::new(wire::CIPHER_ENCRYPT, wire::CIPHER_AES_CBC, 0, 16, 16);
        let mut bytes = [0u8; wire::DATA_HDR_LEN];
        bytes.copy_from_slice(zerocopy::IntoBytes::as_bytes(&header));
        // dst_len (offset 32 of the header) = 32, src_len stays 16.
        bytes[32..36].copy_from_slice(&32u32.to_le_bytes());
        let mut builder = queue.reserve(wire::DATA_HDR_LEN + 16 + 16, 32 + wire::INHDR_LEN)?;
        builder.push(&bytes)?.push(&[0; 16])?.push(&[0; 16])?;
        builder.submit()
    }

    /// The shared health record requests keep (timeouts, needs-reset handling).
    pub fn health(&self) -> &Arc<DeviceHealth<H>> {
        &self.health
    }

    /// Records where the device's interrupts go (once; a second call is ignored). Until then
    /// CPU i uses queue i mod n.
    pub fn set_routing(&self, routing: QueueRouting) {
        self.routing.call_once(|| routing);
    }

    /// Where the device's interrupts go, once they are routed.
    pub fn routing(&self) -> Option<&QueueRouting> {
        self.routing.get()
    }

    /// The data queue CPU `cpu` submits to: the one whose interrupt that CPU takes, where the
    /// device has one (see [`QueueRouting`]). The only place a submitter's queue is chosen.
    pub fn data_queue_for(&self, cpu: usize) -> &CryptoQueue<H> {
        let queue = self
            .routing
            .get()
            .map_or(cpu % self.data.len(), |r| r.queue_for(cpu));
        &self.data[queue % self.data.len()]
    }

    /// The data queue of the CPU running the caller.
    pub fn current_data_queue(&self) -> &CryptoQueue<H> {
        self.data_queue_for(platform::get().current_cpu())
    }

    /// Whether the device takes requests: its state in memory (no register read).
    pub(crate) fn ready(&self) -> Result<(), Error> {
        self.health.lifecycle.check_open()?;
        if !self.config.hw_ready() {
            return Err(Error::DeviceNotReady);
        }
        Ok(())
    }

    /// Reads the status register (an MMIO read): if DEVICE_NEEDS_RESET is set, stops
    /// submissions, asks for recovery and returns true. For the configuration interrupt.
    pub fn check_needs_reset(&self) -> bool {
        self.health.check_needs_reset()
    }

    /// Posts a control request and waits for it, sleeping or (in `Poll` mode, one at a time
    /// under the control lock) polling. On timeout the request's memory stays with the queue
    /// until the device returns it; if the device needs a reset, every request in flight fails.
    pub(crate) fn control_round_trip(
        &self,
        builder: RequestBuilder<H>,
    ) -> Result<Request<H>, Error> {
        let deadline = self.health.deadline();
        if self.ctrl_mode() == CtrlMode::Poll {
            let _one_at_a_time = self.poll_lock.lock();
            // Never sleeps: preemption is off under the poll lock.
            let request = builder.submit_polled()?;
            match request.poll_until(deadline) {
                Ok(_) => Ok(request),
                Err(Error::Timeout) => Err(self.health.timed_out()),
                Err(e) => Err(e),
            }
        } else {
            let request = builder.submit()?;
            self.health.wait_until(&request, deadline)?;
            Ok(request)
        }
    }
}
