//! The cipher service: algorithms and directions, validation against the algorithm and the
//! device limits, and the cipher data request
//! `header(72) | iv | src` (device-readable) `| dst | status(1)` (device-writable).
//!
//! Invariants: nothing QEMU would answer by breaking the device (short header, missing IV or
//! data, src_len != dst_len, more than `max_size`) is ever built; an output is handed out only
//! with status OK and a used length covering `dst` and the status byte.

use alloc::sync::Arc;
use alloc::vec::Vec;

use virtio_drivers::Hal;

use super::device::{CryptoDevice, DeviceHealth};
use super::queue::CryptoQueue;
use super::request::{Request, RequestBuilder, SlotSource};
use super::slots::OwnedBuffers;
use super::status::{RequestKind, status_to_result};
use super::wire;
use crate::error::Error;

/// Where a cipher data request's IV starts in its device-readable bytes (after the header).
pub const CIPHER_IV_OFFSET: usize = wire::DATA_HDR_LEN;

/// Largest request payload this driver builds.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

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

    /// Whether a key of `len` bytes fits the algorithm and the device's `max_cipher_key_len`.
    pub fn check_key_len(self, len: usize, device_max: u32) -> Result<(), Error> {
        if self.key_lengths().contains(&len) && len <= device_max as usize {
            Ok(())
        } else {
            Err(Error::InvalidKeyLength {
                got: len,
                allowed: self.key_lengths_text(),
            })
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

    /// Bytes of zero padding that make a CTR request a whole number of AES blocks (0 for other
    /// ciphers, whose length rules `check_request` enforces).
    pub fn ctr_padding(self, len: usize) -> usize {
        const BLOCK: usize = 16;
        match self {
            Cipher::AesCtr if !len.is_multiple_of(BLOCK) => BLOCK - len % BLOCK,
            _ => 0,
        }
    }

    /// `src` as the device takes it: a CTR request that is not whole blocks padded with zeros
    /// to whole blocks (QEMU's builtin device answers ERR otherwise, though CTR is a stream
    /// mode and Linux allows any length). The keystream does not depend on the data, so the
    /// first `src.len()` bytes of the output are exactly CTR over `src`. Only this case copies.
    pub fn as_sent(self, src: &[u8]) -> alloc::borrow::Cow<'_, [u8]> {
        match self.ctr_padding(src.len()) {
            0 => alloc::borrow::Cow::Borrowed(src),
            pad => {
                let mut padded = Vec::with_capacity(src.len() + pad);
                padded.extend_from_slice(src);
                padded.resize(src.len() + pad, 0);
                alloc::borrow::Cow::Owned(padded)
            }
        }
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

/// A cipher session as its requests need it: the device's id for it, the device generation it
/// was made in (its requests are bound to it: after a reset they are refused with
/// `SessionLost`, never sent to a session that now has another owner), and what it was made
/// for (the device fixes the algorithm and direction at creation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CipherSession {
    pub id: u64,
    pub generation: u64,
    pub cipher: Cipher,
    pub direction: Direction,
}

impl<H: Hal> CryptoDevice<H> {
    /// Whether the device could take `cipher` (advertised, or opted in).
    pub fn check_cipher(&self, cipher: Cipher) -> Result<(), Error> {
        if !self.config.advertises_service(wire::SERVICE_CIPHER) {
            return Err(Error::NotSupported {
                what: "the cipher service",
            });
        }
        if self.config.advertises_cipher(cipher.algo())
            || (cipher.implemented_unadvertised() && self.allows_unadvertised())
        {
            Ok(())
        } else {
            Err(Error::NotSupported {
                what: cipher.kcapi_name(),
            })
        }
    }

    /// Creates a cipher session.
    pub fn create_cipher_session(
        &self,
        cipher: Cipher,
        direction: Direction,
        key: &[u8],
    ) -> Result<CipherSession, Error> {
        self.ready()?;
        let request = self.cipher_create_request(cipher, direction, key)?;
        let (id, generation) = self.create_session(&request, key)?;
        Ok(CipherSession {
            id,
            generation,
            cipher,
            direction,
        })
    }

    /// The create-session request for a cipher session with `key`, once the device could take
    /// it (algorithm offered, key length allowed).
    pub(crate) fn cipher_create_request(
        &self,
        cipher: Cipher,
        direction: Direction,
        key: &[u8],
    ) -> Result<wire::CipherCreateSession, Error> {
        self.check_cipher(cipher)?;
        cipher.check_key_len(key.len(), self.config.max_cipher_key_len)?;
        Ok(wire::CipherCreateSession::new(
            cipher.algo(),
            key.len() as u32,
            direction.op(),
        ))
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

    /// Validates and builds (does not post) a request of `session` in a slot of `slots` (a
    /// queue, or a group a batch took), bound to the session's generation: submit it with
    /// `submit` (then [`CipherRequest::from_request`]) or with a completion handler. No
    /// allocation for requests that fit the queue's preallocated memory. The one request path
    /// of the cipher service: every other entry point goes through it.
    pub fn build_cipher_request<'q>(
        &self,
        slots: impl Into<SlotSource<'q, H>>,
        session: &CipherSession,
        iv: &[u8],
        src: &[u8],
    ) -> Result<RequestBuilder<H>, Error>
    where
        H: 'q,
    {
        let mut builder =
            self.begin_cipher_request(slots.into(), session, iv, (src.len(), src.len()), true)?;
        builder.push(src)?;
        Ok(builder)
    }

    /// Validates a request of `session` of `src_len` bytes into `dst_len`, reserves its slot
    /// and pushes the header and IV; the status byte is preset, the reply expected and the
    /// generation bound. With `data_in_slot` the slot also holds the data (the caller pushes
    /// `src`); without, the caller hands its own buffers over.
    fn begin_cipher_request(
        &self,
        slots: SlotSource<'_, H>,
        session: &CipherSession,
        iv: &[u8],
        (src_len, dst_len): (usize, usize),
        data_in_slot: bool,
    ) -> Result<RequestBuilder<H>, Error> {
        if session.generation != self.generation() {
            return Err(Error::SessionLost);
        }
        self.ready()?;
        self.check_request(session.cipher, iv, src_len, dst_len)?;
        let header = wire::CipherDataHeader::new(
            session.direction.opcode(),
            session.cipher.algo(),
            session.id,
            iv.len() as u32,
            src_len as u32,
        );
        let in_slot = if data_in_slot {
            (src_len, dst_len)
        } else {
            (0, 0)
        };
        let mut builder = slots.reserve(
            wire::DATA_HDR_LEN + iv.len() + in_slot.0,
            in_slot.1 + wire::INHDR_LEN,
        )?;
        builder
            .push_struct(&header)?
            .push(iv)?
            // A status the device must overwrite (0xff is no status code).
            .preset_status(0xff)
            .expect_used(dst_len + wire::INHDR_LEN)
            .bind_generation(session.generation);
        Ok(builder)
    }

    /// Validates and posts a request of `session` without waiting for it: the caller may keep
    /// many in flight (the request is owned, not borrowed) and collect each with
    /// [`CipherRequest::wait`].
    pub fn start_cipher_request(
        &self,
        queue: &CryptoQueue<H>,
        session: &CipherSession,
        iv: &[u8],
        src: &[u8],
    ) -> Result<CipherRequest<H>, Error> {
        let request = self
            .build_cipher_request(queue, session, iv, src)?
            .submit()?;
        Ok(CipherRequest::from_request(request, self.health().clone()))
    }

    /// Like [`start_cipher_request`](Self::start_cipher_request) without copying the data: the
    /// device reads `buffers.src` and writes `buffers.dst` (of the same length) where they are;
    /// only the header, IV and status go through the queue's memory. [`OwnedCipherRequest::wait`]
    /// gives both buffers back, the output in `dst`. On an error the buffers come back with it.
    pub fn start_cipher_owned(
        &self,
        queue: &CryptoQueue<H>,
        session: &CipherSession,
        iv: &[u8],
        buffers: OwnedBuffers,
    ) -> Result<OwnedCipherRequest<H>, OwnedFailure> {
        let builder = self.build_cipher_owned(queue, session, iv, buffers)?;
        let (request, failure) = builder.submit_keeping();
        match failure {
            None => Ok(self.owned_request(request)),
            Some(error) => Err(OwnedFailure::of(error, request)),
        }
    }

    /// Validates and builds (does not post) a zero-copy request of `session`: submit it alone
    /// or in a [`RequestBatch`](super::request::RequestBatch), then collect it through
    /// [`owned_request`](Self::owned_request).
    pub fn build_cipher_owned<'q>(
        &self,
        slots: impl Into<SlotSource<'q, H>>,
        session: &CipherSession,
        iv: &[u8],
        buffers: OwnedBuffers,
    ) -> Result<RequestBuilder<H>, OwnedFailure>
    where
        H: 'q,
    {
        let lengths = (buffers.src.len(), buffers.dst.len());
        match self.begin_cipher_request(slots.into(), session, iv, lengths, false) {
            Ok(mut builder) => {
                builder.hand_over(buffers);
                Ok(builder)
            }
            Err(error) => Err(OwnedFailure {
                error,
                buffers: Some(buffers),
            }),
        }
    }

    /// A posted zero-copy request (built by [`build_cipher_owned`](Self::build_cipher_owned)),
    /// to wait for.
    pub fn owned_request(&self, request: Request<H>) -> OwnedCipherRequest<H> {
        OwnedCipherRequest {
            request,
            health: self.health().clone(),
        }
    }

    /// Runs one request of `session` and returns the output in a new vector.
    pub fn cipher_request(
        &self,
        queue: &CryptoQueue<H>,
        session: &CipherSession,
        iv: &[u8],
        src: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let out = self.start_cipher_request(queue, session, iv, src)?.wait()?;
        Ok(out.to_vec())
    }
}

/// A cipher request in flight, owned (no borrow of the device or the queue).
pub struct CipherRequest<H: Hal> {
    request: Request<H>,
    health: Arc<DeviceHealth<H>>,
}

impl<H: Hal> CipherRequest<H> {
    pub fn from_request(request: Request<H>, health: Arc<DeviceHealth<H>>) -> Self {
        CipherRequest { request, health }
    }

    /// Whether the device answered (or the request failed): `wait` will not sleep.
    pub fn is_done(&self) -> bool {
        self.request.is_done()
    }

    /// Sleeps until the device answers (at most the device's timeout); returns the output.
    pub fn wait(self) -> Result<CipherOutput<H>, Error> {
        self.health
            .wait_until(&self.request, self.health.deadline())?;
        CipherOutput::new(self.request)
    }
}

/// A zero-copy cipher request in flight ([`CryptoDevice::start_cipher_owned`]).
pub struct OwnedCipherRequest<H: Hal> {
    request: Request<H>,
    health: Arc<DeviceHealth<H>>,
}

/// Why a zero-copy request failed, with the caller's buffers when the device no longer has
/// them (`None` only after a failure that left them with the device: they are freed after its
/// reset).
#[derive(Debug)]
pub struct OwnedFailure {
    pub error: Error,
    pub buffers: Option<OwnedBuffers>,
}

impl OwnedFailure {
    fn of<H: Hal>(error: Error, mut request: Request<H>) -> Self {
        OwnedFailure {
            error,
            buffers: request.take_buffers(),
        }
    }
}

impl<H: Hal> OwnedCipherRequest<H> {
    pub fn is_done(&self) -> bool {
        self.request.is_done()
    }

    /// Sleeps until the device answers (at most the device's timeout); returns the buffers,
    /// the output in `dst`.
    pub fn wait(mut self) -> Result<OwnedBuffers, OwnedFailure> {
        let waited = self
            .health
            .wait_until(&self.request, self.health.deadline());
        let buffers = self.request.take_buffers();
        match (waited, buffers) {
            (Ok(used), Some(buffers)) => {
                let expected = buffers.dst.len() + wire::INHDR_LEN;
                match check_cipher_reply(&self.request, used as usize, expected) {
                    Ok(()) => Ok(buffers),
                    Err(error) => Err(OwnedFailure {
                        error,
                        buffers: Some(buffers),
                    }),
                }
            }
            (Ok(_), None) => Err(OwnedFailure {
                error: Error::MalformedCompletion {
                    what: "the device wrote less than the output and status",
                },
                buffers: None,
            }),
            (Err(error), buffers) => Err(OwnedFailure { error, buffers }),
        }
    }
}

/// Checks a finished cipher request's answer: the status byte (the last writable byte of the
/// slot) says OK, and the device wrote at least `expected` bytes (the output and the status).
fn check_cipher_reply<H: Hal>(
    request: &Request<H>,
    used: usize,
    expected: usize,
) -> Result<(), Error> {
    let Some(&status) = request.writable().last() else {
        return Err(Error::MalformedCompletion {
            what: "a cipher request without a status byte",
        });
    };
    status_to_result(status, RequestKind::Data)?;
    if used < expected {
        return Err(Error::MalformedCompletion {
            what: "the device wrote less than the output and status",
        });
    }
    Ok(())
}

/// The output of a finished cipher request, read in place from the request's memory (which is
/// released when this is dropped).
pub struct CipherOutput<H: Hal> {
    request: Request<H>,
    len: usize,
}

impl<H: Hal> CipherOutput<H> {
    /// Checks a finished request's status byte and used length.
    pub fn new(request: Request<H>) -> Result<Self, Error> {
        let used = request.outcome().unwrap_or(Err(Error::Timeout))? as usize;
        let writable = request.writable().len();
        check_cipher_reply(&request, used, writable)?;
        Ok(CipherOutput {
            request,
            len: writable - 1,
        })
    }

    /// The first `len` bytes of the output only (a request padded to whole blocks).
    pub fn cut(mut self, len: usize) -> Self {
        self.len = self.len.min(len);
        self
    }
}

impl<H: Hal> core::ops::Deref for CipherOutput<H> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.request.writable()[..self.len]
    }
}
