//! The crypto API: sessions made from (device, cipher, direction, key) with encrypt/decrypt
//! calls. Dropping a session destroys it on the device. The key is never kept: the driver's
//! copy in the request buffer is zeroized as soon as the device has it.
//!
//! A request goes: `Session::encrypt` -> `CryptoDevice::start_cipher_request` (validation; header, IV and
//! source copied into a request slot of the CPU's data queue) -> `RequestBuilder::submit` (queue
//! lock: add + kick prepare; doorbell after unlock) -> the task sleeps in `Request::wait_until`
//! -> the queue's MSI-X interrupt runs `CryptoQueue::handle_interrupt` (queue lock: pop used;
//! then wake) -> the task copies the output to `dst` and the slot is released. No heap
//! allocation on this path for requests that fit the queue's preallocated memory.

use alloc::vec::Vec;

use virtio_drivers::Hal;

use crate::error::Error;
pub use crate::stream::{ChainMode, DEFAULT_WINDOW, Stream};
pub use crate::virtio_crypto::cipher::{Cipher, CipherSession, Direction};
pub use crate::virtio_crypto::device::CryptoDevice;
pub use crate::virtio_crypto::session::SessionKind;

/// `UnknownSession` from a session of an older device generation means the reset dropped it:
/// `SessionLost` says so (and that it can be created again).
fn lost_if_reset(e: Error, device_generation: u64, session_generation: u64) -> Error {
    match e {
        Error::UnknownSession if device_generation != session_generation => Error::SessionLost,
        e => e,
    }
}

/// A cipher session on one device.
pub struct Session<'d, H: Hal> {
    device: &'d CryptoDevice<H>,
    /// Its id, algorithm, direction and the device generation it was made in (after a reset
    /// it is `SessionLost`).
    session: CipherSession,
    open: bool,
}

impl<'d, H: Hal> Session<'d, H> {
    /// Creates a session. The key is copied into the request and wiped once the device has it.
    pub fn new(
        device: &'d CryptoDevice<H>,
        cipher: Cipher,
        direction: Direction,
        key: &[u8],
    ) -> Result<Self, Error> {
        Ok(Session {
            device,
            session: device.create_cipher_session(cipher, direction, key)?,
            open: true,
        })
    }

    /// The device's id for this session.
    pub fn id(&self) -> u64 {
        self.session.id
    }

    pub fn cipher(&self) -> Cipher {
        self.session.cipher
    }

    pub fn direction(&self) -> Direction {
        self.session.direction
    }

    /// What the device's request builders take of the session (`CryptoDevice::build_cipher_request`
    /// and the others): id, algorithm, direction, generation.
    pub fn as_cipher_session(&self) -> CipherSession {
        self.session
    }

    /// Encrypts `src` into `dst` (same length) with `iv`. The session must be an encrypting one.
    pub fn encrypt(&self, iv: &[u8], src: &[u8], dst: &mut [u8]) -> Result<(), Error> {
        self.apply(Direction::Encrypt, iv, src, dst)
    }

    /// Decrypts `src` into `dst` (same length) with `iv`. The session must be a decrypting one.
    pub fn decrypt(&self, iv: &[u8], src: &[u8], dst: &mut [u8]) -> Result<(), Error> {
        self.apply(Direction::Decrypt, iv, src, dst)
    }

    /// Encrypts `data` in place.
    pub fn encrypt_in_place(&self, iv: &[u8], data: &mut [u8]) -> Result<(), Error> {
        self.apply_in_place(Direction::Encrypt, iv, data)
    }

    /// Decrypts `data` in place.
    pub fn decrypt_in_place(&self, iv: &[u8], data: &mut [u8]) -> Result<(), Error> {
        self.apply_in_place(Direction::Decrypt, iv, data)
    }

    /// The device generation the session belongs to.
    pub fn generation(&self) -> u64 {
        self.session.generation
    }

    /// `SessionLost` if the device was reset since the session was made.
    fn check_alive(&self) -> Result<(), Error> {
        if self.device.generation() != self.session.generation {
            return Err(Error::SessionLost);
        }
        Ok(())
    }

    /// A request's error, seen from the session: an unknown session after a reset is lost.
    fn session_error(&self, e: Error) -> Error {
        lost_if_reset(e, self.device.generation(), self.session.generation)
    }

    fn check_direction(&self, wanted: Direction) -> Result<(), Error> {
        self.check_alive()?;
        match (self.session.direction, wanted) {
            (a, b) if a == b => Ok(()),
            (Direction::Encrypt, _) => Err(Error::WrongDirection { session: "encrypt" }),
            (Direction::Decrypt, _) => Err(Error::WrongDirection { session: "decrypt" }),
        }
    }

    fn apply(
        &self,
        direction: Direction,
        iv: &[u8],
        src: &[u8],
        dst: &mut [u8],
    ) -> Result<(), Error> {
        self.check_direction(direction)?;
        // The rest of the request is validated once, by the device layer.
        if src.len() != dst.len() {
            return Err(Error::LengthMismatch {
                src: src.len(),
                dst: dst.len(),
            });
        }
        let out = self.start(iv, src)?;
        dst.copy_from_slice(&out[..dst.len()]);
        Ok(())
    }

    /// Posts one request of this session (bound to its generation) and waits for it.
    fn start(
        &self,
        iv: &[u8],
        src: &[u8],
    ) -> Result<crate::virtio_crypto::cipher::CipherOutput<H>, Error> {
        let queue = self.device.current_data_queue();
        // The caller takes the first `src.len()` bytes of the output.
        let sent = self.session.cipher.as_sent(src);
        self.device
            .start_cipher_request(queue, &self.session, iv, &sent)
            .and_then(|r| r.wait())
            .map_err(|e| self.session_error(e))
    }

    fn apply_in_place(
        &self,
        direction: Direction,
        iv: &[u8],
        data: &mut [u8],
    ) -> Result<(), Error> {
        self.check_direction(direction)?;
        let out = self.start(iv, data)?;
        let len = data.len();
        data.copy_from_slice(&out[..len]);
        Ok(())
    }

    /// Opens a chained stream on this session starting from `iv` (see [`crate::stream`]), run
    /// the way the device's `chain=` switch says, with the default window.
    pub fn stream(&self, iv: &[u8]) -> Result<Stream<'_, H>, Error>
    where
        H: 'static,
    {
        self.stream_with(iv, self.device.chain_mode(), DEFAULT_WINDOW)
    }

    /// Opens a chained stream in `mode`, keeping at most `window` chunks (1..=64) fed and not
    /// taken. ECB and XTS sessions are refused (`StreamNotSupported`).
    pub fn stream_with(
        &self,
        iv: &[u8],
        mode: ChainMode,
        window: usize,
    ) -> Result<Stream<'_, H>, Error>
    where
        H: 'static,
    {
        Stream::open(
            self.device,
            self.device.current_data_queue(),
            &self.session,
            iv,
            mode,
            window,
        )
    }

    /// Destroys the session, reporting the device's answer (dropping does the same silently).
    pub fn close(mut self) -> Result<(), Error> {
        self.open = false;
        self.device.destroy_session_of(
            SessionKind::Cipher,
            self.session.id,
            self.session.generation,
        )
    }
}

impl<H: Hal> Drop for Session<'_, H> {
    fn drop(&mut self) {
        if self.open
            && self.device.generation() == self.session.generation
            && let Err(e) =
                self.device
                    .destroy_session_of(SessionKind::Cipher, self.session.id, self.session.generation)
            // A reset under way or done drops every session anyway.
            && !matches!(e, Error::DeviceReset | Error::SessionLost)
        {
            log::warn!(
                "{}: destroying session {}: {e}",
                self.device.name,
                self.session.id
            );
        }
    }
}

pub use crate::virtio_crypto::akcipher::{
    AkcipherStats, RsaHash, RsaKeyInfo, RsaKeyKind, RsaOp, RsaParams, RsaRequest,
};

/// An RSA session (PKCS#1 v1.5 padding) on one device: a public key (encrypt, verify) or a
/// private key (decrypt, sign) from PKCS#1 DER, and the hash signatures name. Every answer of
/// the device is checked before it is returned (see `virtio_crypto::akcipher`). Dropping the
/// session destroys it on the device.
pub struct RsaSession<'d, H: Hal> {
    device: &'d CryptoDevice<H>,
    id: u64,
    params: RsaParams,
    open: bool,
}

impl<'d, H: Hal> RsaSession<'d, H> {
    /// Creates a session. The DER is checked first and wiped from the request memory once the
    /// device has it; the driver keeps only the public key.
    pub fn new(
        device: &'d CryptoDevice<H>,
        kind: RsaKeyKind,
        hash: RsaHash,
        der: &[u8],
    ) -> Result<Self, Error> {
        let (id, params) = device.create_rsa_session(kind, hash, der)?;
        Ok(RsaSession {
            device,
            id,
            params,
            open: true,
        })
    }

    /// The device's id for this session.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn kind(&self) -> RsaKeyKind {
        self.params.key.kind()
    }

    pub fn hash(&self) -> RsaHash {
        self.params.hash
    }

    /// The key's public part, size and checks.
    pub fn key(&self) -> &RsaKeyInfo {
        &self.params.key
    }

    /// Signature and ciphertext length in bytes.
    pub fn modulus_len(&self) -> usize {
        self.params.key.modulus_len()
    }

    /// What the driver's checks did with the device's answers to this session so far.
    pub fn stats(&self) -> AkcipherStats {
        self.params.counters.snapshot()
    }

    /// Posts one operation without waiting (many may be in flight); see
    /// [`CryptoDevice::start_rsa_request`].
    pub fn start(&self, op: RsaOp, input: &[u8], signature: &[u8]) -> Result<RsaRequest<H>, Error> {
        let queue = self.device.current_data_queue();
        self.device
            .start_rsa_request(queue, self.id, &self.params, op, input, signature)
            .map_err(|e| self.session_error(e))
    }

    /// A request's error, seen from the session: an unknown session after a reset is lost.
    fn session_error(&self, e: Error) -> Error {
        lost_if_reset(e, self.device.generation(), self.params.generation)
    }

    /// Encrypts `message` (at most modulus length - 11 bytes) with the public key.
    pub fn encrypt(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.start(RsaOp::Encrypt, message, &[])?
            .wait()
            .map_err(|e| self.session_error(e))
    }

    /// Decrypts `ciphertext` (exactly the modulus length) with the private key.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, Error> {
        self.start(RsaOp::Decrypt, ciphertext, &[])?
            .wait()
            .map_err(|e| self.session_error(e))
    }

    /// Signs `digest` (the session hash's length); the signature is verified before it is
    /// returned.
    pub fn sign(&self, digest: &[u8]) -> Result<Vec<u8>, Error> {
        self.start(RsaOp::Sign, digest, &[])?
            .wait()
            .map_err(|e| self.session_error(e))
    }

    /// Verifies `signature` over `digest`: `Ok` or [`Error::BadSignature`].
    pub fn verify(&self, signature: &[u8], digest: &[u8]) -> Result<(), Error> {
        self.start(RsaOp::Verify, digest, signature)?
            .wait()
            .map(|_| ())
            .map_err(|e| self.session_error(e))
    }

    /// The device generation the session was made in: after a reset it is `SessionLost`.
    pub fn generation(&self) -> u64 {
        self.params.generation
    }

    /// Destroys the session, reporting the device's answer (dropping does the same silently).
    pub fn close(mut self) -> Result<(), Error> {
        self.open = false;
        self.device
            .destroy_rsa_session(self.id, self.params.generation)
    }
}

impl<H: Hal> Drop for RsaSession<'_, H> {
    fn drop(&mut self) {
        if self.open
            && self.device.generation() == self.params.generation
            && let Err(e) = self
                .device
                .destroy_rsa_session(self.id, self.params.generation)
            // A reset under way or done drops every session anyway.
            && !matches!(e, Error::DeviceReset | Error::SessionLost)
        {
            log::warn!(
                "{}: destroying rsa session {}: {e}",
                self.device.name,
                self.id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_session_is_lost_only_after_a_reset() {
        assert_eq!(
            lost_if_reset(Error::UnknownSession, 3, 2),
            Error::SessionLost
        );
        assert_eq!(
            lost_if_reset(Error::UnknownSession, 2, 2),
            Error::UnknownSession
        );
        assert_eq!(lost_if_reset(Error::Timeout, 3, 2), Error::Timeout);
    }

    #[test]
    fn ctr_is_padded_to_whole_blocks_and_nothing_else_is() {
        for (len, pad) in [
            (0, 0),
            (1, 15),
            (15, 1),
            (16, 0),
            (17, 15),
            (33, 15),
            (1000, 8),
        ] {
            assert_eq!(Cipher::AesCtr.ctr_padding(len), pad, "len {len}");
            assert_eq!((len + pad) % 16, 0);
        }
        for c in [Cipher::AesCbc, Cipher::AesEcb, Cipher::AesXts] {
            assert_eq!(c.ctr_padding(17), 0);
        }
    }
}
