//! The akcipher service: RSA with PKCS#1 v1.5 padding. Keys are PKCS#1 DER (`RSAPublicKey`,
//! `RSAPrivateKey`), 1024 to 4096 bits; the session fixes the key and the signature's hash.
//!
//! Requests (legacy 72-byte header, [`wire::AkcipherDataHeader`]):
//! - encrypt: `header | message` -> `ciphertext (k) | status`
//! - decrypt: `header | ciphertext (k)` -> `message (<= k - 11) | status`
//! - sign: `header | digest` -> `signature (k) | status`
//! - verify: `header | signature (k) | digest` -> `status` (KEY_REJECTED: does not verify)
//!
//! where k is the modulus length in bytes. The output length is the used length less the status
//! byte.
//!
//! The device is untrusted: [`check_answer`] decides what a finished request may return, in the
//! waiting task (software RSA costs milliseconds under TCG: never in an interrupt handler).
//! - sign: the signature is verified with the public key (derived from the private key when the
//!   session was made); a signature short by leading zero bytes is repaired (left-padded) when
//!   the padded one verifies. PKCS#1 v1.5 signatures are deterministic, so this check is exact.
//! - verify: the verdict is the software verification's; a device verdict that disagrees is
//!   overruled and counted.
//! - encrypt: the ciphertext must be exactly k bytes and below the modulus (its value cannot be
//!   checked without the private key: the padding is random).
//! - decrypt: the message must be at most k - 11 bytes (its value cannot be checked without the
//!   private key).
//! - a wrong length, value or status (ERR, unknown code, malformed completion) is retried with
//!   the same request bytes, up to [`MAX_ATTEMPTS`] sends in all; then it becomes
//!   [`Error::WrongAnswer`] (or the status's error). Every case is counted in [`AkcipherCounters`], kept per session.
//!
//! Invariants: no request QEMU would answer by breaking the device is built (the source and the
//! verify digest are always exactly the lengths in the header; the writable part always ends
//! with the status byte); the key's DER is wiped from the control request's memory when the
//! request is released; the private key parsed in software is zeroized on drop (the `rsa`
//! crate's `ZeroizeOnDrop`) and only its public part is kept.
//!
//! By role: `keys` (DER parsing, hashes), `answers` (the checks and their counters), and here
//! the operations, the device's RSA requests and their retry loop.

mod answers;
mod keys;
#[cfg(test)]
mod tests;

pub use answers::{AkcipherCounters, AkcipherStats, Verdict, check_answer};
pub use keys::{PKCS1_OVERHEAD, RSA_MAX_BITS, RSA_MIN_BITS, RsaHash, RsaKeyInfo, RsaKeyKind};

use alloc::sync::Arc;
use alloc::vec::Vec;

use virtio_drivers::Hal;

use crate::error::Error;
use crate::virtio_crypto::device::{CryptoDevice, DeviceHealth};
use crate::virtio_crypto::queue::{CryptoQueue, QueueCore};
use crate::virtio_crypto::request::Request;
use crate::virtio_crypto::session::SessionKind;
use crate::virtio_crypto::wire;
/// How often a request is sent before a wrong answer becomes an error. QEMU 7.2 cuts about one
/// ciphertext in 128..256 (see `repair_signature`); encryption is randomized, so a retry
/// usually gets a whole one: four attempts make a failure about one in 10^8 or rarer.
pub const MAX_ATTEMPTS: usize = 4;
/// The four operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaOp {
    Encrypt,
    Decrypt,
    Sign,
    Verify,
}

impl RsaOp {
    pub const ALL: [RsaOp; 4] = [RsaOp::Encrypt, RsaOp::Decrypt, RsaOp::Sign, RsaOp::Verify];

    fn opcode(self) -> u32 {
        match self {
            RsaOp::Encrypt => wire::AKCIPHER_ENCRYPT,
            RsaOp::Decrypt => wire::AKCIPHER_DECRYPT,
            RsaOp::Sign => wire::AKCIPHER_SIGN,
            RsaOp::Verify => wire::AKCIPHER_VERIFY,
        }
    }

    /// The key kind the operation needs.
    pub fn needs(self) -> RsaKeyKind {
        match self {
            RsaOp::Encrypt | RsaOp::Verify => RsaKeyKind::Public,
            RsaOp::Decrypt | RsaOp::Sign => RsaKeyKind::Private,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RsaOp::Encrypt => "encrypt",
            RsaOp::Decrypt => "decrypt",
            RsaOp::Sign => "sign",
            RsaOp::Verify => "verify",
        }
    }
}

/// The parameters of an RSA session the checks need.
#[derive(Clone, Debug)]
pub struct RsaParams {
    pub key: Arc<RsaKeyInfo>,
    pub hash: RsaHash,
    /// The device generation the session was made in (its requests are bound to it).
    pub generation: u64,
    /// What the checks did with the device's answers to this session's requests.
    pub counters: Arc<AkcipherCounters>,
}

impl<H: Hal> CryptoDevice<H> {
    /// Whether the device offers RSA.
    pub fn check_rsa(&self) -> Result<(), Error> {
        if !self.config.advertises_service(wire::SERVICE_AKCIPHER) {
            return Err(Error::NotSupported {
                what: "the akcipher service",
            });
        }
        if !self.config.advertises_akcipher(wire::AKCIPHER_RSA) {
            return Err(Error::NotSupported { what: "rsa" });
        }
        Ok(())
    }

    /// Creates an RSA session (PKCS#1 v1.5 padding) from a PKCS#1 DER key; returns the device's
    /// session id and what the driver keeps of the key. The DER is parsed and checked first
    /// (nothing malformed reaches the device), and wiped from the request memory once the
    /// device has it. Counted against the device's session limit like every session.
    pub fn create_rsa_session(
        &self,
        kind: RsaKeyKind,
        hash: RsaHash,
        der: &[u8],
    ) -> Result<(u64, RsaParams), Error> {
        self.ready()?;
        self.check_rsa()?;
        if !hash.device_implements() && !self.allows_unadvertised() {
            return Err(Error::NotSupported {
                what: "this hash with rsa (QEMU's builtin backend takes sha1, sha256, sha512)",
            });
        }
        let key = RsaKeyInfo::parse(kind, der)?;
        let request = wire::AkcipherCreateSession::rsa(
            kind.wire(),
            der.len() as u32,
            wire::RSA_PKCS1_PADDING,
            hash.wire(),
        );
        let (id, generation) = self.create_session(&request, der)?;
        Ok((
            id,
            RsaParams {
                key: Arc::new(key),
                hash,
                generation,
                counters: Arc::default(),
            },
        ))
    }

    /// Destroys an RSA session made in device generation `generation` (`SessionLost` if the
    /// device was reset since: the session is gone already).
    pub fn destroy_rsa_session(&self, session_id: u64, generation: u64) -> Result<(), Error> {
        self.destroy_session_of(SessionKind::Akcipher, session_id, generation)
    }

    /// Checks an operation's input against the session; returns the request's
    /// `(src_len, dst_len)`.
    pub fn check_rsa_request(
        params: &RsaParams,
        op: RsaOp,
        input: &[u8],
        signature: &[u8],
    ) -> Result<(usize, usize), Error> {
        let key = &params.key;
        if key.kind() != op.needs() {
            return Err(Error::WrongKeyKind {
                op: op.name(),
                needs: op.needs().name(),
            });
        }
        let k = key.modulus_len();
        let digest_len = params.hash.digest_len();
        let digest_sized = || {
            if input.len() == digest_len {
                Ok(())
            } else {
                Err(Error::InvalidDigestLength {
                    got: input.len(),
                    expected: digest_len,
                })
            }
        };
        match op {
            RsaOp::Encrypt => {
                if input.is_empty() {
                    return Err(Error::EmptyRequest);
                }
                if input.len() > k - PKCS1_OVERHEAD {
                    return Err(Error::MessageTooLong {
                        got: input.len(),
                        max: k - PKCS1_OVERHEAD,
                    });
                }
                Ok((input.len(), k))
            }
            RsaOp::Decrypt => {
                modulus_sized(key, "ciphertext", input)?;
                Ok((k, k))
            }
            RsaOp::Sign => {
                digest_sized()?;
                Ok((digest_len, k))
            }
            RsaOp::Verify => {
                digest_sized()?;
                modulus_sized(key, "signature", signature)?;
                Ok((k, digest_len))
            }
        }
    }

    /// Validates and posts one RSA operation of session `session_id` on `queue`: `input` is the
    /// message (encrypt), ciphertext (decrypt) or digest (sign, verify); `signature` is used by
    /// verify only. Collect the result with [`RsaRequest::wait`]; many may be in flight.
    pub fn start_rsa_request(
        &self,
        queue: &CryptoQueue<H>,
        session_id: u64,
        params: &RsaParams,
        op: RsaOp,
        input: &[u8],
        signature: &[u8],
    ) -> Result<RsaRequest<H>, Error> {
        if params.generation != self.generation() {
            return Err(Error::SessionLost);
        }
        self.ready()?;
        let (src_len, dst_len) = Self::check_rsa_request(params, op, input, signature)?;
        let header =
            wire::AkcipherDataHeader::new(op.opcode(), session_id, src_len as u32, dst_len as u32);
        let (readable, writable) = if op == RsaOp::Verify {
            (wire::DATA_HDR_LEN + src_len + dst_len, wire::INHDR_LEN)
        } else {
            (wire::DATA_HDR_LEN + src_len, dst_len + wire::INHDR_LEN)
        };
        let mut builder = queue.reserve(readable, writable)?;
        builder.push_struct(&header)?;
        if op == RsaOp::Verify {
            builder.push(signature)?.push(input)?;
        } else {
            builder.push(input)?;
        }
        builder
            .preset_status(0xff) // no status code: the device must overwrite it
            .bind_generation(params.generation)
            .expect_used(wire::INHDR_LEN);
        let request = builder.submit()?;
        Ok(RsaRequest {
            request,
            core: queue.core().clone(),
            health: self.health().clone(),
            params: params.clone(),
            op,
        })
    }

    /// Runs one RSA operation and returns its checked output (empty for verify).
    pub fn rsa_request(
        &self,
        queue: &CryptoQueue<H>,
        session_id: u64,
        params: &RsaParams,
        op: RsaOp,
        input: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, Error> {
        self.start_rsa_request(queue, session_id, params, op, input, signature)?
            .wait()
    }
}

/// A ciphertext or signature (`what`) must be exactly the modulus length and below the modulus.
fn modulus_sized(key: &RsaKeyInfo, what: &'static str, value: &[u8]) -> Result<(), Error> {
    if value.len() != key.modulus_len() {
        return Err(Error::InvalidInputLength {
            what,
            got: value.len(),
            expected: key.modulus_len(),
        });
    }
    if !key.below_modulus(value) {
        return Err(Error::InputOutOfRange { what });
    }
    Ok(())
}

/// An RSA request in flight, owned (no borrow of the device or the queue).
pub struct RsaRequest<H: Hal> {
    request: Request<H>,
    core: Arc<QueueCore<H>>,
    health: Arc<DeviceHealth<H>>,
    params: RsaParams,
    op: RsaOp,
}

impl<H: Hal> RsaRequest<H> {
    pub fn op(&self) -> RsaOp {
        self.op
    }

    fn finish(&self) -> Result<u32, Error> {
        self.health
            .wait_until(&self.request, self.health.deadline())
    }

    /// Sleeps until the device answers, checks the answer (see the module docs), sends the
    /// request again after a wrong one (at most [`MAX_ATTEMPTS`] in all), and returns the checked
    /// output (empty for verify).
    pub fn wait(mut self) -> Result<Vec<u8>, Error> {
        let counters = &*self.params.counters;
        for attempt in 1..=MAX_ATTEMPTS {
            let outcome = self.finish();
            if matches!(
                outcome,
                Err(Error::DeviceNeedsReset
                    | Error::Timeout
                    | Error::UnknownSession
                    | Error::SessionLost
                    | Error::DeviceReset)
            ) {
                return outcome.map(|_| Vec::new());
            }
            // The queue broke (the device returned an id that was not in flight): the request
            // was failed while the device may still own its memory, so there is nothing to send
            // again, and the device's fault is the answer (its reset follows).
            if outcome.is_err() && self.core.is_broken() {
                return outcome.map(|_| Vec::new());
            }
            let verdict = check_answer(
                &self.params,
                self.op,
                outcome,
                self.request.readable(),
                self.request.writable(),
            );
            match verdict {
                Verdict::Accept(out) => return Ok(out),
                Verdict::Reject(e) => return Err(e),
                Verdict::Retry(e) if attempt == MAX_ATTEMPTS => {
                    AkcipherCounters::bump(&counters.failed);
                    return Err(e);
                }
                Verdict::Retry(_) => {
                    AkcipherCounters::bump(&counters.retried);
                    self.request = self.resend()?;
                }
            }
        }
        Err(Error::WrongAnswer {
            what: "no answer after the retry",
        })
    }

    /// Posts the same request bytes again in a new slot.
    fn resend(&self) -> Result<Request<H>, Error> {
        let readable = self.request.readable();
        let writable = self.request.writable().len();
        if readable.is_empty() {
            // Memory the device may still own shows as empty: never resend from it.
            return Err(Error::MalformedCompletion {
                what: "an akcipher request whose memory the device may still own",
            });
        }
        let mut builder =
            CryptoQueue::from_core(self.core.clone()).reserve(readable.len(), writable)?;
        builder.push(readable)?;
        builder
            .preset_status(0xff)
            .bind_generation(self.params.generation)
            .expect_used(wire::INHDR_LEN);
        builder.submit()
    }
}
