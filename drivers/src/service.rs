//! The crypto service over every device: a session opened once is usable from every CPU, on the
//! device and queue that CPU maps to (per-CPU crypto state and queues, as "DM-CRYPT: Scale to multiple CPUs" did).
//!
//! - `queues=percpu` (the design): CPU c submits to the device whose queue interrupts c (its
//!   [`QueueRouting`](crate::virtio_crypto::routing::QueueRouting) says so), on that queue, so a
//!   completion wakes its task on the same CPU; CPUs without such a device spread over the
//!   devices by index.
//! - `queues=shared` (the baseline): every CPU submits to device 0, queue 0.
//!
//! A [`ServiceSession`] creates the device's session the first time a CPU mapped to that device
//! uses it (a control request, in task context), keeps the key only while some device still
//! lacks its session (then wipes it), and destroys every device session when dropped.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use virtio_drivers::Hal;
use zeroize::Zeroizing;

use crate::crypto::Session;
use crate::error::Error;
use crate::sync::{SpinLock, WaitQueue, platform};
use crate::virtio_crypto::cipher::{Cipher, CipherRequest, Direction};
use crate::virtio_crypto::device::CryptoDevice;
use crate::virtio_crypto::queue::CryptoQueue;
use crate::virtio_crypto::request::RequestBatch;

/// Which queue a CPU submits to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum QueueMode {
    /// Each CPU its own device and queue, interrupts routed back to it (the design).
    PerCpu = 0,
    /// Every CPU on device 0, queue 0 (the baseline of the dm-crypt experiment).
    Shared = 1,
}

impl QueueMode {
    pub fn name(self) -> &'static str {
        match self {
            QueueMode::PerCpu => "percpu",
            QueueMode::Shared => "shared",
        }
    }
}

/// Every device, and how CPUs are spread over them.
pub struct CryptoService<H: Hal + 'static> {
    devices: Vec<&'static CryptoDevice<H>>,
    mode: AtomicU8,
}

impl<H: Hal + 'static> CryptoService<H> {
    /// A service over `devices` (at least one), in `PerCpu` mode.
    pub fn new(devices: Vec<&'static CryptoDevice<H>>) -> Result<Self, Error> {
        if devices.is_empty() {
            return Err(Error::NoDevice);
        }
        Ok(CryptoService {
            devices,
            mode: AtomicU8::new(QueueMode::PerCpu as u8),
        })
    }

    pub fn devices(&self) -> &[&'static CryptoDevice<H>] {
        &self.devices
    }

    pub fn set_queue_mode(&self, mode: QueueMode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    pub fn queue_mode(&self) -> QueueMode {
        if self.mode.load(Ordering::Relaxed) == QueueMode::Shared as u8 {
            QueueMode::Shared
        } else {
            QueueMode::PerCpu
        }
    }

    /// The device (by index) and queue CPU `cpu` submits to in the current mode.
    pub fn route(&self, cpu: usize) -> (usize, &'static CryptoQueue<H>) {
        match self.queue_mode() {
            QueueMode::Shared => (0, &self.devices[0].data[0]),
            QueueMode::PerCpu => {
                let index = self
                    .devices
                    .iter()
                    .position(|d| d.routing().is_some_and(|r| r.is_local(cpu)))
                    .unwrap_or(cpu % self.devices.len());
                let device: &'static CryptoDevice<H> = self.devices[index];
                (index, device.data_queue_for(cpu))
            }
        }
    }

    /// Opens a cipher session usable from every CPU. Nothing is sent to a device until a CPU
    /// mapped to it makes a request (or [`ServiceSession::open_everywhere`] is called).
    pub fn open(
        &'static self,
        cipher: Cipher,
        direction: Direction,
        key: &[u8],
    ) -> Result<ServiceSession<H>, Error> {
        self.devices[0].check_cipher(cipher)?;
        cipher.check_key_len(key.len(), self.devices[0].config.max_cipher_key_len)?;
        Ok(ServiceSession {
            service: self,
            cipher,
            direction,
            key: SpinLock::new("service-key", Some(Zeroizing::new(key.to_vec()))),
            per_device: self
                .devices
                .iter()
                .map(|_| DeviceSession {
                    session: spin::Once::new(),
                    creating: AtomicBool::new(false),
                })
                .collect(),
            opened: AtomicUsize::new(0),
            created: WaitQueue::new(),
        })
    }
}

struct DeviceSession<H: Hal + 'static> {
    session: spin::Once<Session<'static, H>>,
    /// A task is creating this device's session (others wait on `created`).
    creating: AtomicBool,
}

/// A cipher session over every device of a [`CryptoService`].
pub struct ServiceSession<H: Hal + 'static> {
    service: &'static CryptoService<H>,
    cipher: Cipher,
    direction: Direction,
    /// Kept until every device has its session, then wiped (and wiped on drop).
    key: SpinLock<Option<Zeroizing<Vec<u8>>>>,
    per_device: Vec<DeviceSession<H>>,
    opened: AtomicUsize,
    created: WaitQueue,
}

impl<H: Hal + 'static> ServiceSession<H> {
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Devices this session has been created on so far.
    pub fn devices_opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }

    /// Whether the key is still held (some device has no session yet).
    pub fn holds_key(&self) -> bool {
        self.key.lock().is_some()
    }

    /// Creates the session on every device now.
    pub fn open_everywhere(&self) -> Result<(), Error> {
        (0..self.per_device.len()).try_for_each(|d| self.session_on(d).map(|_| ()))
    }

    /// The session of device `index`, created on first use.
    fn session_on(&self, index: usize) -> Result<&Session<'static, H>, Error> {
        let slot = &self.per_device[index];
        loop {
            if let Some(session) = slot.session.get() {
                return Ok(session);
            }
            if slot
                .creating
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                self.created.wait_until(|| {
                    (slot.session.get().is_some() || !slot.creating.load(Ordering::SeqCst))
                        .then_some(())
                });
                continue;
            }
            let result = self.create_on(index);
            slot.creating.store(false, Ordering::SeqCst);
            self.created.wake_all();
            result?;
        }
    }

    /// Creates device `index`'s session (the caller holds its `creating` flag).
    fn create_on(&self, index: usize) -> Result<(), Error> {
        let slot = &self.per_device[index];
        if slot.session.get().is_some() {
            return Ok(());
        }
        // A copy for the blocking create: the lock is not held while the request sleeps.
        let key: Zeroizing<Vec<u8>> = match self.key.lock().as_ref() {
            Some(key) => Zeroizing::new(key.to_vec()),
            // Unreachable: the key goes only once every device has its session.
            None => return Err(Error::UnknownSession),
        };
        let session = Session::new(
            self.service.devices[index],
            self.cipher,
            self.direction,
            &key,
        )?;
        slot.session.call_once(|| session);
        if self.opened.fetch_add(1, Ordering::SeqCst) + 1 == self.per_device.len() {
            // Every device has its session: the key is not needed any more.
            self.key.lock().take();
        }
        Ok(())
    }

    /// Encrypts or decrypts (the session's direction) `src` into `dst` on the calling CPU's
    /// device and queue.
    pub fn apply(&self, iv: &[u8], src: &[u8], dst: &mut [u8]) -> Result<(), Error> {
        if src.len() != dst.len() {
            return Err(Error::LengthMismatch {
                src: src.len(),
                dst: dst.len(),
            });
        }
        let out = self.start(iv, src)?.wait()?;
        dst.copy_from_slice(&out);
        Ok(())
    }

    /// Posts a request on the calling CPU's device and queue without waiting: keep many in
    /// flight and collect each with [`CipherRequest::wait`]. A device reset since its session
    /// was made gives `SessionLost` (open a new service session).
    pub fn start(&self, iv: &[u8], src: &[u8]) -> Result<CipherRequest<H>, Error> {
        let (index, queue) = self.service.route(platform::get().current_cpu());
        let session = self.session_on(index)?;
        self.service.devices[index].start_cipher_request(
            queue,
            &session.as_cipher_session(),
            iv,
            src,
        )
    }

    /// Like [`start`](Self::start) for several requests (`(iv, src)` each) posted together on
    /// this CPU's queue: one kick-prepare, at most one doorbell. The requests are appended to
    /// `out` in order; on an error those posted before it are there, and the error is returned.
    /// Their slots are taken together (waiting until that many are free, never holding part):
    /// a batch of more requests than the queue has slots is `BatchTooLarge` at once.
    pub fn start_batch<'a>(
        &self,
        inputs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        out: &mut Vec<CipherRequest<H>>,
    ) -> Result<(), Error> {
        let (index, queue) = self.service.route(platform::get().current_cpu());
        let session = self.session_on(index)?.as_cipher_session();
        let device = self.service.devices[index];
        let inputs: Vec<(&[u8], &[u8])> = inputs.into_iter().collect();
        let mut group = queue.reserve_group(inputs.len())?;
        let mut batch = RequestBatch::with_capacity(inputs.len());
        for (iv, src) in inputs {
            batch.push(device.build_cipher_request(&mut group, &session, iv, src)?)?;
        }
        let mut posted = Vec::new();
        let result = batch.submit(&mut posted);
        out.extend(
            posted
                .into_iter()
                .map(|r| CipherRequest::from_request(r, device.health().clone())),
        );
        result
    }
}
