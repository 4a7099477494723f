//! Chained-IV streams: an ordered sequence of cipher requests on one session whose
//! IVs chain like one AF_ALG operation socket (docs/DESIGN.md, "Sources"). Feed chunks in order; the stream
//! derives each chunk's IV from the previous one and hands the outputs back in order; their
//! concatenation is bit-identical to one request over the concatenated input.
//!
//! How each chunk's IV follows ([`Chaining`]):
//! - CBC decryption: the last ciphertext block of the previous *input*; known at submit time.
//! - CTR: the previous counter plus the previous chunk's blocks (big endian, carry across all
//!   128 bits); known at submit time. A CTR chunk that is not whole blocks can only be the last
//!   one (the next counter advances by whole blocks): a chunk after it is refused with
//!   [`Error::PartialBlockNotLast`]. Such a chunk is sent padded with zeros to whole blocks
//!   (QEMU's device takes whole blocks only; CTR output does not depend on later bytes) and its
//!   output is cut to its length, as a single request is.
//! - CBC encryption: the last block of the previous *output*; known only when it completes.
//! - ECB (no IV) and XTS (each request is its own data unit) are refused with
//!   [`Error::StreamNotSupported`].
//!
//! [`ChainMode`] (`chain=serial|pipelined`):
//! - `Serial`, the baseline (AF_ALG's mutex): each chunk waits for the previous one to finish
//!   before it is even built, so one chunk at a time is in the ring.
//! - `Pipelined`, the design: CBC-decrypt and CTR chunks are built and posted at once, up to the
//!   stream's window in flight. CBC-encrypt chunks are built and checked at once too, but wait in
//!   the stream's ready queue; the previous chunk's completion handler (often in interrupt
//!   context) writes the IV into the next one and posts it — no task wakes up in between.
//!
//! Every chunk completes through a [`OnComplete`] handler: one preallocated handler per window
//! position, so the completion path allocates and frees nothing. The handler checks the output
//! (status, length), advances the CBC-encrypt chain, moves the next ready chunk into the ring
//! and parks the output in the window; [`Stream::next_output`] takes them in feed order whatever
//! the device's completion order. Independent requests on the same session never wait for a
//! stream: a stream only ever holds its own chunks back.
//!
//! Invariants:
//! - A chunk's request is reserved and filled in task context ([`Stream::feed`]); the handler
//!   only patches the IV bytes and posts it. `submit_with` frees nothing on failure, and a
//!   request handed to a handler frees nothing when dropped, so no heap call happens in
//!   interrupt context. Posting never waits for ring space: a queue has fewer slots than half
//!   its descriptors, and every request holds a slot and at most two descriptors. A chunk
//!   larger than a slot's own block takes one of the queue's large blocks, or, when they are
//!   all taken (a queue has 16, a window may hold up to 64 chunks), a heap block allocated
//!   when the chunk is fed, in task context; it stays with the slot and is freed by a later
//!   reservation, also in task context.
//! - The stream's state is behind one `IrqSpinLock` ("stream"), a leaf: nothing is posted,
//!   dropped or woken under it.
//! - Once a chunk fails, the stream is broken: later chunks are refused and their outputs are
//!   replaced by [`Error::StreamBroken`] (their chaining is no longer meaningful).
//! - Dropping a stream waits (at most the device timeout) until the device returned all of its
//!   chunks and no handler reference is left outside the stream, so the handlers are freed in
//!   task context; after that timeout they are leaked rather than freed in interrupt context.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use virtio_drivers::Hal;

use crate::error::Error;
use crate::sync::{IrqSpinLock, WaitQueue, platform};
use crate::virtio_crypto::cipher::{
    CIPHER_IV_OFFSET, Cipher, CipherOutput, CipherSession, Direction,
};
pub use crate::virtio_crypto::device::ChainMode;
use crate::virtio_crypto::device::{CryptoDevice, DeviceHealth};
use crate::virtio_crypto::queue::CryptoQueue;
use crate::virtio_crypto::request::{Finished, OnComplete, Request, RequestBuilder};

/// AES block size.
pub const BLOCK: usize = 16;
/// Most chunks a stream can have fed and not yet taken.
pub const MAX_WINDOW: usize = 64;
/// The window of streams opened without one.
pub const DEFAULT_WINDOW: usize = 32;
/// Largest chunk: fits one of a queue's large blocks (a heap block when those are taken).
pub const MAX_CHUNK: usize = 64 * 1024;

/// How a chunk's IV follows from the previous chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chaining {
    /// The last block of the previous output: known when the previous chunk completes.
    CbcEncrypt,
    /// The last block of the previous input: known at submit time.
    CbcDecrypt,
    /// The counter advanced by the previous chunk's whole blocks: known at submit time.
    Ctr,
}

impl Chaining {
    /// The chaining of `cipher` in `direction`; ECB and XTS do not chain.
    pub fn of(cipher: Cipher, direction: Direction) -> Result<Chaining, Error> {
        match (cipher, direction) {
            (Cipher::AesCbc, Direction::Encrypt) => Ok(Chaining::CbcEncrypt),
            (Cipher::AesCbc, Direction::Decrypt) => Ok(Chaining::CbcDecrypt),
            (Cipher::AesCtr, _) => Ok(Chaining::Ctr),
            (Cipher::AesEcb, _) => Err(Error::StreamNotSupported {
                mode: "ecb(aes)",
                why: "it has no IV to chain",
            }),
            (Cipher::AesXts, _) => Err(Error::StreamNotSupported {
                mode: "xts(aes)",
                why: "each request is its own data unit (sector)",
            }),
        }
    }

    /// Whether a chunk's IV is known before the previous chunk completes.
    pub fn known_at_submit(self) -> bool {
        self != Chaining::CbcEncrypt
    }
}

/// `counter + blocks` over all 128 bits, big endian (as CTR mode counts), wrapping at 2^128.
pub fn ctr_add(counter: [u8; BLOCK], blocks: u64) -> [u8; BLOCK] {
    u128::from_be_bytes(counter)
        .wrapping_add(u128::from(blocks))
        .to_be_bytes()
}

fn last_block(data: &[u8]) -> Option<[u8; BLOCK]> {
    data.len()
        .checked_sub(BLOCK)
        .and_then(|start| data[start..].try_into().ok())
}

/// The IV state of a stream: what the next chunk starts from, and the checks on chunk lengths.
#[derive(Clone, Copy, Debug)]
pub struct IvChain {
    chaining: Chaining,
    next: [u8; BLOCK],
    chunks: u64,
    /// A CTR chunk that was not whole blocks: (its number, its length).
    partial: Option<(u64, usize)>,
}

impl IvChain {
    pub fn new(chaining: Chaining, iv: &[u8]) -> Result<IvChain, Error> {
        let next = iv.try_into().map_err(|_| Error::InvalidIvLength {
            got: iv.len(),
            expected: BLOCK,
        })?;
        Ok(IvChain {
            chaining,
            next,
            chunks: 0,
            partial: None,
        })
    }

    pub fn chaining(&self) -> Chaining {
        self.chaining
    }

    /// The IV the next chunk starts with (for CBC encryption: as far as outputs are known).
    pub fn next_iv(&self) -> [u8; BLOCK] {
        self.next
    }

    /// Checks the next chunk's `input` and advances past it; returns the IV the chunk uses (for
    /// CBC encryption, the one known now: the caller must not post it before the previous
    /// chunk's output was given to [`after_output`](Self::after_output)).
    pub fn after_input(&mut self, input: &[u8]) -> Result<[u8; BLOCK], Error> {
        if let Some((chunk, len)) = self.partial {
            return Err(Error::PartialBlockNotLast { chunk, len });
        }
        if input.is_empty() {
            return Err(Error::EmptyRequest);
        }
        let whole = input.len().is_multiple_of(BLOCK);
        if !whole && self.chaining != Chaining::Ctr {
            return Err(Error::InvalidDataLength {
                got: input.len(),
                block: BLOCK,
            });
        }
        let iv = self.next;
        match self.chaining {
            Chaining::CbcEncrypt => {}
            Chaining::CbcDecrypt => self.next = last_block(input).unwrap_or(self.next),
            Chaining::Ctr => {
                self.next = ctr_add(self.next, (input.len() / BLOCK) as u64);
                if !whole {
                    self.partial = Some((self.chunks, input.len()));
                }
            }
        }
        self.chunks += 1;
        Ok(iv)
    }

    /// A chunk's output, in order: for CBC encryption its last block is the next IV.
    pub fn after_output(&mut self, output: &[u8]) {
        if self.chaining == Chaining::CbcEncrypt
            && let Some(block) = last_block(output)
        {
            self.next = block;
        }
    }
}

/// Averages over a stream's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Chunks whose output was taken.
    pub chunks: u64,
    /// Sum over time of the stream's chunks in the ring (ns x chunks): divided by a duration,
    /// the average number in flight.
    pub in_ring_ns: u64,
}

/// A finished chunk: its checked output or why it failed.
type ChunkResult<H> = Result<CipherOutput<H>, Error>;

/// A chunk built ahead, waiting for its IV (CBC encryption).
struct Ready<H: Hal> {
    seq: u64,
    builder: RequestBuilder<H>,
    handler: Arc<ChunkHandler<H>>,
}

struct State<H: Hal> {
    chain: IvChain,
    /// Finished chunks by `seq % window`.
    done: Box<[Option<ChunkResult<H>>]>,
    /// The chunk number each window position holds.
    seq_of: Box<[u64]>,
    /// The length of the chunk each window position holds (its output is cut to it: a padded
    /// CTR chunk).
    len_of: Box<[usize]>,
    ready: heapless::Deque<Ready<H>, MAX_WINDOW>,
    /// CBC encryption, pipelined: a chunk of this stream is in the ring.
    enc_posted: bool,
    failed_at: Option<u64>,
    in_ring: u64,
    last_change_ns: u64,
    in_ring_ns: u64,
}

impl<H: Hal + 'static> State<H> {
    /// Adds the time since the last change to the in-ring integral.
    fn settle(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.last_change_ns);
        self.in_ring_ns = self
            .in_ring_ns
            .saturating_add(elapsed.saturating_mul(self.in_ring));
        self.last_change_ns = now.max(self.last_change_ns);
    }

    /// A chunk enters or leaves the ring at `now`.
    fn ring_change(&mut self, now: u64, entering: bool) {
        self.settle(now);
        if entering {
            self.in_ring += 1;
        } else {
            self.in_ring = self.in_ring.saturating_sub(1);
        }
    }

    fn fail(&mut self, seq: u64) {
        self.failed_at = Some(self.failed_at.map_or(seq, |f| f.min(seq)));
    }
}

struct Shared<H: Hal> {
    state: IrqSpinLock<State<H>>,
    /// The stream's task waits here for outputs.
    wake: WaitQueue,
    chaining: Chaining,
    mode: ChainMode,
    window: usize,
}

impl<H: Hal + 'static> Shared<H> {
    /// Writes the IV into a chunk built ahead and posts it (task or handler context). On
    /// failure the chunk's window position gets the error and the stream is broken.
    fn post(&self, ready: Ready<H>, iv: [u8; BLOCK]) -> Result<(), Error> {
        let Ready {
            seq,
            mut builder,
            handler,
        } = ready;
        let index = handler.index;
        let result = match builder.patch(CIPHER_IV_OFFSET, &iv) {
            Ok(_) => builder.submit_with(handler),
            Err(e) => Err(e), // the builder is dropped in the caller's context: a slot, no spill
        };
        if let Err(e) = result {
            let now = platform::get().now_ns();
            let mut st = self.state.lock();
            st.ring_change(now, false);
            st.fail(seq);
            st.enc_posted = false;
            st.done[index] = Some(Err(e));
            return Err(e);
        }
        Ok(())
    }
}

/// The completion handler of one window position.
struct ChunkHandler<H: Hal> {
    index: usize,
    shared: Arc<Shared<H>>,
}

impl<H: Hal + 'static> OnComplete<H> for ChunkHandler<H> {
    fn on_complete(&self, finished: Finished<H>) {
        let request = Request::from(finished);
        let shared = &self.shared;
        let now = platform::get().now_ns();
        let result = CipherOutput::new(request);
        let mut next = None;
        {
            let mut st = shared.state.lock();
            st.ring_change(now, false);
            let seq = st.seq_of[self.index];
            match &result {
                Ok(output) => st.chain.after_output(output),
                Err(_) => st.fail(seq),
            }
            if shared.chaining == Chaining::CbcEncrypt && shared.mode == ChainMode::Pipelined {
                st.enc_posted = false;
                if st.failed_at.is_none()
                    && let Some(ready) = st.ready.pop_front()
                {
                    st.enc_posted = true;
                    st.ring_change(now, true);
                    next = Some((ready, st.chain.next_iv()));
                }
            }
            st.done[self.index] = Some(result);
        }
        if let Some((ready, iv)) = next {
            // An error is recorded in the chunk's window position.
            let _ = shared.post(ready, iv);
        }
        shared.wake.wake_all();
    }
}

/// A chained stream on one session. See the module documentation.
pub struct Stream<'a, H: Hal + 'static> {
    device: &'a CryptoDevice<H>,
    queue: &'a CryptoQueue<H>,
    health: Arc<DeviceHealth<H>>,
    session: CipherSession,
    shared: Arc<Shared<H>>,
    handlers: Vec<Arc<ChunkHandler<H>>>,
    fed: u64,
    taken: u64,
}

impl<'a, H: Hal + 'static> Stream<'a, H> {
    /// Opens a stream of `session` on `queue`, starting from `iv`, keeping at most `window`
    /// chunks fed and not taken (1..=64). Every chunk is bound to the session's generation:
    /// after a reset it fails with `SessionLost` instead of reaching a session of the new device.
    pub fn open(
        device: &'a CryptoDevice<H>,
        queue: &'a CryptoQueue<H>,
        session: &CipherSession,
        iv: &[u8],
        mode: ChainMode,
        window: usize,
    ) -> Result<Self, Error> {
        let (cipher, direction) = (session.cipher, session.direction);
        let chaining = Chaining::of(cipher, direction)?;
        let chain = IvChain::new(chaining, iv)?;
        device.check_cipher(cipher)?;
        let window = window.clamp(1, MAX_WINDOW);
        let shared = Arc::new(Shared {
            state: IrqSpinLock::new(
                "stream",
                State {
                    chain,
                    done: (0..window).map(|_| None).collect(),
                    seq_of: (0..window as u64).collect(),
                    len_of: (0..window).map(|_| 0).collect(),
                    ready: heapless::Deque::new(),
                    enc_posted: false,
                    failed_at: None,
                    in_ring: 0,
                    last_change_ns: platform::get().now_ns(),
                    in_ring_ns: 0,
                },
            ),
            wake: WaitQueue::new(),
            chaining,
            mode,
            window,
        });
        let handlers = (0..window)
            .map(|index| {
                Arc::new(ChunkHandler {
                    index,
                    shared: shared.clone(),
                })
            })
            .collect();
        Ok(Stream {
            device,
            queue,
            health: device.health().clone(),
            session: *session,
            shared,
            handlers,
            fed: 0,
            taken: 0,
        })
    }

    pub fn mode(&self) -> ChainMode {
        self.shared.mode
    }

    pub fn chaining(&self) -> Chaining {
        self.shared.chaining
    }

    pub fn window(&self) -> usize {
        self.shared.window
    }

    /// Chunks fed and not yet taken.
    pub fn pending(&self) -> usize {
        (self.fed - self.taken) as usize
    }

    /// The IV the next chunk would start from (for CBC encryption, once the outputs so far are
    /// known): what continues this stream in a new one.
    pub fn next_iv(&self) -> [u8; BLOCK] {
        self.shared.state.lock().chain.next_iv()
    }

    pub fn stats(&self) -> StreamStats {
        let now = platform::get().now_ns();
        let mut st = self.shared.state.lock();
        st.settle(now);
        StreamStats {
            chunks: self.taken,
            in_ring_ns: st.in_ring_ns,
        }
    }

    fn broken(&self) -> Option<Error> {
        self.shared
            .state
            .lock()
            .failed_at
            .map(|chunk| Error::StreamBroken { chunk })
    }

    fn deadline(&self) -> u64 {
        platform::get()
            .now_ns()
            .saturating_add(self.health.timeout_ns())
    }

    /// Feeds the next chunk: checks it, derives its IV, builds its request and posts it (or, for
    /// CBC encryption while an earlier chunk is in the ring, queues it to be posted by that
    /// chunk's completion). In `Serial` mode it first waits for the previous chunk to finish.
    /// A chunk refused here breaks the stream (its error is returned, later feeds get
    /// [`Error::StreamBroken`]).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Error> {
        if self.pending() >= self.shared.window {
            return Err(Error::StreamWindowFull {
                window: self.shared.window,
            });
        }
        if let Some(e) = self.broken() {
            return Err(e);
        }
        let seq = self.fed;
        let result = self.feed_inner(seq, chunk);
        if let Err(e) = result
            && !matches!(e, Error::StreamBroken { .. })
        {
            self.shared.state.lock().fail(seq);
        }
        result
    }

    fn feed_inner(&mut self, seq: u64, chunk: &[u8]) -> Result<(), Error> {
        if chunk.len() > MAX_CHUNK {
            return Err(Error::RequestTooLarge {
                got: chunk.len() as u64,
                max: MAX_CHUNK as u64,
            });
        }
        let shared = self.shared.clone();
        if shared.mode == ChainMode::Serial {
            // AF_ALG's mutex: nothing of this chunk is done before the previous one finished.
            shared
                .wake
                .wait_until_deadline(
                    || (shared.state.lock().in_ring == 0).then_some(()),
                    self.deadline(),
                )
                .map_err(|_| self.health.timed_out())?;
        }
        let iv = shared.state.lock().chain.after_input(chunk)?;
        // Its output is cut to `chunk.len()` when taken.
        let sent = self.session.cipher.as_sent(chunk);
        let builder = self
            .device
            .build_cipher_request(self.queue, &self.session, &iv, &sent)?;
        let index = (seq % shared.window as u64) as usize;
        let handler = self.handlers[index].clone();
        let now = platform::get().now_ns();
        let ready = Ready {
            seq,
            builder,
            handler,
        };
        let mut st = shared.state.lock();
        if let Some(chunk) = st.failed_at {
            drop(st);
            drop(ready);
            return Err(Error::StreamBroken { chunk });
        }
        st.seq_of[index] = seq;
        st.len_of[index] = chunk.len();
        st.done[index] = None;
        self.fed += 1;
        if shared.chaining == Chaining::CbcEncrypt && shared.mode == ChainMode::Pipelined {
            if st.enc_posted || !st.ready.is_empty() {
                // Posted by the completion of the chunk before it.
                if let Err(ready) = st.ready.push_back(ready) {
                    // Cannot happen: the window (<= MAX_WINDOW) bounds the ready queue.
                    drop(st);
                    drop(ready);
                    self.fed -= 1;
                    return Err(Error::StreamWindowFull { window: MAX_WINDOW });
                }
                return Ok(());
            }
            st.enc_posted = true;
            st.ring_change(now, true);
            let iv = st.chain.next_iv();
            drop(st);
            return shared.post(ready, iv);
        }
        st.ring_change(now, true);
        drop(st);
        // The IV was written when the request was built.
        let Ready {
            builder, handler, ..
        } = ready;
        if let Err(e) = builder.submit_with(handler) {
            let mut st = shared.state.lock();
            st.ring_change(platform::get().now_ns(), false);
            st.fail(seq);
            st.done[index] = Some(Err(e));
            return Err(e);
        }
        Ok(())
    }

    /// Waits for the oldest chunk not yet taken and returns its output (`None` when every chunk
    /// fed was taken). After a failed chunk every later one gives [`Error::StreamBroken`].
    pub fn next_output(&mut self) -> Option<Result<CipherOutput<H>, Error>> {
        if self.taken == self.fed {
            return None;
        }
        let seq = self.taken;
        let index = (seq % self.shared.window as u64) as usize;
        let shared = self.shared.clone();
        let waited = shared.wake.wait_until_deadline(
            || {
                let mut st = shared.state.lock();
                if let Some(result) = st.done[index].take() {
                    let len = st.len_of[index];
                    return Some((Some(result.map(|output| output.cut(len))), None));
                }
                if st.failed_at.is_some() && st.ready.front().is_some_and(|r| r.seq == seq) {
                    // Built ahead behind a failed chunk: never posted.
                    return Some((None, st.ready.pop_front()));
                }
                None
            },
            self.deadline(),
        );
        self.taken += 1;
        let result = match waited {
            Ok((Some(result), _)) => result,
            Ok((None, unposted)) => {
                drop(unposted);
                Err(Error::StreamBroken {
                    chunk: self.broken_at().unwrap_or(seq),
                })
            }
            Err(_) => {
                self.shared.state.lock().fail(seq);
                Err(self.health.timed_out())
            }
        };
        Some(match (result, self.broken_at()) {
            (Ok(_), Some(chunk)) if chunk < seq => Err(Error::StreamBroken { chunk }),
            (Err(e), _) => Err(e),
            (ok, _) => ok,
        })
    }

    fn broken_at(&self) -> Option<u64> {
        self.shared.state.lock().failed_at
    }

    /// Feeds every chunk of `chunks` keeping the window full, and gives each output to `sink` in
    /// order. Stops at the first error.
    pub fn process<'c>(
        &mut self,
        chunks: impl IntoIterator<Item = &'c [u8]>,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        for chunk in chunks {
            if self.pending() >= self.shared.window
                && let Some(output) = self.next_output()
            {
                sink(&output?);
            }
            self.feed(chunk)?;
        }
        while let Some(output) = self.next_output() {
            sink(&output?);
        }
        Ok(())
    }

    /// Whether chunks are still in the ring or a handler reference is held outside the stream.
    fn busy(&self) -> bool {
        self.shared.state.lock().in_ring > 0
            || self.handlers.iter().any(|h| Arc::strong_count(h) > 1)
    }
}

impl<H: Hal + 'static> Drop for Stream<'_, H> {
    fn drop(&mut self) {
        // Stops the handlers from posting what was built ahead; drops it here, one at a time
        // (nothing is dropped under the stream lock).
        let fed = self.fed;
        self.shared.state.lock().fail(fed);
        loop {
            let unposted = self.shared.state.lock().ready.pop_front();
            match unposted {
                Some(r) => drop(r),
                None => break,
            }
        }
        let deadline = self.deadline();
        while self.busy() {
            let now = platform::get().now_ns();
            if now >= deadline {
                // The device kept a chunk: leak the handlers rather than free them in interrupt
                // context later.
                log::warn!(
                    "a stream was dropped with chunks the device never returned; its handlers are leaked"
                );
                for h in self.handlers.drain(..) {
                    core::mem::forget(h);
                }
                return;
            }
            let _ = self
                .shared
                .wake
                .wait_until_deadline(|| None::<()>, now.saturating_add(1_000_000).min(deadline));
        }
    }
}

#[cfg(test)]
mod tests;
