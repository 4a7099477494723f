//! The crypto API: sessions made from (device, cipher, direction, key) with encrypt/decrypt
//! calls. Dropping a session destroys it on the device. The key is never kept: the driver's
//! copy in the request buffer is zeroized as soon as the device has it.
//!
//! A request goes: `Session::encrypt` -> `CryptoDevice::cipher_request` (validation, buffers) ->
//! `CryptoQueue::submit` (queue lock: add + kick prepare; doorbell after unlock) -> the task
//! sleeps on the request's completion -> the queue's MSI-X interrupt runs
//! `CryptoQueue::handle_interrupt` (queue lock: pop used; then complete + wake) -> the task
//! wakes with the output.

use virtio_drivers::Hal;

use crate::error::Error;
use crate::sync::platform;
pub use crate::virtio_crypto::device::{Cipher, CryptoDevice, Direction};

/// Bytes of zero padding that make a CTR request a whole number of AES blocks (0 for other
/// ciphers, whose length rules the device layer checks).
pub fn ctr_padding(cipher: Cipher, len: usize) -> usize {
    const BLOCK: usize = 16;
    match cipher {
        Cipher::AesCtr if !len.is_multiple_of(BLOCK) => BLOCK - len % BLOCK,
        _ => 0,
    }
}

/// A cipher session on one device.
pub struct Session<'d, H: Hal> {
    device: &'d CryptoDevice<H>,
    id: u64,
    cipher: Cipher,
    direction: Direction,
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
        let id = device.create_cipher_session(cipher, direction, key)?;
        Ok(Session {
            device,
            id,
            cipher,
            direction,
            open: true,
        })
    }

    /// The device's id for this session.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    pub fn direction(&self) -> Direction {
        self.direction
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

    fn check_direction(&self, wanted: Direction) -> Result<(), Error> {
        match (self.direction, wanted) {
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
        let out = self.run(direction, iv, src)?;
        dst.copy_from_slice(&out);
        Ok(())
    }

    fn apply_in_place(
        &self,
        direction: Direction,
        iv: &[u8],
        data: &mut [u8],
    ) -> Result<(), Error> {
        self.check_direction(direction)?;
        let out = self.run(direction, iv, data)?;
        data.copy_from_slice(&out);
        Ok(())
    }

    fn run(
        &self,
        direction: Direction,
        iv: &[u8],
        src: &[u8],
    ) -> Result<alloc::vec::Vec<u8>, Error> {
        let queue = self.device.data_queue_for(platform::get().current_cpu());
        // QEMU's builtin device refuses CTR data that is not a whole number of blocks (ERR),
        // though CTR itself is a stream mode (Linux allows any length). The keystream does not
        // depend on the data, so a partial last block is padded with zeros to a whole block and
        // the output cut back: the result is exactly CTR over the given length.
        let padded;
        let sent = match ctr_padding(self.cipher, src.len()) {
            0 => src,
            pad => {
                let mut p = alloc::vec::Vec::with_capacity(src.len() + pad);
                p.extend_from_slice(src);
                p.resize(src.len() + pad, 0);
                padded = p;
                &padded[..]
            }
        };
        let mut out =
            self.device
                .cipher_request(queue, self.id, self.cipher, direction, iv, sent)?;
        if out.len() != sent.len() {
            return Err(Error::MalformedCompletion {
                what: "output length differs from input",
            });
        }
        out.truncate(src.len());
        Ok(out)
    }

    /// Destroys the session, reporting the device's answer (dropping does the same silently).
    pub fn close(mut self) -> Result<(), Error> {
        self.open = false;
        self.device.destroy_cipher_session(self.id)
    }
}

impl<H: Hal> Drop for Session<'_, H> {
    fn drop(&mut self) {
        if self.open
            && let Err(e) = self.device.destroy_cipher_session(self.id)
        {
            log::warn!("{}: destroying session {}: {e}", self.device.name, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(ctr_padding(Cipher::AesCtr, len), pad, "len {len}");
            assert_eq!((len + pad) % 16, 0);
        }
        for c in [Cipher::AesCbc, Cipher::AesEcb, Cipher::AesXts] {
            assert_eq!(ctr_padding(c, 17), 0);
        }
    }
}
