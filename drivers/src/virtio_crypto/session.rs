//! Sessions on the control queue, generic over services: the driver's session accounting and
//! the create/destroy control requests (a 72-byte header, the service's key material, and the
//! device's reply).
//!
//! Invariants: the live count never exceeds [`MAX_SESSIONS`] (a slot is taken before the create
//! request is sent and given back if it fails); key material is zeroized in the request memory
//! as soon as the request is released (after the device answered, or when a timed-out request
//! comes back).

use virtio_drivers::Hal;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::sync::IrqSpinLock;

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

/// The driver's count of sessions the device may hold, per device generation: exact while
/// every control request is answered; an upper bound after a create or destroy timed out (the
/// device may or may not have done it, so the session stays counted); exact again (zero) after a
/// reset, which drops every session.
pub(crate) struct SessionCounter {
    /// (generation, live)
    live: IrqSpinLock<(u64, usize)>,
}

impl SessionCounter {
    pub(crate) const fn new() -> Self {
        SessionCounter {
            live: IrqSpinLock::new("session-count", (0, 0)),
        }
    }

    /// Counts a session about to be created in `generation`.
    fn take(&self, generation: u64) -> Result<(), Error> {
        let mut live = self.live.lock();
        if live.0 != generation {
            return Err(Error::DeviceReset);
        }
        if live.1 >= MAX_SESSIONS {
            return Err(Error::SessionsExhausted);
        }
        live.1 += 1;
        Ok(())
    }

    /// A session of `generation` is gone (a reset since then already forgot it).
    fn give_back(&self, generation: u64) {
        let mut live = self.live.lock();
        if live.0 == generation {
            live.1 = live.1.saturating_sub(1);
        }
    }

    fn live(&self) -> usize {
        self.live.lock().1
    }

    /// The device was reset: it holds no session of the new generation.
    pub(crate) fn reset(&self, generation: u64) {
        *self.live.lock() = (generation, 0);
    }
}

impl<H: Hal> CryptoDevice<H> {
    /// Sessions this driver created on the device and has not destroyed.
    pub fn live_sessions(&self) -> usize {
        self.sessions.live()
    }

    /// Creates a session of any service: `request` is the service's 72-byte create request,
    /// `key` its key material (wiped once the device has it, or when the device is reset).
    /// Returns the device's session id and the device generation it belongs to.
    pub fn create_session<R: IntoBytes + Immutable>(
        &self,
        request: &R,
        key: &[u8],
    ) -> Result<(u64, u64), Error> {
        self.ready()?;
        let generation = self.generation();
        self.sessions.take(generation)?;
        let result = self.send_create(request, key);
        match result {
            Ok(id) if self.generation() == generation => Ok((id, generation)),
            // Created, then lost to a reset before the caller could use it.
            Ok(_) => Err(Error::DeviceReset),
            // The device may still create it: it stays counted (until a reset).
            Err(Error::Timeout) => Err(Error::Timeout),
            Err(e) => {
                self.sessions.give_back(generation);
                Err(e)
            }
        }
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
        builder.expect_used(wire::SESSION_INPUT_LEN);
        let done = self.control_round_trip(builder)?;
        let reply = wire::SessionInput::read_from_bytes(done.writable()).map_err(|_| {
            Error::MalformedCompletion {
                what: "session input of the wrong size",
            }
        })?;
        status_to_result(reply.status.get(), RequestKind::CreateSession)?;
        Ok(reply.session_id.get())
    }

    /// Destroys a session of `service` made in the current generation.
    pub fn destroy_session(&self, service: Service, session_id: u64) -> Result<(), Error> {
        self.destroy_session_of(service, session_id, self.generation())
    }

    /// Destroys a session of `service` made in device generation `generation`: one from before
    /// the last reset is already gone (`SessionLost`, nothing sent). A destroy that times out
    /// leaves the session counted (the device may still hold it).
    pub fn destroy_session_of(
        &self,
        service: Service,
        session_id: u64,
        generation: u64,
    ) -> Result<(), Error> {
        if generation != self.generation() {
            return Err(Error::SessionLost);
        }
        self.ready()?;
        let request = wire::DestroySession::new(service.destroy_opcode(), session_id);
        let mut builder = self
            .control
            .reserve(request.as_bytes().len(), wire::INHDR_LEN)?;
        builder.push_struct(&request)?;
        builder.writable_mut().fill(0xff);
        builder.expect_used(wire::INHDR_LEN);
        let done = self.control_round_trip(builder)?;
        let status = done.writable().last().copied().unwrap_or(0xff);
        status_to_result(status, RequestKind::DestroySession)?;
        self.sessions.give_back(generation);
        Ok(())
    }

    /// Destroys a cipher session.
    pub fn destroy_cipher_session(&self, session_id: u64) -> Result<(), Error> {
        self.destroy_session(Service::Cipher, session_id)
    }
}
