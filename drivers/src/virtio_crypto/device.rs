//! A virtio-crypto device: one control queue, one or more data queues, and the request logic on
//! top — validation before anything reaches the device, session create/destroy on the control
//! queue with any number in flight, cipher requests on the data queues.
//!
//! Every public call returns `Result<_, Error>`; nothing a caller or the device does panics.
//! Requests that QEMU would answer by breaking the device (short headers, missing IV or data,
//! src_len != dst_len, more than `max_size`) are refused here before they are built.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use virtio_drivers::Hal;
use zeroize::Zeroize;

use super::config::CryptoConfig;
use super::queue::{Buffers, CryptoQueue, Finished, KickMode};
use super::status::{RequestKind, status_to_result};
use super::wire;
use crate::error::Error;
use crate::sync::{SpinLock, platform};

/// Sessions QEMU's builtin backend holds at once (not advertised in the config space).
pub const MAX_SESSIONS: usize = 256;
/// Largest request payload this driver builds (one heap buffer each for src and dst).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
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

/// AES modes the driver knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    AesEcb,
    AesCbc,
    AesCtr,
    AesXts,
}

impl Cipher {
    pub const ALL: [Cipher; 4] = [
        Cipher::AesEcb,
        Cipher::AesCbc,
        Cipher::AesCtr,
        Cipher::AesXts,
    ];

    pub fn algo(self) -> u32 {
        match self {
            Cipher::AesEcb => wire::CIPHER_AES_ECB,
            Cipher::AesCbc => wire::CIPHER_AES_CBC,
            Cipher::AesCtr => wire::CIPHER_AES_CTR,
            Cipher::AesXts => wire::CIPHER_AES_XTS,
        }
    }

    /// The kernel crypto API name (`cbc(aes)`), as kcapi takes it.
    pub fn kcapi_name(self) -> &'static str {
        match self {
            Cipher::AesEcb => "ecb(aes)",
            Cipher::AesCbc => "cbc(aes)",
            Cipher::AesCtr => "ctr(aes)",
            Cipher::AesXts => "xts(aes)",
        }
    }

    pub fn from_kcapi_name(name: &str) -> Option<Cipher> {
        Cipher::ALL.into_iter().find(|c| c.kcapi_name() == name)
    }

    /// Legal key lengths in bytes.
    pub fn key_lengths(self) -> &'static [usize] {
        match self {
            Cipher::AesXts => &[32, 64],
            _ => &[16, 24, 32],
        }
    }

    fn key_lengths_text(self) -> &'static str {
        match self {
            Cipher::AesXts => "32 or 64",
            _ => "16, 24 or 32",
        }
    }

    /// IV length in bytes (ECB has none).
    pub fn iv_len(self) -> usize {
        if self == Cipher::AesEcb { 0 } else { 16 }
    }

    /// Data must be a multiple of this.
    pub fn block_len(self) -> usize {
        if self == Cipher::AesCtr { 1 } else { 16 }
    }

    /// Implemented by QEMU's builtin backend although it advertises only AES-CBC.
    fn implemented_unadvertised(self) -> bool {
        self != Cipher::AesCbc
    }
}

/// Direction fixed when a session is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

impl Direction {
    fn op(self) -> u32 {
        match self {
            Direction::Encrypt => wire::OP_ENCRYPT,
            Direction::Decrypt => wire::OP_DECRYPT,
        }
    }

    fn opcode(self) -> u32 {
        match self {
            Direction::Encrypt => wire::CIPHER_ENCRYPT,
            Direction::Decrypt => wire::CIPHER_DECRYPT,
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
    live_sessions: AtomicUsize,
    timeout_ns: AtomicU64,
    needs_reset: Box<dyn Fn() -> bool + Send + Sync>,
}

impl<H: Hal> CryptoDevice<H> {
    /// Assembles a device from queues already set up on its transport. `needs_reset` reads the
    /// transport's DEVICE_NEEDS_RESET bit.
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
        Ok(CryptoDevice {
            name,
            config,
            control,
            data,
            ctrl_mode: AtomicU8::new(CtrlMode::Sleep as u8),
            poll_lock: SpinLock::new("ctrl-poll", ()),
            unadvertised: AtomicBool::new(false),
            live_sessions: AtomicUsize::new(0),
            timeout_ns: AtomicU64::new(DEFAULT_TIMEOUT_NS),
            needs_reset,
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

    /// Allows algorithms the device implements but does not advertise (AES-ECB/CTR/XTS on QEMU's
    /// builtin backend); the device's answer then decides.
    pub fn set_allow_unadvertised(&self, allow: bool) {
        self.unadvertised.store(allow, Ordering::Relaxed);
    }

    pub fn set_timeout_ns(&self, ns: u64) {
        self.timeout_ns.store(ns, Ordering::Relaxed);
    }

    /// Sessions this driver created on the device and has not destroyed.
    pub fn live_sessions(&self) -> usize {
        self.live_sessions.load(Ordering::SeqCst)
    }

    /// The data queue for CPU `cpu`: CPU i uses queue i mod n.
    pub fn data_queue_for(&self, cpu: usize) -> &CryptoQueue<H> {
        &self.data[cpu % self.data.len()]
    }

    /// Whether the device could take `cipher` (advertised, or opted in).
    pub fn check_cipher(&self, cipher: Cipher) -> Result<(), Error> {
        if !self.config.advertises_service(wire::SERVICE_CIPHER) {
            return Err(Error::NotSupported {
                what: "the cipher service",
            });
        }
        if self.config.advertises_cipher(cipher.algo())
            || (cipher.implemented_unadvertised() && self.unadvertised.load(Ordering::Relaxed))
        {
            Ok(())
        } else {
            Err(Error::NotSupported {
                what: cipher.kcapi_name(),
            })
        }
    }

    fn ready(&self) -> Result<(), Error> {
        if (self.needs_reset)() {
            return Err(Error::DeviceNeedsReset);
        }
        if !self.config.hw_ready() {
            return Err(Error::DeviceNotReady);
        }
        Ok(())
    }

    /// Submits on `queue` and waits for the result, sleeping or (control queue in `Poll` mode)
    /// polling. On timeout the request's buffers stay with the queue until the device returns
    /// them; if the device needs a reset, every request in flight fails.
    fn round_trip(
        &self,
        queue: &CryptoQueue<H>,
        buffers: Buffers,
        poll: bool,
    ) -> Result<Buffers, Error> {
        let timeout = self.timeout_ns.load(Ordering::Relaxed);
        let finished = if poll {
            let _one_at_a_time = self.poll_lock.lock();
            let completion = queue.submit(buffers)?;
            let deadline = platform::get().now_ns().saturating_add(timeout);
            loop {
                queue.handle_interrupt();
                if completion.is_done() {
                    break completion.wait();
                }
                if platform::get().now_ns() >= deadline {
                    return Err(self.timed_out());
                }
                core::hint::spin_loop();
            }
        } else {
            let completion = queue.submit(buffers)?;
            match completion.wait_timeout(timeout) {
                Ok(finished) => finished,
                Err(_) => return Err(self.timed_out()),
            }
        };
        let Finished { buffers, result } = finished;
        result?;
        Ok(buffers)
    }

    /// If the device has flagged DEVICE_NEEDS_RESET, fails every request in flight on every
    /// queue (they get `DeviceNeedsReset`) and returns true.
    pub fn fail_if_needs_reset(&self) -> bool {
        if !(self.needs_reset)() {
            return false;
        }
        self.control.fail_all(Error::DeviceNeedsReset);
        for q in &self.data {
            q.fail_all(Error::DeviceNeedsReset);
        }
        true
    }

    /// A request timed out: if the device needs a reset, that is the error, and every request
    /// in flight on every queue fails with it.
    fn timed_out(&self) -> Error {
        if self.fail_if_needs_reset() {
            Error::DeviceNeedsReset
        } else {
            Error::Timeout
        }
    }

    /// Creates a cipher session; returns the device's session id.
    pub fn create_cipher_session(
        &self,
        cipher: Cipher,
        direction: Direction,
        key: &[u8],
    ) -> Result<u64, Error> {
        self.ready()?;
        self.check_cipher(cipher)?;
        if !cipher.key_lengths().contains(&key.len())
            || key.len() > self.config.max_cipher_key_len as usize
        {
            return Err(Error::InvalidKeyLength {
                got: key.len(),
                allowed: cipher.key_lengths_text(),
            });
        }
        if self.live_sessions.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
            self.live_sessions.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::SessionsExhausted);
        }
        let request = wire::CipherCreateSession {
            algo: cipher.algo(),
            key_len: key.len() as u32,
            op: direction.op(),
        };
        let mut readable = heapless::Vec::new();
        let _ = readable.push(request.to_bytes().to_vec());
        let _ = readable.push(key.to_vec());
        let mut writable = heapless::Vec::new();
        let _ = writable.push(vec![0u8; wire::SESSION_INPUT_LEN]);
        let result = self
            .round_trip(
                &self.control,
                Buffers { readable, writable },
                self.ctrl_mode() == CtrlMode::Poll,
            )
            .and_then(|mut buffers| {
                // The key has reached the device; wipe our copy in the DMA buffer.
                if let Some(key_copy) = buffers.readable.get_mut(1) {
                    key_copy.zeroize();
                }
                let reply: &[u8; wire::SESSION_INPUT_LEN] = buffers.writable[0]
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::MalformedCompletion {
                        what: "session input of the wrong size",
                    })?;
                let (id, status) = wire::SessionInput::parse(reply);
                status_to_result(status, RequestKind::CreateSession).map(|()| id)
            });
        if result.is_err() {
            self.live_sessions.fetch_sub(1, Ordering::SeqCst);
        }
        result
    }

    /// Destroys a cipher session.
    pub fn destroy_cipher_session(&self, session_id: u64) -> Result<(), Error> {
        self.ready()?;
        let mut readable = heapless::Vec::new();
        let _ = readable.push(wire::DestroySession::cipher(session_id).to_bytes().to_vec());
        let mut writable = heapless::Vec::new();
        let _ = writable.push(vec![0xffu8; wire::INHDR_LEN]);
        let buffers = self.round_trip(
            &self.control,
            Buffers { readable, writable },
            self.ctrl_mode() == CtrlMode::Poll,
        )?;
        status_to_result(buffers.writable[0][0], RequestKind::DestroySession)?;
        self.live_sessions.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    /// Checks a cipher request against the algorithm and the device limits.
    pub fn check_request(
        &self,
        cipher: Cipher,
        iv: &[u8],
        src_len: usize,
        dst_len: usize,
    ) -> Result<(), Error> {
        if iv.len() != cipher.iv_len() {
            return Err(Error::InvalidIvLength {
                got: iv.len(),
                expected: cipher.iv_len(),
            });
        }
        if src_len == 0 {
            return Err(Error::EmptyRequest);
        }
        if src_len != dst_len {
            return Err(Error::LengthMismatch {
                src: src_len,
                dst: dst_len,
            });
        }
        if !src_len.is_multiple_of(cipher.block_len()) {
            return Err(Error::InvalidDataLength {
                got: src_len,
                block: cipher.block_len(),
            });
        }
        let total = (iv.len() + src_len + dst_len) as u64;
        let max = self.config.max_size.min(2 * MAX_REQUEST_BYTES as u64 + 16);
        if total > max || src_len > MAX_REQUEST_BYTES {
            return Err(Error::RequestTooLarge {
                got: src_len as u64,
                max: (MAX_REQUEST_BYTES as u64).min(max / 2),
            });
        }
        Ok(())
    }

    /// Runs one cipher request of session `session_id` on `queue`: `src` in, the same number of
    /// bytes out.
    pub fn cipher_request(
        &self,
        queue: &CryptoQueue<H>,
        session_id: u64,
        cipher: Cipher,
        direction: Direction,
        iv: &[u8],
        src: &[u8],
    ) -> Result<Vec<u8>, Error> {
        self.start_cipher_request(queue, session_id, cipher, direction, iv, src)?
            .wait()
    }

    /// Validates and posts a cipher request without waiting for it: the caller may keep many in
    /// flight and collect each with [`PendingRequest::wait`].
    pub fn start_cipher_request<'d>(
        &'d self,
        queue: &'d CryptoQueue<H>,
        session_id: u64,
        cipher: Cipher,
        direction: Direction,
        iv: &[u8],
        src: &[u8],
    ) -> Result<PendingRequest<'d, H>, Error> {
        self.ready()?;
        self.check_request(cipher, iv, src.len(), src.len())?;
        let header = wire::CipherDataHeader {
            opcode: direction.opcode(),
            algo: cipher.algo(),
            session_id,
            iv_len: iv.len() as u32,
            src_len: src.len() as u32,
            dst_len: src.len() as u32,
        };
        let mut readable = heapless::Vec::new();
        let _ = readable.push(header.to_bytes().to_vec());
        if !iv.is_empty() {
            let _ = readable.push(iv.to_vec());
        }
        let _ = readable.push(src.to_vec());
        let mut writable = heapless::Vec::new();
        let _ = writable.push(vec![0u8; src.len()]);
        let _ = writable.push(vec![0xffu8; wire::INHDR_LEN]);
        let completion = queue.submit(Buffers { readable, writable })?;
        Ok(PendingRequest {
            device: self,
            completion,
        })
    }
}

/// A cipher request in flight.
pub struct PendingRequest<'d, H: Hal> {
    device: &'d CryptoDevice<H>,
    completion: alloc::sync::Arc<super::queue::RequestCompletion>,
}

impl<H: Hal> PendingRequest<'_, H> {
    /// Sleeps until the device answers; returns the output bytes.
    pub fn wait(self) -> Result<Vec<u8>, Error> {
        let timeout = self.device.timeout_ns.load(Ordering::Relaxed);
        let Finished {
            mut buffers,
            result,
        } = match self.completion.wait_timeout(timeout) {
            Ok(finished) => finished,
            Err(_) => return Err(self.device.timed_out()),
        };
        result?;
        status_to_result(buffers.writable[1][0], RequestKind::Data)?;
        Ok(core::mem::take(&mut buffers.writable[0]))
    }
}
