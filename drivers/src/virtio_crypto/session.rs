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

use alloc::vec::Vec;

use super::device::{CryptoDevice, CtrlMode};
use super::request::{Request, RequestBatch, RequestBuilder, SlotGroup, SlotSource};
use super::status::{RequestKind, status_to_result};
use super::wire;
use crate::error::Error;

pub use super::device::MAX_SESSIONS;

/// The services this driver makes sessions of (the spec's cipher and akcipher services).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    Cipher,
    Akcipher,
}

impl SessionKind {
    pub fn destroy_opcode(self) -> u32 {
        match self {
            SessionKind::Cipher => wire::CIPHER_DESTROY_SESSION,
            SessionKind::Akcipher => wire::AKCIPHER_DESTROY_SESSION,
        }
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
        let result = self
            .build_create((&self.control).into(), request, key, generation)
            .and_then(|builder| self.control_round_trip(builder))
            .and_then(|done| create_reply(&done));
        self.settle_create(result, generation)
    }

    /// The session count after a create ended with `result`: a failed create gives its place
    /// back, except a timed-out one (the device may still create it; it stays counted until a
    /// reset). A session created and then lost to a reset is `DeviceReset`.
    fn settle_create(
        &self,
        result: Result<u64, Error>,
        generation: u64,
    ) -> Result<(u64, u64), Error> {
        match result {
            Ok(id) if self.generation() == generation => Ok((id, generation)),
            // Created, then lost to a reset before the caller could use it; or refused unsent
            // because a reset came between building and posting it.
            Ok(_) | Err(Error::SessionLost) => Err(Error::DeviceReset),
            Err(Error::Timeout) => Err(Error::Timeout),
            Err(e) => {
                self.sessions.give_back(generation);
                Err(e)
            }
        }
    }

    /// Builds (does not post) a create-session request for device generation `generation`: it
    /// is refused unsent if the device was reset before it is posted.
    fn build_create<R: IntoBytes + Immutable>(
        &self,
        slots: SlotSource<'_, H>,
        request: &R,
        key: &[u8],
        generation: u64,
    ) -> Result<RequestBuilder<H>, Error> {
        let mut builder = slots.reserve(
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
        builder
            .preset_reply(sentinel.as_bytes())
            .expect_used(wire::SESSION_INPUT_LEN)
            .bind_generation(generation);
        Ok(builder)
    }

    /// Creates cipher sessions, one per key, posted together: one kick-prepare and at most one
    /// doorbell for all of them (the control path's batch). Each gets its own result, in the
    /// order of `keys`, as [`create_cipher_session`](Self::create_cipher_session) would give it.
    /// Under `ctrl=poll` they are created one at a time.
    pub fn create_cipher_sessions(
        &self,
        cipher: super::cipher::Cipher,
        direction: super::cipher::Direction,
        keys: &[&[u8]],
    ) -> Vec<Result<super::cipher::CipherSession, Error>> {
        if self.ctrl_mode() == CtrlMode::Poll {
            return keys
                .iter()
                .map(|key| self.create_cipher_session(cipher, direction, key))
                .collect();
        }
        self.create_cipher_batch(cipher, direction, keys, None)
    }

    /// [`create_cipher_sessions`](Self::create_cipher_sessions) as one batch whatever the
    /// control mode; `polled`: see [`control_batch`](Self::control_batch).
    fn create_cipher_batch(
        &self,
        cipher: super::cipher::Cipher,
        direction: super::cipher::Direction,
        keys: &[&[u8]],
        polled: Option<&mut u64>,
    ) -> Vec<Result<super::cipher::CipherSession, Error>> {
        let generation = self.generation();
        self.control_batch(
            keys,
            |key, group| {
                let request = self.cipher_create_request(cipher, direction, key)?;
                self.sessions.take(generation)?;
                let built = self.build_create(group.into(), &request, key, generation);
                if built.is_err() {
                    self.sessions.give_back(generation);
                }
                built
            },
            |sent, outcome| match outcome.and_then(|done| create_reply(&done)) {
                // Never reached the device: its place in the count goes back.
                Err(e) if !sent => {
                    self.sessions.give_back(generation);
                    Err(e)
                }
                result => self
                    .settle_create(result, generation)
                    .map(|(id, generation)| super::cipher::CipherSession {
                        id,
                        generation,
                        cipher,
                        direction,
                    }),
            },
            polled,
        )
    }

    /// Destroys cipher sessions of the current generation, posted together like
    /// [`create_cipher_sessions`](Self::create_cipher_sessions); one result per id, in order.
    pub fn destroy_cipher_sessions(&self, ids: &[u64]) -> Vec<Result<(), Error>> {
        if self.ctrl_mode() == CtrlMode::Poll {
            return ids
                .iter()
                .map(|&id| self.destroy_cipher_session(id))
                .collect();
        }
        self.destroy_cipher_batch(ids, None)
    }

    /// [`destroy_cipher_sessions`](Self::destroy_cipher_sessions) as one batch whatever the
    /// control mode; `polled`: see [`control_batch`](Self::control_batch).
    fn destroy_cipher_batch(
        &self,
        ids: &[u64],
        polled: Option<&mut u64>,
    ) -> Vec<Result<(), Error>> {
        let generation = self.generation();
        self.control_batch(
            ids,
            |&id, group| self.build_destroy(group.into(), SessionKind::Cipher, id, generation),
            |_, outcome| {
                let result = outcome.and_then(|done| destroy_reply(&done));
                if result.is_ok() {
                    self.sessions.give_back(generation);
                }
                result
            },
            polled,
        )
    }

    /// The control queue's own rate, measured as `bench limit` measures a data queue's: a
    /// cipher session per key created as one batch (one kick), then all of them destroyed as
    /// another, with the control queue handed to a poller (no interrupts, no sleeping) and
    /// polled until each batch's last answer. Returns the nanoseconds from each submission to
    /// its last answer, summed (over the rounds of a batch larger than a quarter of the control
    /// queue, too). Every session it created is destroyed, also when another failed; the first
    /// error is returned. No other control requests should run meanwhile: their waits would see
    /// no interrupt until it ends.
    pub fn time_polled_session_pairs(
        &self,
        cipher: super::cipher::Cipher,
        direction: super::cipher::Direction,
        keys: &[&[u8]],
    ) -> Result<u64, Error> {
        let mut ns = 0;
        self.control.set_polled(true);
        let created = self.create_cipher_batch(cipher, direction, keys, Some(&mut ns));
        let ids: Vec<u64> = created.iter().flatten().map(|s| s.id).collect();
        let destroyed = self.destroy_cipher_batch(&ids, Some(&mut ns));
        self.control.set_polled(false);
        let first_error = created
            .into_iter()
            .map(|c| c.map(|_| ()))
            .chain(destroyed)
            .find_map(Result::err);
        match first_error {
            Some(e) => Err(e),
            None => Ok(ns),
        }
    }

    /// Builds one control request per item (`build`, from a group of slots taken together),
    /// posts those that could be built with one kick, waits for them, and gives each item its
    /// result: `build`'s error, or what `finish` makes of the request's outcome (`sent`: whether
    /// the request reached the ring at all). Any number of items: they go in rounds of at most
    /// a quarter of the control queue's slots, each round's results finished (and its slots
    /// freed) before the next takes slots, so a batch never waits for slots it holds itself,
    /// and up to four batchers run side by side.
    ///
    /// `polled`: the control queue is handed to a poller (the caller did
    /// [`set_polled`](super::queue::CryptoQueue::set_polled)): each round is polled until its
    /// last answer instead of slept on, and the nanoseconds from its submission to that answer
    /// are added here.
    fn control_batch<I, T>(
        &self,
        items: &[I],
        mut build: impl FnMut(&I, &mut SlotGroup<H>) -> Result<RequestBuilder<H>, Error>,
        mut finish: impl FnMut(bool, Result<Request<H>, Error>) -> Result<T, Error>,
        mut polled: Option<&mut u64>,
    ) -> Vec<Result<T, Error>> {
        let round = (self.control.slot_capacity() / 4).max(1);
        let mut results: Vec<Option<Result<T, Error>>> = Vec::with_capacity(items.len());
        for chunk in items.chunks(round) {
            let mut group = match self
                .ready()
                .and_then(|()| self.control.reserve_group(chunk.len()))
            {
                Ok(group) => group,
                Err(e) => {
                    results.extend(chunk.iter().map(|_| Some(Err(e))));
                    continue;
                }
            };
            let first = results.len();
            let mut batch = RequestBatch::with_capacity(chunk.len());
            let mut batched = Vec::with_capacity(chunk.len());
            for (i, item) in chunk.iter().enumerate() {
                match build(item, &mut group).and_then(|builder| batch.push(builder)) {
                    Ok(()) => {
                        batched.push(first + i);
                        results.push(None);
                    }
                    Err(e) => results.push(Some(Err(e))),
                }
            }
            drop(group); // slots not used go back before the wait
            let posted = self.post_control_batch(&mut batch, batched.len(), polled.as_deref_mut());
            for (i, (sent, outcome)) in batched.into_iter().zip(posted) {
                results[i] = Some(finish(sent, outcome));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::DeviceReset)))
            .collect()
    }

    /// Posts a batch of `count` control requests with one kick and waits for each (at most the
    /// device's timeout); one outcome per request, in order: the finished request, or why it
    /// failed, and whether it was posted at all (one that was not never reached the device).
    fn post_control_batch(
        &self,
        batch: &mut RequestBatch<H>,
        count: usize,
        polled: Option<&mut u64>,
    ) -> Vec<(bool, Result<Request<H>, Error>)> {
        let platform = crate::sync::platform::get();
        let mut posted = Vec::with_capacity(count);
        let start = platform.now_ns();
        let error = batch.submit(&mut posted).err();
        let deadline = self.health().deadline();
        if let Some(ns) = polled {
            // A timeout shows below, as each request's wait ends at the passed deadline.
            let _ = Request::poll_all(&posted, deadline);
            *ns += platform.now_ns().saturating_sub(start);
        }
        let mut outcomes: Vec<(bool, Result<Request<H>, Error>)> = posted
            .into_iter()
            .map(|request| {
                let waited = self.health().wait_until(&request, deadline);
                (true, waited.map(|_| request))
            })
            .collect();
        let refused = error.unwrap_or(Error::DeviceReset);
        outcomes.resize_with(count, || (false, Err(refused)));
        outcomes
    }

    /// Destroys a session of `service` made in the current generation.
    pub fn destroy_session(&self, kind: SessionKind, session_id: u64) -> Result<(), Error> {
        self.destroy_session_of(kind, session_id, self.generation())
    }

    /// Destroys a session of `service` made in device generation `generation`: one from before
    /// the last reset is already gone (`SessionLost`, nothing sent). A destroy that times out
    /// leaves the session counted (the device may still hold it).
    pub fn destroy_session_of(
        &self,
        kind: SessionKind,
        session_id: u64,
        generation: u64,
    ) -> Result<(), Error> {
        if generation != self.generation() {
            return Err(Error::SessionLost);
        }
        self.ready()?;
        let builder = self.build_destroy((&self.control).into(), kind, session_id, generation)?;
        let done = self.control_round_trip(builder)?;
        destroy_reply(&done)?;
        self.sessions.give_back(generation);
        Ok(())
    }

    /// Builds (does not post) a destroy-session request for a session of device generation
    /// `generation`. Bound to it like a data request: after a reset (which dropped the session,
    /// and after which the device numbers sessions from 0 again, so the id may name another
    /// caller's session) it is refused unsent with `SessionLost`.
    pub(crate) fn build_destroy(
        &self,
        slots: SlotSource<'_, H>,
        kind: SessionKind,
        session_id: u64,
        generation: u64,
    ) -> Result<RequestBuilder<H>, Error> {
        let request = wire::DestroySession::new(kind.destroy_opcode(), session_id);
        let mut builder = slots.reserve(request.as_bytes().len(), wire::INHDR_LEN)?;
        builder.push_struct(&request)?;
        builder
            .preset_status(0xff)
            .expect_used(wire::INHDR_LEN)
            .bind_generation(generation);
        Ok(builder)
    }

    /// Destroys a cipher session.
    pub fn destroy_cipher_session(&self, session_id: u64) -> Result<(), Error> {
        self.destroy_session(SessionKind::Cipher, session_id)
    }
}

/// The session id in a finished create-session request's reply, or why it failed.
fn create_reply<H: Hal>(done: &Request<H>) -> Result<u64, Error> {
    let reply = wire::SessionInput::read_from_bytes(done.writable()).map_err(|_| {
        Error::MalformedCompletion {
            what: "session input of the wrong size",
        }
    })?;
    status_to_result(reply.status.get(), RequestKind::CreateSession)?;
    Ok(reply.session_id.get())
}

/// The status of a finished destroy-session request.
fn destroy_reply<H: Hal>(done: &Request<H>) -> Result<(), Error> {
    let status = done.writable().last().copied().unwrap_or(0xff);
    status_to_result(status, RequestKind::DestroySession)
}
