//! Interrupt lines with owners.
//!
//! A vector (32..=255) is taken by exactly one [`IrqLine`]: from the device range with
//! [`IrqLine::alloc`], or a fixed one from [`vectors`] with [`IrqLine::claim`]. A second claim of
//! a taken vector is refused ([`IrqError::Occupied`]); dropping the line releases its vector and
//! removes its handlers. Handlers carry their own context (closures), so no driver keeps a table
//! from vector to object, and one line may have several handlers (a shared INTx line: every
//! device on it looks at its own status). The local APIC EOI is sent here, once, after every
//! handler of the line has run — handlers never send it.
//!
//! The layers above register what this layer calls: [`set_entry_hooks`] (the scheduler's
//! interrupt enter/exit) and handlers on the lines they own. Nothing here names them.
//!
//! Invariants:
//! - A handler list is replaced, never edited in place: [`dispatch`] counts itself in `active`
//!   before it loads the list, and a writer swaps the list, then waits until `active` is 0 before
//!   freeing the old one. So a handler is never freed while it runs, and dispatch never takes a
//!   lock or allocates.
//! - Handlers run with interrupts off and must not allocate, block, or change the handlers of
//!   their own line.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use vcrypt_drivers::sync::IrqSpinLock;

use super::apic;

/// The kernel's fixed vectors, all in one place. Device vectors come from [`DEVICE_VECTORS`].
pub mod vectors {
    /// The local APIC timer (owned by `arch`, which counts ticks; the scheduler adds its handler).
    pub const TIMER: u8 = 0x20;
    /// The reschedule IPI (owned by the scheduler).
    pub const RESCHEDULE: u8 = 0xf0;
    /// The local APIC's spurious vector: no handler, and no EOI.
    pub const SPURIOUS: u8 = 0xff;
}

/// Vectors [`IrqLine::alloc`] hands out (devices, tests).
pub const DEVICE_VECTORS: core::ops::RangeInclusive<u8> = 0x30..=0xdf;
/// The first vector that is not a CPU exception.
pub const FIRST_VECTOR: u8 = 32;

/// Why a line could not be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqError {
    /// The vector already has an owner.
    Occupied { vector: u8 },
    /// The vector is a CPU exception (below 32).
    Exception { vector: u8 },
    /// Every device vector is taken.
    Exhausted,
}

impl core::fmt::Display for IrqError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IrqError::Occupied { vector } => write!(f, "vector {vector:#x} already has an owner"),
            IrqError::Exception { vector } => write!(f, "vector {vector} is a CPU exception"),
            IrqError::Exhausted => write!(
                f,
                "all {} device interrupt vectors are taken",
                DEVICE_VECTORS.len()
            ),
        }
    }
}

type Handler = Arc<dyn Fn() + Send + Sync>;

/// A line's handlers with the ids they were registered under.
type HandlerList = Vec<(u64, Handler)>;

struct Slot {
    owned: AtomicBool,
    handlers: AtomicPtr<HandlerList>,
    /// Dispatches of this vector (on any CPU) that may be reading `handlers`.
    active: AtomicUsize,
    taken: AtomicU64,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            owned: AtomicBool::new(false),
            handlers: AtomicPtr::new(core::ptr::null_mut()),
            active: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
        }
    }
}

static SLOTS: [Slot; 256] = [const { Slot::new() }; 256];
/// Serialises claims and handler-list changes (never taken by `dispatch`).
static REGISTRY: IrqSpinLock<()> = IrqSpinLock::new("irq-registry", ());
static NEXT_HANDLER_ID: AtomicU64 = AtomicU64::new(1);
/// Interrupts that arrived on a vector without handlers.
static UNEXPECTED: AtomicU64 = AtomicU64::new(0);

/// Called around every interrupt: `enter` first, `exit` last (after the EOI).
#[derive(Clone, Copy)]
pub struct EntryHooks {
    pub enter: fn(),
    pub exit: fn(),
}

static ENTRY_HOOKS: spin::Once<EntryHooks> = spin::Once::new();

/// Installs the hooks run around every interrupt (the scheduler's idle accounting and
/// preemption). Once only: a second call is refused.
pub fn set_entry_hooks(hooks: EntryHooks) -> Result<(), EntryHooks> {
    let mut installed = true;
    ENTRY_HOOKS.call_once(|| {
        installed = false;
        hooks
    });
    if installed { Err(hooks) } else { Ok(()) }
}

/// The owner of one interrupt vector.
pub struct IrqLine {
    vector: u8,
}

/// Names one handler of a line, to remove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerId(u64);

impl IrqLine {
    /// Takes the lowest free vector of [`DEVICE_VECTORS`].
    pub fn alloc() -> Result<IrqLine, IrqError> {
        let _registry = REGISTRY.lock();
        for vector in DEVICE_VECTORS {
            if !SLOTS[vector as usize].owned.load(Ordering::Acquire) {
                return Ok(Self::take(vector));
            }
        }
        Err(IrqError::Exhausted)
    }

    /// Takes `vector` (one of [`vectors`], or any free one); refused if it has an owner.
    pub fn claim(vector: u8) -> Result<IrqLine, IrqError> {
        if vector < FIRST_VECTOR {
            return Err(IrqError::Exception { vector });
        }
        let _registry = REGISTRY.lock();
        if SLOTS[vector as usize].owned.load(Ordering::Acquire) {
            return Err(IrqError::Occupied { vector });
        }
        Ok(Self::take(vector))
    }

    fn take(vector: u8) -> IrqLine {
        let slot = &SLOTS[vector as usize];
        slot.owned.store(true, Ordering::Release);
        slot.taken.store(0, Ordering::Relaxed);
        IrqLine { vector }
    }

    pub fn vector(&self) -> u8 {
        self.vector
    }

    /// Interrupts taken on this line since it was claimed.
    pub fn interrupts_taken(&self) -> u64 {
        SLOTS[self.vector as usize].taken.load(Ordering::Relaxed)
    }

    /// Adds `handler`, run on every interrupt of this line (on whichever CPU takes it), after
    /// the handlers added before it. Allocates: call it from task context.
    pub fn on_active(&self, handler: impl Fn() + Send + Sync + 'static) -> HandlerId {
        let id = NEXT_HANDLER_ID.fetch_add(1, Ordering::Relaxed);
        let handler: Handler = Arc::new(handler);
        self.replace_handlers(|list| list.push((id, handler.clone())));
        HandlerId(id)
    }

    /// Removes one handler; it is not running anywhere once this returns.
    pub fn remove(&self, id: HandlerId) {
        self.replace_handlers(|list| list.retain(|(h, _)| *h != id.0));
    }

    /// Builds a new handler list from the current one and publishes it; frees the old list once
    /// no dispatch can be reading it.
    fn replace_handlers(&self, edit: impl FnOnce(&mut HandlerList)) {
        let slot = &SLOTS[self.vector as usize];
        let _registry = REGISTRY.lock();
        let current = slot.handlers.load(Ordering::SeqCst);
        // SAFETY: only this function (under REGISTRY) publishes lists, each a leaked Box; the
        // current one stays alive until it is replaced below.
        let mut list: HandlerList = unsafe { current.as_ref() }.cloned().unwrap_or_default();
        edit(&mut list);
        let new = if list.is_empty() {
            core::ptr::null_mut()
        } else {
            Box::into_raw(Box::new(list))
        };
        let old = slot.handlers.swap(new, Ordering::SeqCst);
        while slot.active.load(Ordering::SeqCst) != 0 {
            core::hint::spin_loop();
        }
        if !old.is_null() {
            // SAFETY: `old` came from Box::into_raw above (an earlier call), is no longer
            // published, and no dispatch is reading it (`active` was 0 after the swap).
            drop(unsafe { Box::from_raw(old) });
        }
    }
}

impl Drop for IrqLine {
    fn drop(&mut self) {
        self.replace_handlers(|list| list.clear());
        let _registry = REGISTRY.lock();
        SLOTS[self.vector as usize]
            .owned
            .store(false, Ordering::Release);
    }
}

/// Interrupts that arrived on a vector without a handler since boot.
pub fn unexpected_interrupts() -> u64 {
    UNEXPECTED.load(Ordering::Relaxed)
}

/// The instruction each CPU was executing when its current interrupt arrived.
static INTERRUPTED_RIP: [AtomicU64; super::percpu::MAX_CPUS] =
    [const { AtomicU64::new(0) }; super::percpu::MAX_CPUS];

/// Where the current interrupt interrupted this CPU (for handlers: the sampling profiler).
pub fn interrupted_rip() -> u64 {
    INTERRUPTED_RIP[super::percpu::cpu_index()].load(Ordering::Relaxed)
}

/// Runs the handlers of `vector` (interrupt context, interrupts off), then sends the EOI.
pub(super) fn dispatch(vector: u8, interrupted_rip: u64) {
    INTERRUPTED_RIP[super::percpu::cpu_index()].store(interrupted_rip, Ordering::Relaxed);
    let hooks = ENTRY_HOOKS.get().copied();
    if let Some(hooks) = hooks {
        (hooks.enter)();
    }
    if vector != vectors::SPURIOUS {
        super::trips::count(super::trips::Trip::Interrupt);
    }
    let slot = &SLOTS[vector as usize];
    slot.active.fetch_add(1, Ordering::SeqCst);
    let list = slot.handlers.load(Ordering::SeqCst);
    // SAFETY: a published list is freed only after `active` was seen 0 following its
    // replacement; we counted ourselves in `active` before loading it.
    match unsafe { list.as_ref() } {
        Some(list) => {
            slot.taken.fetch_add(1, Ordering::Relaxed);
            for (_, handler) in list {
                handler();
            }
        }
        None if vector != vectors::SPURIOUS => {
            UNEXPECTED.fetch_add(1, Ordering::Relaxed);
            log::warn!("unexpected interrupt on vector {vector}");
        }
        None => {}
    }
    slot.active.fetch_sub(1, Ordering::SeqCst);
    if vector != vectors::SPURIOUS {
        apic::eoi();
    }
    if let Some(hooks) = hooks {
        (hooks.exit)();
    }
}
