//! Posting: a built request marked in flight, its descriptors added under the queue lock (one
//! at a time or a batch), and the kick: prepared under the lock, the doorbell rung after it
//! (one submitter rings at a time; requests added meanwhile ride on its doorbell).

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use virtio_drivers::Hal;

use super::{
    KickMode, MAX_RINGS_FOR_OTHERS, OnComplete, Posted, QueueCore, QueueGuard, Seal, SpaceWait,
};
use crate::error::Error;

impl<H: Hal> QueueCore<H> {
    /// Marks a built request (slot in `Building`) in flight and returns what the ring needs of
    /// it (with its handler), and the device generation it is bound to. In flight before the
    /// add: the device may answer before `add` returns.
    fn prepare(
        &self,
        slot: u16,
        seal: Seal,
        handler: Option<Arc<dyn OnComplete<H>>>,
    ) -> (Posted<H>, Option<u64>) {
        let regions = self.storage().post(
            slot,
            seal.min_used,
            seal.reply_len,
            seal.generation,
            self.resets.load(Ordering::Acquire),
        );
        let posted = Posted {
            slot,
            regions,
            handler,
        };
        (posted, seal.generation)
    }

    /// Undoes `prepare` for a request that was not added: back in `Building`, owned by the
    /// caller; its handler is dropped after the slot lock.
    fn unprepare(&self, posted: Posted<H>) {
        self.storage().unpost(posted.slot);
        drop(posted);
    }

    /// Adds a prepared request unless the queue is closed or the request's generation is gone.
    /// Checked under the lock: `fail_all`/`close` set `broken` before draining under the same
    /// lock, so a request is either drained by them or refused here, never stranded.
    fn admit(
        &self,
        guard: &mut QueueGuard<'_, H>,
        posted: &mut Option<Posted<H>>,
        generation: Option<u64>,
    ) -> Result<u16, Error> {
        let stale = match (generation, self.lifecycle.get()) {
            (Some(g), Some(l)) => g != l.generation(),
            _ => false,
        };
        if self.is_broken() {
            Err(self.closed_error())
        } else if stale {
            Err(Error::SessionLost)
        } else {
            let token = guard.add(posted)?;
            self.counters.submitted.fetch_add(1, Ordering::Relaxed);
            Ok(token)
        }
    }

    /// Ends a lock hold after requests were added (`unkicked` of them since the last
    /// kick-prepare): asks whether the device wants a doorbell and rings it after dropping the
    /// lock (or, for the `Locked` baseline, before).
    ///
    /// Unlocked, one submitter rings at a time: one that finds a doorbell pending only adds
    /// (its requests ride on it), and the ringer, once its doorbell returns, looks at the ring
    /// again under the lock and rings once more if anything was added meanwhile and the device
    /// wants to hear. A doorbell is a trip into QEMU that waits for its global lock, so the
    /// requests of every CPU that add during one share the next.
    fn kick(&self, mut guard: QueueGuard<'_, H>, unkicked: usize) {
        if unkicked == 0 {
            return;
        }
        if self.kick_mode() == KickMode::Locked {
            if guard.locked.ring.kick_prepare() {
                self.ring_doorbell();
            }
            return;
        }
        if guard.locked.doorbell_pending {
            self.counters.rode_doorbell.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !guard.locked.ring.kick_prepare() {
            return;
        }
        guard.locked.doorbell_pending = true;
        drop(guard);
        // Bounded: a ringer (perhaps in interrupt context) is not kept ringing for others for
        // ever. Its last doorbell covers what was added until it cleared the flag; whoever adds
        // after that rings for itself.
        for _ in 0..MAX_RINGS_FOR_OTHERS {
            self.ring_doorbell();
            let mut guard = QueueGuard {
                locked: self.locked.lock(),
            };
            let more = guard.locked.ring.unkicked();
            if !more || !guard.locked.ring.kick_prepare() {
                guard.locked.doorbell_pending = false;
                return;
            }
        }
        self.locked.lock().doorbell_pending = false;
        self.ring_doorbell();
    }

    /// Posts a built request (slot in `Building`): marks it in flight, adds its descriptors under
    /// the queue lock, rings the doorbell after it. While the ring is full it waits (`wait`) for
    /// space, at most the queue's timeout (`Timeout`), and gives up when the queue is closed
    /// (`DeviceReset` while the device is being reset). On error the slot is back in
    /// `Building`, owned by the caller.
    pub(crate) fn post(
        self: &Arc<Self>,
        slot: u16,
        seal: Seal,
        handler: Option<Arc<dyn OnComplete<H>>>,
        wait: SpaceWait,
    ) -> Result<(), Error> {
        let (posted, generation) = self.prepare(slot, seal, handler);
        let descriptors = posted.regions.descriptors();
        let mut posted = Some(posted);
        let platform = crate::sync::platform::get();
        let deadline = platform.now_ns().saturating_add(self.timeout_ns());
        let error = loop {
            let mut guard = QueueGuard {
                locked: self.locked.lock(),
            };
            match self.admit(&mut guard, &mut posted, generation) {
                Ok(_token) => {
                    self.kick(guard, 1);
                    return Ok(());
                }
                Err(Error::QueueFull) if wait == SpaceWait::Never => {
                    drop(guard);
                    self.counters.full_waits.fetch_add(1, Ordering::Relaxed);
                    break Error::QueueFull;
                }
                Err(Error::QueueFull) => {
                    drop(guard);
                    self.counters.full_waits.fetch_add(1, Ordering::Relaxed);
                    let space = || {
                        (self.is_broken()
                            || self.locked.lock().ring.free_descriptors() >= descriptors)
                            .then_some(())
                    };
                    let waited = match wait {
                        SpaceWait::Sleep => self.space.wait_until_deadline(space, deadline).is_ok(),
                        SpaceWait::Never => false,
                        SpaceWait::Poll => loop {
                            self.drain();
                            if space().is_some() {
                                break true;
                            }
                            if platform.now_ns() >= deadline {
                                break false;
                            }
                            core::hint::spin_loop();
                        },
                    };
                    if !waited {
                        break Error::Timeout;
                    }
                }
                Err(e) => {
                    drop(guard);
                    break e;
                }
            }
        };
        if let Some(posted) = posted {
            self.unprepare(posted);
        }
        Err(error)
    }

    /// Posts built requests (slots in `Building`) in order, completion collected by waiting:
    /// added under as few lock holds as the ring allows, with one kick-prepare (and at most one
    /// doorbell) at the end instead of one per request. A full ring rings for what was added,
    /// then waits for space like [`post`](Self::post). Returns how many were posted (a prefix
    /// of `slots`) and the error that stopped the rest, whose slots are back in `Building`.
    pub(crate) fn post_batch(
        self: &Arc<Self>,
        slots: &[(u16, Seal)],
    ) -> (usize, Result<(), Error>) {
        const CHUNK: usize = 32;
        let mut done = 0;
        let mut unkicked = 0;
        while done < slots.len() {
            let chunk = &slots[done..(done + CHUNK).min(slots.len())];
            // Worked on in place (a request added leaves `None` behind): moving the chunk
            // would copy every entry again.
            let mut prepared: heapless::Vec<(Option<Posted<H>>, Option<u64>), CHUNK> =
                heapless::Vec::new();
            for &(slot, seal) in chunk {
                let (posted, generation) = self.prepare(slot, seal, None);
                let _ = prepared.push((Some(posted), generation));
            }
            let mut guard = QueueGuard {
                locked: self.locked.lock(),
            };
            let mut added = 0;
            let mut error = None;
            for (posted, generation) in prepared.iter_mut() {
                match self.admit(&mut guard, posted, *generation) {
                    Ok(_token) => added += 1,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            unkicked += added;
            if done + added == slots.len() || error.is_some() {
                self.kick(guard, unkicked);
                unkicked = 0;
            } else {
                // The doorbell waits for the last chunk (the device sees these then).
                drop(guard);
            }
            // The refused request and those after it.
            for (posted, _) in prepared.iter_mut() {
                if let Some(posted) = posted.take() {
                    self.unprepare(posted);
                }
            }
            done += added;
            match error {
                None => {}
                // Wait for space with the next request, then go on in batches.
                Some(Error::QueueFull) => {
                    self.counters.full_waits.fetch_add(1, Ordering::Relaxed);
                    match self.post(slots[done].0, slots[done].1, None, SpaceWait::Sleep) {
                        Ok(()) => done += 1,
                        Err(e) => return (done, Err(e)),
                    }
                }
                Some(e) => return (done, Err(e)),
            }
        }
        (done, Ok(()))
    }

    fn ring_doorbell(&self) {
        self.counters.notifies.fetch_add(1, Ordering::Relaxed);
        self.doorbell.notify();
    }
}
