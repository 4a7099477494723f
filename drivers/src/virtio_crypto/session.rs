//! Sessions on the control queue, generic over services: the driver's session accounting and
//! the create/destroy control requests (a 72-byte header, the service's key material, and the
//! device's reply).
//!
//! Invariants: the live count never exceeds [`MAX_SESSIONS`] (a slot is taken before the create
//! request is sent and given back if it fails); key material is zeroized in the request memory
//! as soon as the request is released (after the device answered, or when a timed-out request
//! comes back).

use core::sync::atomic::{AtomicUsize, Ordering};

use virtio_drivers::Hal;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::device::CryptoDevice;
use super::status::{RequestKind, status_to_result};
use super::wire;
use crate::error::Error;

/// Sessions QEMU's builtin backend holds at once (not advertised in the config space).
pub const MAX_SESSIONS: usize = 256;

/// The crypto services, as numbered in the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Cipher,
    Hash,
    Mac,
    Aead,
    Akcipher,
}

impl Service {
    pub fn destroy_opcode(self) -> u32 {
        match self {
            Service::Cipher => wire::CIPHER_DESTROY_SESSION,
            Service::Hash => wire::HASH_DESTROY_SESSION,
            Service::Mac => wire::MAC_DESTROY_SESSION,
            Service::Aead => wire::AEAD_DESTROY_SESSION,
            Service::Akcipher => wire::AKCIPHER_DESTROY_SESSION,
        }
    }
}

/// The driver's count of live sessions on one device.
pub(crate) struct SessionCounter {
    live: AtomicUsize,
}

impl SessionCounter {
    pub(crate) const fn new() -> Self {
        SessionCounter {
            live: AtomicUsize::new(0),
        }
    }

    fn take(&self) -> Result<(), Error> {
        if self.live.fetch_add(1, Ordering::SeqCst) >= MAX_SESSIONS {
            self.live.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::SessionsExhausted);
        }
        Ok(())
    }

    fn give_back(&self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl<H: Hal> CryptoDevice<H> {
    /// Sessions this driver created on the device and has not destroyed.
    pub fn live_sessions(&self) -> usize {
        self.sessions.live()
    }

    /// Creates a session of any service: `request` is the service's 72-byte create request,
    /// `key` its key material (wiped once the device has it). Returns the device's session id.
    pub fn create_session<R: IntoBytes + Immutable>(
        &self,
        request: &R,
        key: &[u8],
    ) -> Result<u64, Error> {
        self.ready()?;
        self.sessions.take()?;
        let result = self.send_create(request, key);
        if result.is_err() {
            self.sessions.give_back();
        }
        result
    }

    fn send_create<R: IntoBytes + Immutable>(&self, request: &R, key: &[u8]) -> Result<u64, Error> {
        let mut builder = self.control.reserve(
            request.as_bytes().len() + key.len(),
            wire::SESSION_INPUT_LEN,
        )?;
        builder.wipe_on_release();
        builder.push_struct(request)?.push(key)?;
        // A status the device must overwrite: an unanswered reply is not OK.
        let sentinel = wire::SessionInput {
            status: u32::MAX.into(),
            ..Default::default()
        };
        builder.writable_mut().copy_from_slice(sentinel.as_bytes());
        let done = self.control_round_trip(builder)?;
        let reply = wire::SessionInput::read_from_bytes(done.writable()).map_err(|_| {
            Error::MalformedCompletion {
                what: "session input of the wrong size",
            }
        })?;
        status_to_result(reply.status.get(), RequestKind::CreateSession)?;
        Ok(reply.session_id.get())
    }

    /// Destroys a session of `service`.
    pub fn destroy_session(&self, service: Service, session_id: u64) -> Result<(), Error> {
        self.ready()?;
        let request = wire::DestroySession::new(service.destroy_opcode(), session_id);
        let mut builder = self
            .control
            .reserve(request.as_bytes().len(), wire::INHDR_LEN)?;
        builder.push_struct(&request)?;
        builder.writable_mut().fill(0xff);
        let done = self.control_round_trip(builder)?;
        let status = done.writable().last().copied().unwrap_or(0xff);
        status_to_result(status, RequestKind::DestroySession)?;
        self.sessions.give_back();
        Ok(())
    }

    /// Destroys a cipher session.
    pub fn destroy_cipher_session(&self, session_id: u64) -> Result<(), Error> {
        self.destroy_session(Service::Cipher, session_id)
    }
}
