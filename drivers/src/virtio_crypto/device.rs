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

use super::config::CryptoConfig;
use super::queue::{CryptoQueue, KickMode, QueueCore};
use super::request::{Request, RequestBuilder};
use super::routing::QueueRouting;
use super::session::SessionCounter;
use super::slots::StorageConfig;
use crate::error::Error;
use crate::stream::ChainMode;
use crate::sync::{SpinLock, platform};

pub use super::cipher::{
    CIPHER_IV_OFFSET, Cipher, CipherOutput, CipherRequest, Direction, MAX_REQUEST_BYTES,
};
pub use super::session::{MAX_SESSIONS, Service};

/// How long a request may take before the caller gets `Timeout`.
pub const DEFAULT_TIMEOUT_NS: u64 = 10_000_000_000;

/// How control requests wait for the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CtrlMode {
    /// Sleep on the request's completion; any number in flight (the design).
    Sleep = 0,
    /// One request at a time under a control lock, busy-polling the used ring (the baseline the
    /// first seed replaced).
    Poll = 1,
}

/// What every request of a device needs after it was posted, shared by `Arc` so owned requests
/// need no borrow of the device: the DEVICE_NEEDS_RESET reader, the queues to fail when it is
/// set, and the timeout.
pub struct DeviceHealth<H: Hal> {
    needs_reset: Box<dyn Fn() -> bool + Send + Sync>,
    queues: Vec<Arc<QueueCore<H>>>,
    timeout_ns: AtomicU64,
}

impl<H: Hal> DeviceHealth<H> {
    pub fn timeout_ns(&self) -> u64 {
        self.timeout_ns.load(Ordering::Relaxed)
    }

    /// If the device has flagged DEVICE_NEEDS_RESET, fails every request in flight on every
    /// queue (they get `DeviceNeedsReset`) and returns true.
    pub fn fail_if_needs_reset(&self) -> bool {
        if !(self.needs_reset)() {
            return false;
        }
        for q in &self.queues {
            q.fail_all(Error::DeviceNeedsReset);
        }
        true
    }

    /// A request timed out: if the device needs a reset, that is the error, and every request
    /// in flight on every queue fails with it.
    pub fn timed_out(&self) -> Error {
        if self.fail_if_needs_reset() {
            Error::DeviceNeedsReset
        } else {
            Error::Timeout
        }
    }
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
    ) -> Result<Self, Error> {
        if data.is_empty() {
            return Err(Error::NotSupported {
                what: "a device without data queues",
            });
        }
        control.provision(StorageConfig::CONTROL)?;
        for q in &data {
            q.provision(StorageConfig::DATA)?;
        }
        let queues = core::iter::once(&control)
            .chain(&data)
            .map(|q| q.core().clone())
            .collect();
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

    /// Whether unadvertised algorithms are allowed (to restore after changing it).
    pub fn allows_unadvertised_ciphers(&self) -> bool {
        self.allows_unadvertised()
    }

    pub(crate) fn allows_unadvertised(&self) -> bool {
        self.unadvertised.load(Ordering::Relaxed)
    }

    pub fn set_timeout_ns(&self, ns: u64) {
        self.health.timeout_ns.store(ns, Ordering::Relaxed);
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

    pub(crate) fn ready(&self) -> Result<(), Error> {
        if (self.health.needs_reset)() {
            return Err(Error::DeviceNeedsReset);
        }
        if !self.config.hw_ready() {
            return Err(Error::DeviceNotReady);
        }
        Ok(())
    }

    /// If the device has flagged DEVICE_NEEDS_RESET, fails every request in flight on every
    /// queue (they get `DeviceNeedsReset`) and returns true.
    pub fn fail_if_needs_reset(&self) -> bool {
        self.health.fail_if_needs_reset()
    }

    /// Posts a control request and waits for it, sleeping or (in `Poll` mode, one at a time
    /// under the control lock) polling. On timeout the request's memory stays with the queue
    /// until the device returns it; if the device needs a reset, every request in flight fails.
    pub(crate) fn control_round_trip(
        &self,
        builder: RequestBuilder<H>,
    ) -> Result<Request<H>, Error> {
        let deadline = platform::get()
            .now_ns()
            .saturating_add(self.health.timeout_ns());
        let (request, result) = if self.ctrl_mode() == CtrlMode::Poll {
            let _one_at_a_time = self.poll_lock.lock();
            let request = builder.submit()?;
            let result = request.poll_until(deadline);
            (request, result)
        } else {
            let request = builder.submit()?;
            let result = request.wait_until(Some(deadline));
            (request, result)
        };
        match result {
            Ok(_) => Ok(request),
            Err(Error::Timeout) => Err(self.health.timed_out()),
            Err(e) => Err(e),
        }
    }
}
