//! The context switch: callee-saved registers go on the old stack, the stack pointer is swapped.
//! Everything else (RIP via `ret`, caller-saved registers) is the compiler's business, because
//! `switch_stacks` is an ordinary `extern "C"` call for the code around it.

use core::arch::naked_asm;

/// Saves callee-saved registers on the current stack, stores the stack pointer in `*save_rsp`,
/// loads `load_rsp` and restores the registers saved there, returning into that context.
///
/// # Safety
/// `save_rsp` must be valid for a write; `load_rsp` must be a stack pointer saved by this
/// function or prepared by [`initial_stack`], on a stack that is still mapped. Interrupts must
/// be disabled.
#[unsafe(naked)]
pub unsafe extern "C" fn switch_stacks(save_rsp: *mut u64, load_rsp: u64) {
    naked_asm!(
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "mov [rdi], rsp",
        "mov rsp, rsi",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
    )
}

/// First code a new task runs (reached by `ret` from `switch_stacks`): aligns the stack as the
/// ABI wants at a call and enters `super::task_entry`, which never returns.
#[unsafe(naked)]
unsafe extern "C" fn task_start() {
    naked_asm!("and rsp, -16", "call {entry}", "ud2", entry = sym super::task_entry)
}

/// Writes the frame `switch_stacks` pops for a task that has never run, below `top`, and
/// returns the stack pointer to store as the task's saved one.
///
/// # Safety
/// `[top - 64, top)` must be writable memory of the new task's stack.
pub unsafe fn initial_stack(top: u64) -> u64 {
    let frame = [0u64, 0, 0, 0, 0, 0, task_start as *const () as u64, 0];
    let rsp = top - 8 * frame.len() as u64;
    // SAFETY: the caller guarantees the 64 bytes below `top` are ours to write.
    unsafe { core::ptr::copy_nonoverlapping(frame.as_ptr(), rsp as *mut u64, frame.len()) };
    rsp
}
