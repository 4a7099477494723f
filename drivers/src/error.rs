//! The driver's one error type.
//!
//! Every failure a caller can see is a variant of [`Error`]; it is `Copy` and carries only
//! integers and `&'static str`, so it can be returned from interrupt context and printed without
//! allocation. Variants named after a device status code (`DeviceError`, `BadMessage`,
//! `NoSpace`, `KeyRejected`, `UnknownSession`) come from
//! [`status_to_result`](crate::virtio_crypto::status::status_to_result); the rest are found by
//! the driver itself, mostly before anything reaches the device.

use core::fmt;

/// Everything that can go wrong in the virtio-crypto driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// No virtio-crypto device was found on the bus.
    NoDevice,
    /// The device has not set `VIRTIO_CRYPTO_S_HW_READY`; the spec forbids sending requests.
    DeviceNotReady,
    /// The device or this driver does not offer the named service, algorithm or mode.
    NotSupported { what: &'static str },
    /// The key length is not one the algorithm accepts; `allowed` lists the legal lengths.
    InvalidKeyLength { got: usize, allowed: &'static str },
    /// The IV length differs from the one the algorithm needs.
    InvalidIvLength { got: usize, expected: usize },
    /// The data length is not a multiple of the algorithm's block size.
    InvalidDataLength { got: usize, block: usize },
    /// A request with no data at all.
    EmptyRequest,
    /// The request's variable-length content exceeds what the device or driver accepts.
    RequestTooLarge { got: u64, max: u64 },
    /// Source and destination lengths differ (the device requires them equal for ciphers).
    LengthMismatch { src: usize, dst: usize },
    /// The session id is not (or no longer) known to the device or to the driver.
    UnknownSession,
    /// The driver's own session table is full.
    SessionsExhausted,
    /// The device is in a state from which only a reset recovers.
    DeviceNeedsReset,
    /// The device did not complete the request in time.
    Timeout,
    /// The device completed a request with a reply the driver cannot interpret.
    MalformedCompletion { what: &'static str },
    /// The device answered `VIRTIO_CRYPTO_ERR`: a failure it does not describe further.
    DeviceError,
    /// The device answered `VIRTIO_CRYPTO_BADMSG`.
    BadMessage,
    /// The device answered `VIRTIO_CRYPTO_NOSPC`: it has no free session id.
    NoSpace,
    /// The device answered `VIRTIO_CRYPTO_KEY_REJECTED`.
    KeyRejected,
    /// No free descriptors in the virtqueue for this request.
    QueueFull,
    /// A batch of more requests than its queue has request slots (each request holds one from
    /// building until its result is dropped): split it.
    BatchTooLarge { got: usize, max: usize },
    /// The session was created for the other direction (the device fixes it at creation).
    WrongDirection { session: &'static str },
    /// A chained stream was asked of a mode whose requests do not chain (ECB, XTS).
    StreamNotSupported {
        mode: &'static str,
        why: &'static str,
    },
    /// An earlier chunk of the stream failed (or was refused); its output can no longer be
    /// chained, so the stream takes nothing more.
    StreamBroken { chunk: u64 },
    /// A CTR chunk that is not whole blocks ends its stream; another chunk came after it.
    PartialBlockNotLast { chunk: u64, len: usize },
    /// The stream already has its window of chunks fed and not yet taken.
    StreamWindowFull { window: usize },
    /// The device was reset (or is being reset) while the request was in flight or waiting:
    /// it was not carried out; retry once the device is back.
    DeviceReset,
    /// The session was created before the device was last reset, which dropped every session:
    /// create it again.
    SessionLost,
    /// The IOMMU blocked a DMA access of the device outside the memory mapped for it (a DMA
    /// remapping fault, Intel VT-d 3.0, 7.1): the answer cannot be trusted, so the request
    /// failed and the device is reset. `address` is the faulting I/O virtual page, `write`
    /// whether the device tried to write it, `reason` the VT-d fault reason code.
    DmaFault {
        address: u64,
        write: bool,
        reason: u8,
    },
    /// The key is not what was asked for: malformed DER, the wrong PKCS#1 structure, or values
    /// that do not make an RSA key; `what` says which.
    InvalidKey { what: &'static str },
    /// The RSA modulus has a size the driver does not take (1024 to 4096 bits).
    InvalidModulusSize { bits: usize },
    /// The operation needs the other kind of key (public: encrypt, verify; private: decrypt,
    /// sign).
    WrongKeyKind {
        op: &'static str,
        needs: &'static str,
    },
    /// A digest whose length is not the one of the session's hash.
    InvalidDigestLength { got: usize, expected: usize },
    /// A message longer than PKCS#1 v1.5 encryption allows for the modulus (its length - 11).
    MessageTooLong { got: usize, max: usize },
    /// A signature or ciphertext that is not exactly the modulus length.
    InvalidInputLength {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// A signature or ciphertext whose value is not below the modulus.
    InputOutOfRange { what: &'static str },
    /// The signature does not verify (checked in software whatever the device said).
    BadSignature,
    /// The device could not decrypt the ciphertext (invalid padding for this key).
    DecryptionFailed,
    /// The device answered with a result the driver proved wrong, and a retry did not help.
    WrongAnswer { what: &'static str },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoDevice => f.write_str("no virtio-crypto device was found"),
            Error::DeviceNotReady => {
                f.write_str("the crypto device is not ready (HW_READY is clear)")
            }
            Error::NotSupported { what } => write!(f, "not supported: {what}"),
            Error::InvalidKeyLength { got, allowed } => {
                write!(f, "invalid key length of {got} bytes (allowed: {allowed})")
            }
            Error::InvalidIvLength { got, expected } => {
                write!(f, "invalid iv length of {got} bytes (expected {expected})")
            }
            Error::InvalidDataLength { got, block } => {
                write!(
                    f,
                    "data length of {got} bytes is not a multiple of the {block}-byte block"
                )
            }
            Error::EmptyRequest => f.write_str("the request has no data"),
            Error::RequestTooLarge { got, max } => {
                write!(f, "the request is too large ({got} bytes, at most {max})")
            }
            Error::LengthMismatch { src, dst } => {
                write!(
                    f,
                    "source and destination lengths differ ({src} vs {dst} bytes)"
                )
            }
            Error::UnknownSession => f.write_str("the session is unknown to the device"),
            Error::SessionsExhausted => f.write_str("no free session slot is left in the driver"),
            Error::DeviceNeedsReset => f.write_str("the device needs a reset before further use"),
            Error::Timeout => f.write_str("the device did not complete the request in time"),
            Error::MalformedCompletion { what } => {
                write!(f, "the device returned a malformed completion: {what}")
            }
            Error::DeviceError => f.write_str("the device reported an unspecified error (ERR)"),
            Error::BadMessage => f.write_str("the device rejected the message (BADMSG)"),
            Error::NoSpace => f.write_str("the device has no free session id (NOSPC)"),
            Error::KeyRejected => {
                f.write_str("the device rejected the key or signature (KEY_REJECTED)")
            }
            Error::QueueFull => f.write_str("the virtqueue has no free descriptors"),
            Error::BatchTooLarge { got, max } => write!(
                f,
                "a batch of {got} requests is larger than its queue's {max} request slots"
            ),
            Error::WrongDirection { session } => {
                write!(
                    f,
                    "the session was created to {session}; make another for the other direction"
                )
            }
            Error::StreamNotSupported { mode, why } => {
                write!(f, "a chained stream cannot use {mode}: {why}")
            }
            Error::StreamBroken { chunk } => {
                write!(
                    f,
                    "the stream failed at chunk {chunk} and takes no more; start a new stream"
                )
            }
            Error::PartialBlockNotLast { chunk, len } => {
                write!(
                    f,
                    "chunk {chunk} of {len} bytes is not whole 16-byte blocks, so it must be the stream's last"
                )
            }
            Error::StreamWindowFull { window } => {
                write!(
                    f,
                    "the stream already has {window} chunks pending; take an output first"
                )
            }
            Error::DeviceReset => {
                f.write_str("the device was reset while the request was pending; retry it")
            }
            Error::SessionLost => {
                f.write_str("the session was lost when the device was reset; create it again")
            }
            Error::DmaFault {
                address,
                write,
                reason,
            } => write!(
                f,
                "dma fault: the device tried to {} {address:#x}, which is not mapped for it (VT-d fault reason {reason:#x}); the request failed and the device is reset",
                if write { "write" } else { "read" }
            ),
            Error::InvalidKey { what } => write!(f, "invalid key: {what}"),
            Error::InvalidModulusSize { bits } => {
                write!(f, "rsa modulus of {bits} bits (allowed: 1024 to 4096)")
            }
            Error::WrongKeyKind { op, needs } => {
                write!(f, "{op} needs a session with a {needs} key")
            }
            Error::InvalidDigestLength { got, expected } => {
                write!(f, "digest of {got} bytes for a hash of {expected} bytes")
            }
            Error::MessageTooLong { got, max } => {
                write!(
                    f,
                    "message of {got} bytes is too long for the key (at most {max})"
                )
            }
            Error::InvalidInputLength {
                what,
                got,
                expected,
            } => write!(
                f,
                "{what} of {got} bytes (must be the modulus length, {expected} bytes)"
            ),
            Error::InputOutOfRange { what } => {
                write!(f, "{what} is not smaller than the modulus")
            }
            Error::BadSignature => f.write_str("the signature does not verify"),
            Error::DecryptionFailed => {
                f.write_str("the ciphertext does not decrypt with this key (bad padding)")
            }
            Error::WrongAnswer { what } => {
                write!(f, "the device answered wrongly, even on retry: {what}")
            }
        }
    }
}

impl core::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::Error;
    use std::format;

    #[test]
    fn display_includes_the_numbers() {
        let e = Error::InvalidKeyLength {
            got: 15,
            allowed: "16, 24 or 32",
        };
        assert_eq!(
            format!("{e}"),
            "invalid key length of 15 bytes (allowed: 16, 24 or 32)"
        );
        let e = Error::RequestTooLarge {
            got: 70000,
            max: 65536,
        };
        assert_eq!(
            format!("{e}"),
            "the request is too large (70000 bytes, at most 65536)"
        );
        let e = Error::LengthMismatch { src: 16, dst: 32 };
        assert_eq!(
            format!("{e}"),
            "source and destination lengths differ (16 vs 32 bytes)"
        );
        let e = Error::NotSupported { what: "aes-xts" };
        assert_eq!(format!("{e}"), "not supported: aes-xts");
    }

    #[test]
    fn every_message_is_one_lowercase_sentence() {
        let all = [
            Error::NoDevice,
            Error::DeviceNotReady,
            Error::NotSupported { what: "x" },
            Error::InvalidKeyLength {
                got: 1,
                allowed: "16",
            },
            Error::InvalidIvLength {
                got: 1,
                expected: 16,
            },
            Error::InvalidDataLength { got: 1, block: 16 },
            Error::EmptyRequest,
            Error::RequestTooLarge { got: 2, max: 1 },
            Error::LengthMismatch { src: 1, dst: 2 },
            Error::UnknownSession,
            Error::SessionsExhausted,
            Error::DeviceNeedsReset,
            Error::Timeout,
            Error::MalformedCompletion { what: "x" },
            Error::DeviceError,
            Error::BadMessage,
            Error::NoSpace,
            Error::KeyRejected,
            Error::QueueFull,
            Error::WrongDirection { session: "encrypt" },
            Error::StreamNotSupported {
                mode: "xts(aes)",
                why: "x",
            },
            Error::StreamBroken { chunk: 3 },
            Error::PartialBlockNotLast { chunk: 1, len: 17 },
            Error::StreamWindowFull { window: 32 },
            Error::DeviceReset,
            Error::SessionLost,
            Error::DmaFault {
                address: 0x1000,
                write: true,
                reason: 5,
            },
            Error::InvalidKey { what: "x" },
            Error::InvalidModulusSize { bits: 512 },
            Error::WrongKeyKind {
                op: "sign",
                needs: "private",
            },
            Error::InvalidDigestLength {
                got: 1,
                expected: 32,
            },
            Error::MessageTooLong { got: 2, max: 1 },
            Error::InvalidInputLength {
                what: "signature",
                got: 1,
                expected: 128,
            },
            Error::InputOutOfRange { what: "signature" },
            Error::BadSignature,
            Error::DecryptionFailed,
            Error::WrongAnswer { what: "x" },
        ];
        for e in all {
            let s = format!("{e}");
            assert!(s.starts_with(|c: char| c.is_ascii_lowercase()), "{s:?}");
            assert!(!s.ends_with('.') && !s.contains('\n'), "{s:?}");
        }
    }
}
