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

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use rsa::pkcs1::der::Decode;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use virtio_drivers::Hal;

use super::device::{CryptoDevice, DeviceHealth};
use super::queue::{CryptoQueue, QueueCore};
use super::request::Request;
use super::session::SessionKind;
use super::status::{DeviceStatus, RequestKind, status_to_result};
use super::wire;
use crate::error::Error;

/// Smallest and largest modulus the driver takes, in bits.
pub const RSA_MIN_BITS: usize = 1024;
pub const RSA_MAX_BITS: usize = 4096;
/// How often a request is sent before a wrong answer becomes an error. QEMU 7.2 cuts about one
/// ciphertext in 128..256 (see `repair_signature`); encryption is randomized, so a retry
/// usually gets a whole one: four attempts make a failure about one in 10^8 or rarer.
pub const MAX_ATTEMPTS: usize = 4;
/// PKCS#1 v1.5 encryption padding: at least 11 bytes of the modulus length.
pub const PKCS1_OVERHEAD: usize = 11;

/// The hash a PKCS#1 v1.5 signature names (its DigestInfo).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaHash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl RsaHash {
    pub const ALL: [RsaHash; 5] = [
        RsaHash::Sha1,
        RsaHash::Sha224,
        RsaHash::Sha256,
        RsaHash::Sha384,
        RsaHash::Sha512,
    ];

    pub fn digest_len(self) -> usize {
        match self {
            RsaHash::Sha1 => 20,
            RsaHash::Sha224 => 28,
            RsaHash::Sha256 => 32,
            RsaHash::Sha384 => 48,
            RsaHash::Sha512 => 64,
        }
    }

    /// The id in `virtio_crypto_rsa_session_para.hash_algo`.
    pub fn wire(self) -> u32 {
        match self {
            RsaHash::Sha1 => wire::RSA_SHA1,
            RsaHash::Sha224 => wire::RSA_SHA224,
            RsaHash::Sha256 => wire::RSA_SHA256,
            RsaHash::Sha384 => wire::RSA_SHA384,
            RsaHash::Sha512 => wire::RSA_SHA512,
        }
    }

    /// The kernel crypto API name of RSA with this hash (`pkcs1pad(rsa,sha256)`).
    pub fn kcapi_name(self) -> &'static str {
        match self {
            RsaHash::Sha1 => "pkcs1pad(rsa,sha1)",
            RsaHash::Sha224 => "pkcs1pad(rsa,sha224)",
            RsaHash::Sha256 => "pkcs1pad(rsa,sha256)",
            RsaHash::Sha384 => "pkcs1pad(rsa,sha384)",
            RsaHash::Sha512 => "pkcs1pad(rsa,sha512)",
        }
    }

    pub fn from_kcapi_name(name: &str) -> Option<RsaHash> {
        RsaHash::ALL.into_iter().find(|h| h.kcapi_name() == name)
    }

    /// QEMU 7.2's builtin backend maps only MD5, SHA-1, SHA-256 and SHA-512 to its RSA
    /// implementation (`cryptodev_builtin_get_rsa_hash_algo`); a session with SHA-224 or SHA-384
    /// fails with ERR ("Unsupported rsa hash algo").
    pub fn device_implements(self) -> bool {
        !matches!(self, RsaHash::Sha224 | RsaHash::Sha384)
    }

    /// The digest of `message` (for callers that have the message rather than its digest).
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            RsaHash::Sha1 => sha1::Sha1::digest(message).to_vec(),
            RsaHash::Sha224 => sha2::Sha224::digest(message).to_vec(),
            RsaHash::Sha256 => sha2::Sha256::digest(message).to_vec(),
            RsaHash::Sha384 => sha2::Sha384::digest(message).to_vec(),
            RsaHash::Sha512 => sha2::Sha512::digest(message).to_vec(),
        }
    }

    fn scheme(self) -> Pkcs1v15Sign {
        match self {
            RsaHash::Sha1 => Pkcs1v15Sign::new::<sha1::Sha1>(),
            RsaHash::Sha224 => Pkcs1v15Sign::new::<sha2::Sha224>(),
            RsaHash::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
            RsaHash::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
            RsaHash::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
        }
    }
}

/// Which half of the key pair a session holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsaKeyKind {
    Public,
    Private,
}

impl RsaKeyKind {
    fn wire(self) -> u32 {
        match self {
            RsaKeyKind::Public => wire::AKCIPHER_KEY_TYPE_PUBLIC,
            RsaKeyKind::Private => wire::AKCIPHER_KEY_TYPE_PRIVATE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RsaKeyKind::Public => "public",
            RsaKeyKind::Private => "private",
        }
    }
}

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

/// What the driver keeps of a session's key: its kind and public part (for the checks).
#[derive(Clone, Debug)]
pub struct RsaKeyInfo {
    kind: RsaKeyKind,
    public: RsaPublicKey,
    bits: usize,
}

impl RsaKeyInfo {
    /// Parses a PKCS#1 DER key of `kind` and checks it is an RSA key the driver takes. A private
    /// key is checked for consistency (n = pq, e and d inverse), then only its public part kept.
    pub fn parse(kind: RsaKeyKind, der: &[u8]) -> Result<RsaKeyInfo, Error> {
        if der.is_empty() {
            return Err(Error::InvalidKey { what: "empty DER" });
        }
        let public = match kind {
            RsaKeyKind::Public => parse_public(der)?,
            RsaKeyKind::Private => parse_private(der)?,
        };
        let bits = public.n().bits();
        Ok(RsaKeyInfo { kind, public, bits })
    }

    pub fn kind(&self) -> RsaKeyKind {
        self.kind
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The modulus length in bytes (the length of every signature and ciphertext).
    pub fn modulus_len(&self) -> usize {
        self.public.size()
    }

    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public
    }

    /// Whether `value` (big-endian) is below the modulus.
    pub fn below_modulus(&self, value: &[u8]) -> bool {
        BigUint::from_bytes_be(value) < *self.public.n()
    }

    /// Software PKCS#1 v1.5 verification of `signature` over `digest`.
    pub fn verifies(&self, hash: RsaHash, digest: &[u8], signature: &[u8]) -> bool {
        self.public.verify(hash.scheme(), digest, signature).is_ok()
    }
}

fn check_bits(bits: usize) -> Result<(), Error> {
    if (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(Error::InvalidModulusSize { bits })
    }
}

fn uint(value: rsa::pkcs1::UintRef<'_>) -> BigUint {
    BigUint::from_bytes_be(value.as_bytes())
}

fn parse_public(der: &[u8]) -> Result<RsaPublicKey, Error> {
    let key = match rsa::pkcs1::RsaPublicKey::from_der(der) {
        Ok(key) => key,
        Err(_) if rsa::pkcs1::RsaPrivateKey::from_der(der).is_ok() => {
            return Err(Error::InvalidKey {
                what: "a PKCS#1 RSAPrivateKey where an RSAPublicKey was expected",
            });
        }
        Err(_) => {
            return Err(Error::InvalidKey {
                what: "not a DER PKCS#1 RSAPublicKey",
            });
        }
    };
    let n = uint(key.modulus);
    check_bits(n.bits())?;
    RsaPublicKey::new(n, uint(key.public_exponent)).map_err(|_| Error::InvalidKey {
        what: "public exponent out of range",
    })
}

fn parse_private(der: &[u8]) -> Result<RsaPublicKey, Error> {
    let key = match rsa::pkcs1::RsaPrivateKey::from_der(der) {
        Ok(key) => key,
        Err(_) if rsa::pkcs1::RsaPublicKey::from_der(der).is_ok() => {
            return Err(Error::InvalidKey {
                what: "a PKCS#1 RSAPublicKey where an RSAPrivateKey was expected",
            });
        }
        Err(_) => {
            return Err(Error::InvalidKey {
                what: "not a DER PKCS#1 RSAPrivateKey",
            });
        }
    };
    if key.other_prime_infos.is_some() {
        return Err(Error::InvalidKey {
            what: "multi-prime RSA keys are not supported",
        });
    }
    let n = uint(key.modulus);
    check_bits(n.bits())?;
    let e = uint(key.public_exponent);
    // Zeroized when dropped (`RsaPrivateKey: ZeroizeOnDrop`).
    let private = rsa::RsaPrivateKey::from_components(
        n,
        e,
        uint(key.private_exponent),
        vec![uint(key.prime1), uint(key.prime2)],
    )
    .map_err(|_| Error::InvalidKey {
        what: "the private key's numbers do not make an RSA key",
    })?;
    private.validate().map_err(|_| Error::InvalidKey {
        what: "the private key's numbers do not make an RSA key",
    })?;
    Ok(private.to_public_key())
}

/// Counts of what the driver did with the device's akcipher answers (per session, monotonic).
#[derive(Debug, Default)]
pub struct AkcipherCounters {
    /// Answers checked (one per device answer, retries included).
    pub answers: AtomicU64,
    /// Signatures from the device verified in software before being returned.
    pub signatures_verified: AtomicU64,
    /// Answers repaired: a signature short by leading zeros that verified once padded.
    pub repaired: AtomicU64,
    /// Verify verdicts of the device that software verification overruled.
    pub overruled: AtomicU64,
    /// Answers proven wrong (length, value, signature, status).
    pub wrong: AtomicU64,
    /// Requests sent again after a wrong answer.
    pub retried: AtomicU64,
    /// Wrong answers that became an error after the retry.
    pub failed: AtomicU64,
}

/// A snapshot of [`AkcipherCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AkcipherStats {
    pub answers: u64,
    pub signatures_verified: u64,
    pub repaired: u64,
    pub overruled: u64,
    pub wrong: u64,
    pub retried: u64,
    pub failed: u64,
}

impl AkcipherCounters {
    pub fn snapshot(&self) -> AkcipherStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AkcipherStats {
            answers: get(&self.answers),
            signatures_verified: get(&self.signatures_verified),
            repaired: get(&self.repaired),
            overruled: get(&self.overruled),
            wrong: get(&self.wrong),
            retried: get(&self.retried),
            failed: get(&self.failed),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl AkcipherStats {
    /// The sum over several queues.
    pub fn plus(self, o: AkcipherStats) -> AkcipherStats {
        AkcipherStats {
            answers: self.answers + o.answers,
            signatures_verified: self.signatures_verified + o.signatures_verified,
            repaired: self.repaired + o.repaired,
            overruled: self.overruled + o.overruled,
            wrong: self.wrong + o.wrong,
            retried: self.retried + o.retried,
            failed: self.failed + o.failed,
        }
    }

    /// What changed since `before`.
    pub fn since(self, before: AkcipherStats) -> AkcipherStats {
        AkcipherStats {
            answers: self.answers - before.answers,
            signatures_verified: self.signatures_verified - before.signatures_verified,
            repaired: self.repaired - before.repaired,
            overruled: self.overruled - before.overruled,
            wrong: self.wrong - before.wrong,
            retried: self.retried - before.retried,
            failed: self.failed - before.failed,
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

/// What a finished request may give its caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The output (empty for verify), checked.
    Accept(Vec<u8>),
    /// A final error (not worth a retry).
    Reject(Error),
    /// A wrong answer: send the request again; the error stands if that fails too.
    Retry(Error),
}

/// Decides what a finished akcipher request may return. `outcome` is the queue's (used length
/// or transport error), `readable` the request's readable bytes (header, source, verify digest),
/// `writable` its writable bytes (output, then the status in the last byte). Pure: the
/// counters are only bumped.
pub fn check_answer(
    params: &RsaParams,
    op: RsaOp,
    outcome: Result<u32, Error>,
    readable: &[u8],
    writable: &[u8],
    counters: &AkcipherCounters,
) -> Verdict {
    AkcipherCounters::bump(&counters.answers);
    let verdict = judge(params, op, outcome, readable, writable, counters);
    if matches!(verdict, Verdict::Retry(_)) {
        AkcipherCounters::bump(&counters.wrong);
    }
    verdict
}

fn judge(
    params: &RsaParams,
    op: RsaOp,
    outcome: Result<u32, Error>,
    readable: &[u8],
    writable: &[u8],
    counters: &AkcipherCounters,
) -> Verdict {
    let key = &params.key;
    let k = key.modulus_len();
    let used = match outcome {
        Ok(used) => used as usize,
        Err(e @ Error::MalformedCompletion { .. }) => return Verdict::Retry(e),
        Err(e) => return Verdict::Reject(e),
    };
    let src = readable.get(wire::DATA_HDR_LEN..).unwrap_or(&[]);
    if op == RsaOp::Verify {
        // The verdict is software's; the device's is compared and counted.
        let (signature, digest) = src.split_at(k.min(src.len()));
        let valid = key.verifies(params.hash, digest, signature);
        let device = writable.last().map(|&s| DeviceStatus::from(s));
        match device {
            Some(DeviceStatus::Ok) if valid => {}
            Some(DeviceStatus::KeyRejected) if !valid => {}
            Some(DeviceStatus::InvSess) => return Verdict::Reject(Error::UnknownSession),
            _ => AkcipherCounters::bump(&counters.overruled),
        }
        return if valid {
            Verdict::Accept(Vec::new())
        } else {
            Verdict::Reject(Error::BadSignature)
        };
    }
    let Some((&status, out_area)) = writable.split_last() else {
        return Verdict::Retry(Error::MalformedCompletion {
            what: "an akcipher request without a status byte",
        });
    };
    match DeviceStatus::from(status) {
        DeviceStatus::Ok => {}
        // A ciphertext that does not decrypt is an answer the driver cannot tell from a device
        // fault (it has no private key): a clear error, not retried.
        DeviceStatus::Err if op == RsaOp::Decrypt => {
            return Verdict::Reject(Error::DecryptionFailed);
        }
        DeviceStatus::Err | DeviceStatus::Unknown(_) | DeviceStatus::BadMsg => {
            let error = status_to_result(status, RequestKind::Data)
                .err()
                .unwrap_or(Error::DeviceError);
            return Verdict::Retry(error);
        }
        _ => {
            return Verdict::Reject(
                status_to_result(status, RequestKind::Data)
                    .err()
                    .unwrap_or(Error::DeviceError),
            );
        }
    }
    // OK: the used length covers the output and the status byte.
    if used == 0 || used - 1 > out_area.len() {
        return Verdict::Retry(Error::WrongAnswer {
            what: "a used length that does not fit the output and status",
        });
    }
    let out = &out_area[..used - 1];
    match op {
        RsaOp::Encrypt => {
            if out.len() != k {
                Verdict::Retry(Error::WrongAnswer {
                    what: "a ciphertext that is not the modulus length",
                })
            } else if !key.below_modulus(out) {
                Verdict::Retry(Error::WrongAnswer {
                    what: "a ciphertext not below the modulus",
                })
            } else {
                Verdict::Accept(out.to_vec())
            }
        }
        RsaOp::Decrypt => {
            if out.len() > k - PKCS1_OVERHEAD {
                Verdict::Retry(Error::WrongAnswer {
                    what: "a message longer than the modulus allows",
                })
            } else {
                Verdict::Accept(out.to_vec())
            }
        }
        RsaOp::Sign => {
            if out.len() > k || out.is_empty() {
                return Verdict::Retry(Error::WrongAnswer {
                    what: "a signature that is not the modulus length",
                });
            }
            AkcipherCounters::bump(&counters.signatures_verified);
            match repair_signature(key, params.hash, src, out) {
                Some((signature, repaired)) => {
                    if repaired {
                        AkcipherCounters::bump(&counters.repaired);
                    }
                    Verdict::Accept(signature)
                }
                None => Verdict::Retry(Error::WrongAnswer {
                    what: "a signature that does not verify",
                }),
            }
        }
        RsaOp::Verify => Verdict::Reject(Error::DeviceError), // handled above
    }
}

/// The signature in `out` if it verifies over `digest`, or the one it can be proven to stand
/// for (`true`: repaired), or `None`.
///
/// QEMU 7.2 with nettle writes the k-byte signature (leading zeros included) into its buffer but
/// reports its length without the leading zeros, and copies only that many bytes: when a
/// signature's first byte is zero (one in 256), the guest gets `00 s1 .. s(k-2)` and loses the
/// last byte. Of the 256 candidates for it exactly one can verify (PKCS#1 v1.5 signatures are
/// unique), so trying them proves the repair. A device that leaves out the leading zeros instead
/// is repaired by padding. Anything else is not repaired.
fn repair_signature(
    key: &RsaKeyInfo,
    hash: RsaHash,
    digest: &[u8],
    out: &[u8],
) -> Option<(Vec<u8>, bool)> {
    let k = key.modulus_len();
    if out.len() == k {
        return key
            .verifies(hash, digest, out)
            .then(|| (out.to_vec(), false));
    }
    let missing = k - out.len();
    let mut candidate = vec![0u8; k];
    candidate[missing..].copy_from_slice(out);
    if key.verifies(hash, digest, &candidate) {
        return Some((candidate, true));
    }
    if missing == 1 && out[0] == 0 {
        candidate[..k - 1].copy_from_slice(out);
        for last in 0..=u8::MAX {
            candidate[k - 1] = last;
            if key.verifies(hash, digest, &candidate) {
                return Some((candidate, true));
            }
        }
    }
    None
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
                if input.len() != k {
                    return Err(Error::InvalidInputLength {
                        what: "ciphertext",
                        got: input.len(),
                        expected: k,
                    });
                }
                if !key.below_modulus(input) {
                    return Err(Error::InputOutOfRange { what: "ciphertext" });
                }
                Ok((k, k))
            }
            RsaOp::Sign => {
                if input.len() != digest_len {
                    return Err(Error::InvalidDigestLength {
                        got: input.len(),
                        expected: digest_len,
                    });
                }
                Ok((digest_len, k))
            }
            RsaOp::Verify => {
                if input.len() != digest_len {
                    return Err(Error::InvalidDigestLength {
                        got: input.len(),
                        expected: digest_len,
                    });
                }
                if signature.len() != k {
                    return Err(Error::InvalidInputLength {
                        what: "signature",
                        got: signature.len(),
                        expected: k,
                    });
                }
                if !key.below_modulus(signature) {
                    return Err(Error::InputOutOfRange { what: "signature" });
                }
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
                counters,
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

#[cfg(test)]
mod tests {
    use super::*;

    // pkcs1v15sign-vectors.txt (RSA Laboratories), example 1: 1024-bit key, SHA-1.
    const EX1_DER: &str = include_str!("testdata/ex1_1024.der.hex");
    const EX1_PUB: &str = include_str!("testdata/ex1_1024_pub.der.hex");
    const EX1_MSG: &str = "cdc87da223d786df3b45e0bbbc721326d1ee2af806cc315475cc6f0d9c66e1b62371d45ce2392e1ac92844c310102f156a0d8d52c1f4c40ba3aa65095786cb769757a6563ba958fed0bcc984e8b517a3d5f515b23b8a41e74aa867693f90dfb061a6e86dfaaee64472c00e5f20945729cbebe77f06ce78e08f4098fba41f9d6193c0317e8b60d4b6084acb42d29e3808a3bc372d85e331170fcbf7cc72d0b71c296648b3a4d10f416295d0807aa625cab2744fd9ea8fd223c42537029828bd16be02546f130fd2e33b936d2676e08aed1b73318b750a0167d0";
    const EX1_SIG: &str = "6bc3a06656842930a247e30d5864b4d819236ba7c68965862ad7dbc4e24af28e86bb531f03358be5fb74777c6086f850caef893f0d6fcc2d0c91ec013693b4ea00b80cd49aac4ecb5f8911afe539ada4a8f3823d1d13e472d1490547c659c7617f3d24087ddb6f2b72096167fc097cab18e9a458fcb634cdce8ee35894c484d7";

    fn unhex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|c| u8::from_str_radix(core::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect()
    }

    fn params(kind: RsaKeyKind) -> RsaParams {
        let der = unhex(if kind == RsaKeyKind::Private {
            EX1_DER
        } else {
            EX1_PUB
        });
        RsaParams {
            key: Arc::new(RsaKeyInfo::parse(kind, &der).unwrap()),
            hash: RsaHash::Sha1,
            generation: 0,
            counters: Arc::default(),
        }
    }

    fn readable(op: RsaOp, src: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; wire::DATA_HDR_LEN];
        r[0..4].copy_from_slice(&op.opcode().to_le_bytes());
        r.extend_from_slice(src);
        r
    }

    fn writable(out: &[u8], room: usize, status: u8) -> Vec<u8> {
        let mut w = vec![0u8; room + 1];
        w[..out.len()].copy_from_slice(out);
        w[room] = status;
        w
    }

    #[test]
    fn parses_keys_and_refuses_bad_ones() {
        let private = unhex(EX1_DER);
        let public = unhex(EX1_PUB);
        let key = RsaKeyInfo::parse(RsaKeyKind::Private, &private).unwrap();
        assert_eq!((key.bits(), key.modulus_len()), (1024, 128));
        let pkey = RsaKeyInfo::parse(RsaKeyKind::Public, &public).unwrap();
        assert_eq!(pkey.public_key(), key.public_key());
        assert!(matches!(
            RsaKeyInfo::parse(RsaKeyKind::Public, &private),
            Err(Error::InvalidKey { what }) if what.contains("RSAPrivateKey where")
        ));
        assert!(matches!(
            RsaKeyInfo::parse(RsaKeyKind::Private, &public),
            Err(Error::InvalidKey { what }) if what.contains("RSAPublicKey where")
        ));
        assert_eq!(
            RsaKeyInfo::parse(RsaKeyKind::Private, &[]).unwrap_err(),
            Error::InvalidKey { what: "empty DER" }
        );
        // Every truncation and every single-byte corruption: an error or a key, never a panic.
        for cut in 0..private.len() {
            assert!(RsaKeyInfo::parse(RsaKeyKind::Private, &private[..cut]).is_err());
        }
        for i in 0..private.len() {
            let mut bad = private.clone();
            bad[i] ^= 0x41;
            let _ = RsaKeyInfo::parse(RsaKeyKind::Private, &bad);
        }
        // A corrupted prime makes the numbers inconsistent.
        let mut bad = private.clone();
        let last = bad.len() - 200;
        bad[last] ^= 1;
        assert!(RsaKeyInfo::parse(RsaKeyKind::Private, &bad).is_err());
    }

    #[test]
    fn sign_answers_are_verified_repaired_or_retried() {
        let p = params(RsaKeyKind::Private);
        let c = AkcipherCounters::default();
        let digest = RsaHash::Sha1.digest(&unhex(EX1_MSG));
        let sig = unhex(EX1_SIG);
        let r = readable(RsaOp::Sign, &digest);
        let good = writable(&sig, 128, 0);
        assert_eq!(
            check_answer(&p, RsaOp::Sign, Ok(129), &r, &good, &c),
            Verdict::Accept(sig.clone())
        );
        // One flipped bit: retried.
        let mut bad = good.clone();
        bad[5] ^= 1;
        assert!(matches!(
            check_answer(&p, RsaOp::Sign, Ok(129), &r, &bad, &c),
            Verdict::Retry(Error::WrongAnswer { .. })
        ));
        // Status ERR, unknown status, short used length, malformed completion: retried.
        for (w, used) in [
            (writable(&sig, 128, 1), 129),
            (writable(&sig, 128, 9), 129),
            (good.clone(), 0),
        ] {
            assert!(matches!(
                check_answer(&p, RsaOp::Sign, Ok(used), &r, &w, &c),
                Verdict::Retry(_)
            ));
        }
        // A used length that cuts the signature: the remainder does not verify.
        assert!(matches!(
            check_answer(&p, RsaOp::Sign, Ok(100), &r, &good, &c),
            Verdict::Retry(_)
        ));
        assert_eq!(
            check_answer(&p, RsaOp::Sign, Ok(129), &r, &writable(&sig, 128, 4), &c),
            Verdict::Reject(Error::UnknownSession)
        );
        let s = c.snapshot();
        assert_eq!((s.answers, s.wrong, s.repaired), (7, 5, 0));
        assert_eq!(s.signatures_verified, 3);
    }

    #[test]
    fn truncated_signature_is_repaired_when_provable() {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let p = params(RsaKeyKind::Private);
        let c = AkcipherCounters::default();
        let private = rsa::RsaPrivateKey::from_pkcs1_der(&unhex(EX1_DER)).unwrap();
        // A digest whose signature starts with a zero byte (about one in 256).
        let (digest, sig) = (0u32..)
            .map(|i| {
                let digest = RsaHash::Sha1.digest(&i.to_le_bytes());
                let sig = private.sign(RsaHash::Sha1.scheme(), &digest).unwrap();
                (digest, sig)
            })
            .find(|(_, sig)| sig[0] == 0)
            .unwrap();
        let r = readable(RsaOp::Sign, &digest);
        // QEMU 7.2's answer: the first 127 bytes (leading zero kept, last byte lost).
        let w = writable(&sig[..127], 128, 0);
        assert_eq!(
            check_answer(&p, RsaOp::Sign, Ok(128), &r, &w, &c),
            Verdict::Accept(sig.clone())
        );
        // A device that leaves out the leading zero.
        let w = writable(&sig[1..], 128, 0);
        assert_eq!(
            check_answer(&p, RsaOp::Sign, Ok(128), &r, &w, &c),
            Verdict::Accept(sig.clone())
        );
        assert_eq!(c.snapshot().repaired, 2);
        // A signature without a leading zero cut the same way: not provable, retried.
        let digest = RsaHash::Sha1.digest(&unhex(EX1_MSG));
        let sig = unhex(EX1_SIG);
        assert_ne!(sig[0], 0);
        let r = readable(RsaOp::Sign, &digest);
        let w = writable(&sig[..127], 128, 0);
        assert!(matches!(
            check_answer(&p, RsaOp::Sign, Ok(128), &r, &w, &c),
            Verdict::Retry(_)
        ));
        assert_eq!(c.snapshot().repaired, 2);
    }

    #[test]
    fn verify_verdicts_come_from_software() {
        let p = params(RsaKeyKind::Public);
        let c = AkcipherCounters::default();
        let digest = RsaHash::Sha1.digest(&unhex(EX1_MSG));
        let sig = unhex(EX1_SIG);
        let mut src = sig.clone();
        src.extend_from_slice(&digest);
        let r = readable(RsaOp::Verify, &src);
        let mut bad_src = sig.clone();
        bad_src[7] ^= 0x80;
        bad_src.extend_from_slice(&digest);
        let rb = readable(RsaOp::Verify, &bad_src);
        assert_eq!(
            check_answer(&p, RsaOp::Verify, Ok(1), &r, &[0], &c),
            Verdict::Accept(Vec::new())
        );
        assert_eq!(
            check_answer(&p, RsaOp::Verify, Ok(1), &rb, &[6], &c),
            Verdict::Reject(Error::BadSignature)
        );
        assert_eq!(c.snapshot().overruled, 0);
        // The device says OK to a bad signature, KEY_REJECTED to a good one, ERR: overruled.
        assert_eq!(
            check_answer(&p, RsaOp::Verify, Ok(1), &rb, &[0], &c),
            Verdict::Reject(Error::BadSignature)
        );
        assert_eq!(
            check_answer(&p, RsaOp::Verify, Ok(1), &r, &[6], &c),
            Verdict::Accept(Vec::new())
        );
        assert_eq!(
            check_answer(&p, RsaOp::Verify, Ok(1), &r, &[1], &c),
            Verdict::Accept(Vec::new())
        );
        assert_eq!(c.snapshot().overruled, 3);
    }

    #[test]
    fn encrypt_and_decrypt_lengths_and_range() {
        let p = params(RsaKeyKind::Public);
        let c = AkcipherCounters::default();
        let r = readable(RsaOp::Encrypt, b"hello");
        let n = p.key.public_key().n().to_bytes_be();
        let mut ok = n.clone();
        ok[127] -= 1; // n - 1: the largest valid value
        assert_eq!(
            check_answer(&p, RsaOp::Encrypt, Ok(129), &r, &writable(&ok, 128, 0), &c),
            Verdict::Accept(ok.clone())
        );
        for (out, used) in [(n.clone(), 129), (ok.clone(), 128), (ok.clone(), 130)] {
            assert!(matches!(
                check_answer(
                    &p,
                    RsaOp::Encrypt,
                    Ok(used),
                    &r,
                    &writable(&out, 128, 0),
                    &c
                ),
                Verdict::Retry(_)
            ));
        }
        let pd = params(RsaKeyKind::Private);
        let r = readable(RsaOp::Decrypt, &ok);
        let w = writable(&[7u8; 117], 128, 0);
        assert_eq!(
            check_answer(&pd, RsaOp::Decrypt, Ok(118), &r, &w, &c),
            Verdict::Accept(vec![7u8; 117])
        );
        assert!(matches!(
            check_answer(&pd, RsaOp::Decrypt, Ok(119), &r, &w, &c),
            Verdict::Retry(Error::WrongAnswer { .. })
        ));
        assert_eq!(
            check_answer(&pd, RsaOp::Decrypt, Ok(129), &r, &writable(&[], 128, 1), &c),
            Verdict::Reject(Error::DecryptionFailed)
        );
    }

    #[test]
    fn requests_are_checked_before_sending() {
        type D = CryptoDevice<crate::virtio_crypto::fake::FakeHal>;
        let public = params(RsaKeyKind::Public);
        let private = params(RsaKeyKind::Private);
        let digest = [0u8; 20];
        let sig = unhex(EX1_SIG);
        assert_eq!(
            D::check_rsa_request(&public, RsaOp::Sign, &digest, &[]),
            Err(Error::WrongKeyKind {
                op: "sign",
                needs: "private"
            })
        );
        assert_eq!(
            D::check_rsa_request(&private, RsaOp::Sign, &[0u8; 32], &[]),
            Err(Error::InvalidDigestLength {
                got: 32,
                expected: 20
            })
        );
        assert_eq!(
            D::check_rsa_request(&public, RsaOp::Encrypt, &[1u8; 118], &[]),
            Err(Error::MessageTooLong { got: 118, max: 117 })
        );
        assert_eq!(
            D::check_rsa_request(&public, RsaOp::Encrypt, &[1u8; 117], &[]),
            Ok((117, 128))
        );
        assert_eq!(
            D::check_rsa_request(&public, RsaOp::Verify, &digest, &sig[1..]),
            Err(Error::InvalidInputLength {
                what: "signature",
                got: 127,
                expected: 128
            })
        );
        assert_eq!(
            D::check_rsa_request(&public, RsaOp::Verify, &digest, &[0xff; 128]),
            Err(Error::InputOutOfRange { what: "signature" })
        );
        assert_eq!(
            D::check_rsa_request(&private, RsaOp::Decrypt, &[0xff; 128], &[]),
            Err(Error::InputOutOfRange { what: "ciphertext" })
        );
        assert_eq!(
            D::check_rsa_request(&public, RsaOp::Verify, &digest, &sig),
            Ok((128, 20))
        );
    }
}
