//! What a finished akcipher request may return: the checks on every answer of the untrusted
//! device (see the module documentation of `akcipher`), and their counters. Pure functions of
//! the request's bytes and the session's key.

use core::sync::atomic::{AtomicU64, Ordering};

use alloc::vec;
use alloc::vec::Vec;

use super::keys::{PKCS1_OVERHEAD, RsaHash, RsaKeyInfo};
use super::{RsaOp, RsaParams};
use crate::error::Error;
use crate::virtio_crypto::status::{DeviceStatus, RequestKind, status_to_result};
use crate::virtio_crypto::wire;

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

    pub(super) fn bump(counter: &AtomicU64) {
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
/// `writable` its writable bytes (output, then the status in the last byte). Pure but for the
/// session's counters (`params.counters`), which are only bumped.
pub fn check_answer(
    params: &RsaParams,
    op: RsaOp,
    outcome: Result<u32, Error>,
    readable: &[u8],
    writable: &[u8],
) -> Verdict {
    let counters = &*params.counters;
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
pub(super) fn repair_signature(
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
