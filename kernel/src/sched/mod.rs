//! The scheduler: one run queue per CPU, tasks pinned to the CPU they were spawned on,
//! round-robin with a 10 ms time slice enforced by the timer tick, and an idle task per CPU that
//! halts and accounts its halted time (busy % per CPU).
//!
//! Who may call what:
//! - Task context: `spawn`, `yield_now`, `sleep_ns`, `block` (through wait queues). Blocking with
//!   interrupts disabled or a spinlock held is a bug and panics.
//! - Interrupt context: `wake` only (it never allocates: run queues have fixed capacity).
//! - A wake for a task of another CPU that is halted sends that CPU an IPI, so no wake-up waits
//!   for the next tick.

pub mod busy;
mod switch;
pub mod task;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use heapless::Deque;
use vcrypt_drivers::sync::{Completion, IrqSpinLock, SpinLock};

use crate::arch::irq::{self, IrqLine};
use crate::arch::{self, apic, percpu, tsc};
use crate::mm::paging::GuardedStack;
pub use task::{Task, TaskState};

/// Runnable tasks one CPU can hold (and so the most tasks it may own).
pub const MAX_TASKS_PER_CPU: usize = 1024;
/// Pages of stack per task (plus one guard page).
const STACK_PAGES: usize = 16;
/// Ticks a task may run before a runnable peer gets the CPU.
const SLICE_TICKS: u64 = 10;
/// Vector of the reschedule IPI (the scheduler owns its line).
const RESCHED_VECTOR: u8 = irq::vectors::RESCHEDULE;

struct Cpu {
    run_queue: IrqSpinLock<Deque<Arc<Task>, MAX_TASKS_PER_CPU>>,
    current: IrqSpinLock<Option<Arc<Task>>>,
    idle: IrqSpinLock<Option<Arc<Task>>>,
    /// An exited task whose stack we were still on; dropped after the next switch.
    reap: IrqSpinLock<Option<Arc<Task>>>,
    /// Tasks blocked with a deadline.
    sleepers: IrqSpinLock<heapless::Vec<Arc<Task>, MAX_TASKS_PER_CPU>>,
    tasks: AtomicUsize,
    preempt_count: AtomicUsize,
    need_resched: AtomicBool,
    online: AtomicBool,
    slice_start: AtomicU64,
    /// TSC when the idle task halted, 0 when not halted.
    halted_since: AtomicU64,
    /// A reschedule IPI was sent to this CPU and it has not taken an interrupt since: more
    /// wakes need none (the one on its way makes it look at its run queue).
    resched_ipi_pending: AtomicBool,
    /// Halts begun (the idle loop's `hlt`s).
    halts: AtomicU64,
    idle_ns: AtomicU64,
    /// Reschedule IPIs this CPU has taken.
    resched_ipis: AtomicU64,
    /// Wakes of this CPU's tasks that ran on another CPU (each may cost an IPI).
    remote_wakes: AtomicU64,
}

impl Cpu {
    const fn new() -> Cpu {
        Cpu {
            run_queue: IrqSpinLock::new("runqueue", Deque::new()),
            current: IrqSpinLock::new("current", None),
            idle: IrqSpinLock::new("idle", None),
            reap: IrqSpinLock::new("reap", None),
            sleepers: IrqSpinLock::new("sleepers", heapless::Vec::new()),
            tasks: AtomicUsize::new(0),
            preempt_count: AtomicUsize::new(0),
            need_resched: AtomicBool::new(false),
            online: AtomicBool::new(false),
            slice_start: AtomicU64::new(0),
            halted_since: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            resched_ipis: AtomicU64::new(0),
            resched_ipi_pending: AtomicBool::new(false),
            halts: AtomicU64::new(0),
            remote_wakes: AtomicU64::new(0),
        }
    }
}

static CPUS: [Cpu; percpu::MAX_CPUS] = [const { Cpu::new() }; percpu::MAX_CPUS];
static NEXT_TASK_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

fn this_cpu() -> &'static Cpu {
    &CPUS[percpu::cpu_index()]
}

/// Why a task could not be spawned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnError {
    NoSuchCpu(usize),
    TooManyTasks { cpu: usize },
    OutOfMemory,
}

fn new_task(
    name: &str,
    cpu: usize,
    stack: Option<GuardedStack>,
    entry: Option<Box<dyn FnOnce() + Send>>,
) -> Arc<Task> {
    Arc::new_cyclic(|me| Task {
        id: NEXT_TASK_ID.fetch_add(1, Ordering::Relaxed),
        name: String::from(name),
        cpu,
        state: core::sync::atomic::AtomicU8::new(TaskState::Runnable as u8),
        wake_pending: AtomicBool::new(false),
        saved_rsp: core::cell::UnsafeCell::new(0),
        stack,
        entry: SpinLock::new("task-entry", entry),
        me: me.clone(),
        deadline_ns: AtomicU64::new(0),
    })
}

/// Makes the code running on this CPU a task (`name`), creates the CPU's idle task and starts
/// scheduling here. Call once per CPU with interrupts disabled.
pub fn init_this_cpu(name: &str) {
    let index = percpu::cpu_index();
    let cpu = &CPUS[index];
    let boot = new_task(name, index, None, None);
    boot.set_state(TaskState::Running);
    *cpu.current.lock() = Some(boot);
    let stack = GuardedStack::new(4).expect("no memory for the idle task's stack");
    let idle = new_task("idle", index, Some(stack), Some(Box::new(|| idle_loop())));
    prepare_stack(&idle);
    *cpu.idle.lock() = Some(idle);
    if index == 0 {
        install_interrupt_work();
    }
    cpu.online.store(true, Ordering::SeqCst);
}

/// Makes this CPU's start-up code its idle task: for application processors, which have nothing
/// else to run.
pub fn become_idle() -> ! {
    let index = percpu::cpu_index();
    let cpu = &CPUS[index];
    arch::irq_save();
    let idle = new_task("idle", index, None, None);
    idle.set_state(TaskState::Running);
    *cpu.idle.lock() = Some(idle.clone());
    *cpu.current.lock() = Some(idle);
    cpu.online.store(true, Ordering::SeqCst);
    idle_loop()
}

fn prepare_stack(task: &Task) {
    let top = task.stack.as_ref().expect("a new task has a stack").top();
    // SAFETY: the task's freshly mapped stack is ours to write and nobody runs on it yet.
    unsafe { *task.saved_rsp.get() = switch::initial_stack(top) };
}

/// A spawned task's result, for `join`.
pub struct JoinHandle<T> {
    task: Arc<Task>,
    result: Arc<Completion<T>>,
}

impl<T> JoinHandle<T> {
    /// Sleeps until the task has returned, and gives its result.
    pub fn join(self) -> T {
        self.result.wait()
    }

    /// Like `join`, giving up after `timeout_ns` (the task keeps running).
    pub fn join_timeout(&self, timeout_ns: u64) -> Result<T, vcrypt_drivers::sync::TimedOut> {
        self.result.wait_timeout(timeout_ns)
    }

    pub fn task(&self) -> &Arc<Task> {
        &self.task
    }
}

/// Spawns a task running `f` on CPU `cpu`, or on the next CPU in turn when `None`.
pub fn spawn<T, F>(name: &str, cpu: Option<usize>, f: F) -> Result<JoinHandle<T>, SpawnError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let online = percpu::cpu_count();
    let cpu = cpu.unwrap_or_else(|| NEXT_CPU.fetch_add(1, Ordering::Relaxed) % online);
    if cpu >= online || !CPUS[cpu].online.load(Ordering::SeqCst) {
        return Err(SpawnError::NoSuchCpu(cpu));
    }
    if CPUS[cpu].tasks.fetch_add(1, Ordering::SeqCst) >= MAX_TASKS_PER_CPU - 1 {
        CPUS[cpu].tasks.fetch_sub(1, Ordering::SeqCst);
        return Err(SpawnError::TooManyTasks { cpu });
    }
    let stack = match GuardedStack::new(STACK_PAGES) {
        Ok(stack) => stack,
        Err(_) => {
            CPUS[cpu].tasks.fetch_sub(1, Ordering::SeqCst);
            return Err(SpawnError::OutOfMemory);
        }
    };
    let result = Arc::new(Completion::new());
    let result_for_task = result.clone();
    let entry: Box<dyn FnOnce() + Send> = Box::new(move || {
        let value = f();
        let _ = result_for_task.complete(value);
    });
    let task = new_task(name, cpu, Some(stack), Some(entry));
    prepare_stack(&task);
    enqueue(task.clone());
    Ok(JoinHandle { task, result })
}

/// Puts a runnable task on its CPU's queue and makes sure that CPU notices.
fn enqueue(task: Arc<Task>) {
    let target = task.cpu;
    let cpu = &CPUS[target];
    if cpu.run_queue.lock().push_back(task).is_err() {
        // Cannot happen: a CPU owns at most MAX_TASKS_PER_CPU - 1 tasks, each queued at most once.
        panic!("run queue of CPU {target} overflowed");
    }
    // Pairs with the idle loop's fence: the push above is seen, or halted_since is.
    core::sync::atomic::fence(Ordering::SeqCst);
    kick(target);
}

/// Makes CPU `target` look at its run queue soon: at once if it is idle.
fn kick(target: usize) {
    let cpu = &CPUS[target];
    if target == percpu::cpu_index() {
        if current_is_idle(cpu) {
            cpu.need_resched.store(true, Ordering::SeqCst);
        }
    } else if cpu.halted_since.load(Ordering::SeqCst) != 0
        && !cpu.resched_ipi_pending.swap(true, Ordering::SeqCst)
    {
        apic::send_ipi(percpu::apic_id_of(target), RESCHED_VECTOR);
    }
}

fn current_is_idle(cpu: &Cpu) -> bool {
    let current = cpu.current.lock();
    let idle = cpu.idle.lock();
    matches!((&*current, &*idle), (Some(c), Some(i)) if Arc::ptr_eq(c, i))
}

/// Wakes `task`: if it is blocked it becomes runnable; otherwise its next block returns at once.
/// Callable from interrupt context.
pub fn wake(task: &Arc<Task>) {
    task.wake_pending.store(true, Ordering::SeqCst);
    if task
        .state
        .compare_exchange(
            TaskState::Blocked as u8,
            TaskState::Runnable as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .is_ok()
    {
        if task.cpu != percpu::cpu_index() {
            CPUS[task.cpu].remote_wakes.fetch_add(1, Ordering::Relaxed);
        }
        enqueue(task.clone());
    }
}

/// The running task.
pub fn current() -> Arc<Task> {
    this_cpu()
        .current
        .lock()
        .clone()
        .expect("scheduler not started on this CPU")
}

/// Blocks the current task until `wake` or, with a deadline, until the TSC clock passes it. May
/// return spuriously.
pub fn block(deadline_ns: Option<u64>) {
    let cpu = this_cpu();
    assert!(
        arch::irqs_enabled(),
        "blocking with interrupts disabled (an IrqSpinLock held?)"
    );
    assert!(
        cpu.preempt_count.load(Ordering::SeqCst) == 0,
        "blocking while holding a spinlock"
    );
    let was = arch::irq_save();
    let task = current();
    if task.wake_pending.swap(false, Ordering::SeqCst) {
        arch::irq_restore(was);
        return;
    }
    task.set_state(TaskState::Blocked);
    // A waker that ran before we were Blocked saw Running and only left wake_pending. Leave
    // Blocked only by compare-exchange: if it fails, a waker has already queued us, and
    // `schedule` must take us off the queue.
    let unblock = |task: &Task| {
        task.state
            .compare_exchange(
                TaskState::Blocked as u8,
                TaskState::Running as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    };
    if task.wake_pending.swap(false, Ordering::SeqCst) && unblock(&task) {
        arch::irq_restore(was);
        return;
    }
    if let Some(deadline) = deadline_ns.filter(|_| task.state() == TaskState::Blocked) {
        if tsc::now_ns() >= deadline && unblock(&task) {
            arch::irq_restore(was);
            return;
        }
        task.deadline_ns.store(deadline, Ordering::SeqCst);
        if cpu.sleepers.lock().push(task.clone()).is_err() {
            panic!("sleeper list overflowed");
        }
    }
    schedule();
    if deadline_ns.is_some() {
        task.deadline_ns.store(0, Ordering::SeqCst);
        cpu.sleepers.lock().retain(|t| !Arc::ptr_eq(t, &task));
    }
    drop(task);
    arch::irq_restore(was);
}

/// Gives the CPU to the next runnable task, if any.
pub fn yield_now() {
    let was = arch::irq_save();
    schedule();
    arch::irq_restore(was);
}

/// Sleeps for at least `ns` nanoseconds.
pub fn sleep_ns(ns: u64) {
    let deadline = tsc::now_ns() + ns;
    while tsc::now_ns() < deadline {
        block(Some(deadline));
    }
}

/// Switches to the next runnable task. Interrupts must be disabled. Returns when the calling
/// task runs again (never, if it has exited).
fn schedule() {
    let cpu = this_cpu();
    let Some(prev) = cpu.current.lock().clone() else {
        return;
    };
    let idle = cpu.idle.lock().clone().expect("idle task");
    let prev_is_idle = Arc::ptr_eq(&prev, &idle);
    let next = {
        let mut queue = cpu.run_queue.lock();
        match queue.pop_front() {
            Some(next) => {
                if prev.state() == TaskState::Running && !prev_is_idle {
                    prev.set_state(TaskState::Runnable);
                    if queue.push_back(prev.clone()).is_err() {
                        panic!("run queue overflowed");
                    }
                }
                next
            }
            // Nothing else to run: keep running unless we are blocking or exiting.
            None if prev.state() == TaskState::Running => return,
            None => idle,
        }
    };
    cpu.slice_start
        .store(arch::this_cpu_ticks(), Ordering::Relaxed);
    if Arc::ptr_eq(&prev, &next) {
        prev.set_state(TaskState::Running);
        return;
    }
    next.set_state(TaskState::Running);
    if prev.state() == TaskState::Exited {
        *cpu.reap.lock() = Some(prev.clone());
    }
    let save = prev.saved_rsp.get();
    // SAFETY: `next` is not running anywhere (it was queued or is the idle task), so its saved
    // stack pointer is stable.
    let load = unsafe { *next.saved_rsp.get() };
    *cpu.current.lock() = Some(next);
    // Whoever keeps `prev` alive (a wait queue, the run queue, the reap slot, a joiner), it is not
    // this frame: an exited task never comes back to drop it.
    drop(prev);
    // SAFETY: interrupts are off; `save` points into a task that stays alive until this CPU
    // switched away (see above); `load` is the saved or prepared stack pointer of `next`.
    unsafe { switch::switch_stacks(save, load) };
    finish_switch();
}

/// Runs on the new task right after a switch.
fn finish_switch() {
    let reaped = this_cpu().reap.lock().take();
    drop(reaped);
}

/// Where every spawned task starts (from `switch::task_start`).
extern "C" fn task_entry() -> ! {
    finish_switch();
    arch::enable_irqs();
    let task = current();
    let entry = task.entry.lock().take();
    drop(task);
    if let Some(entry) = entry {
        entry();
    }
    exit_current()
}

fn exit_current() -> ! {
    arch::irq_save();
    let cpu = this_cpu();
    let task = current();
    task.set_state(TaskState::Exited);
    cpu.tasks.fetch_sub(1, Ordering::SeqCst);
    drop(task);
    schedule();
    unreachable!("an exited task was scheduled again");
}

fn idle_loop() -> ! {
    let cpu = this_cpu();
    loop {
        arch::irq_save();
        // Publish "halted" before looking at the run queue: a waker enqueues, then reads
        // halted_since (both SeqCst), so either we see its task here or it sees us halted and
        // sends an IPI, which ends the hlt below (sti; hlt has no window in between).
        cpu.halted_since.store(tsc::rdtsc(), Ordering::SeqCst);
        core::sync::atomic::fence(Ordering::SeqCst);
        if !cpu.run_queue.lock().is_empty() {
            cpu.halted_since.store(0, Ordering::SeqCst);
            schedule();
            continue;
        }
        cpu.halts.fetch_add(1, Ordering::Relaxed);
        arch::enable_irqs_and_halt();
    }
}

/// Called first in every interrupt: ends an idle period.
fn irq_enter() {
    let cpu = this_cpu();
    // Any interrupt ends the halt the pending IPI was for: the idle loop looks at the run
    // queue before it halts again.
    cpu.resched_ipi_pending.store(false, Ordering::SeqCst);
    let since = cpu.halted_since.swap(0, Ordering::SeqCst);
    if since != 0 {
        cpu.idle_ns.fetch_add(
            tsc::ticks_to_ns(tsc::rdtsc().saturating_sub(since)),
            Ordering::Relaxed,
        );
    }
}

/// Called last in every interrupt: preempts if the tick or a wake asked for it.
fn irq_exit() {
    let cpu = this_cpu();
    if cpu.online.load(Ordering::Relaxed)
        && cpu.preempt_count.load(Ordering::Relaxed) == 0
        && cpu.need_resched.swap(false, Ordering::SeqCst)
    {
        schedule();
    }
}

/// The timer tick: wakes expired sleepers and ends time slices.
fn tick() {
    let cpu = this_cpu();
    if !cpu.online.load(Ordering::Relaxed) {
        return;
    }
    let ticks = arch::this_cpu_ticks();
    let now = tsc::now_ns();
    // Wakes in batches (a wake must not run under the sleepers lock, and the batch lives on the
    // stack): a claimed deadline is set to 0, so the next batch finds only the ones not yet woken.
    loop {
        let mut expired: heapless::Vec<Arc<Task>, 16> = heapless::Vec::new();
        {
            let sleepers = cpu.sleepers.lock();
            for task in sleepers.iter() {
                if expired.is_full() {
                    break;
                }
                let deadline = task.deadline_ns.load(Ordering::SeqCst);
                if deadline != 0
                    && deadline <= now
                    && task
                        .deadline_ns
                        .compare_exchange(deadline, 0, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    let _ = expired.push(task.clone());
                }
            }
        }
        for task in &expired {
            wake(task);
        }
        if !expired.is_full() {
            break;
        }
    }
    let queued = !cpu.run_queue.lock().is_empty();
    if queued
        && (current_is_idle(cpu) || ticks - cpu.slice_start.load(Ordering::Relaxed) >= SLICE_TICKS)
    {
        cpu.need_resched.store(true, Ordering::SeqCst);
    }
}

static RESCHED_LINE: spin::Once<IrqLine> = spin::Once::new();

/// Registers what the lower layer calls: interrupt enter/exit, the tick, the reschedule IPI's
/// line, and the explanation of a fault in a stack guard page.
fn install_interrupt_work() {
    irq::set_entry_hooks(irq::EntryHooks {
        enter: irq_enter,
        exit: irq_exit,
    })
    .unwrap_or_else(|_| panic!("interrupt entry hooks installed twice"));
    arch::timer_line().on_active(tick);
    RESCHED_LINE.call_once(|| {
        let line = IrqLine::claim(RESCHED_VECTOR)
            .unwrap_or_else(|e| panic!("the reschedule IPI's vector: {e}"));
        line.on_active(|| {
            let cpu = this_cpu();
            cpu.resched_ipis.fetch_add(1, Ordering::Relaxed);
            cpu.need_resched.store(true, Ordering::SeqCst);
        });
        line
    });
    arch::idt::set_fault_explainer(|address| {
        stack_overflow_task(address).map(|(task, id)| {
            alloc::format!("stack overflow in task '{task}' (#{id}): hit its guard page")
        })
    });
}

/// Reschedule IPIs CPU `cpu` has taken since boot.
pub fn resched_ipis(cpu: usize) -> u64 {
    CPUS[cpu].resched_ipis.load(Ordering::Relaxed)
}

/// Wakes of CPU `cpu`'s tasks that were done on another CPU, since boot.
pub fn remote_wakes(cpu: usize) -> u64 {
    CPUS[cpu].remote_wakes.load(Ordering::Relaxed)
}

/// Whether CPU `cpu` is halted in its idle task right now.
pub fn is_halted(cpu: usize) -> bool {
    CPUS[cpu].halted_since.load(Ordering::SeqCst) != 0
}

/// Halts CPU `cpu` has begun so far.
pub fn halts(cpu: usize) -> u64 {
    CPUS[cpu].halts.load(Ordering::Relaxed)
}

/// Stops preemption on this CPU (nests). Used by `SpinLock`.
pub fn preempt_disable() {
    this_cpu().preempt_count.fetch_add(1, Ordering::SeqCst);
}

/// Undoes one `preempt_disable`.
pub fn preempt_enable() {
    this_cpu().preempt_count.fetch_sub(1, Ordering::SeqCst);
}

/// Nanoseconds CPU `cpu` has spent halted in its idle task, including a halt in progress.
pub fn idle_ns(cpu: usize) -> u64 {
    let c = &CPUS[cpu];
    let since = c.halted_since.load(Ordering::SeqCst);
    let current = if since != 0 {
        tsc::ticks_to_ns(tsc::rdtsc().saturating_sub(since))
    } else {
        0
    };
    c.idle_ns.load(Ordering::Relaxed) + current
}

/// If `addr` is in the stack guard page of a CPU's current task, that task's name and id: the fault
/// handlers report a stack overflow instead of a bare page fault.
pub fn stack_overflow_task(addr: u64) -> Option<(String, u64)> {
    CPUS.iter().find_map(|cpu| {
        let current = cpu.current.try_lock()?;
        current
            .as_ref()
            .filter(|t| t.guard_page_contains(addr))
            .map(|t| (t.name.clone(), t.id))
    })
}
