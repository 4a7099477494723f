//! Leaving QEMU through isa-debug-exit (port 0xf4): QEMU exits with `(code << 1) | 1`.

const DEBUG_EXIT_PORT: u16 = 0xf4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// QEMU exits 33.
    Success = 0x10,
    /// QEMU exits 35.
    Failure = 0x11,
}

static EXIT_HOOK: spin::Once<fn()> = spin::Once::new();

/// Installs work to run just before QEMU is left (the profiler prints its samples). Once only;
/// returns false if a hook was already installed.
pub fn set_exit_hook(hook: fn()) -> bool {
    let mut installed = false;
    EXIT_HOOK.call_once(|| {
        installed = true;
        hook
    });
    installed
}

static EXIT_HOOK_RAN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Runs the exit hook now, once: before a command's last line (a kcapi result, the tests'
/// closing line), so that its output (the profile) does not come after it.
pub fn run_exit_hook() {
    if let Some(hook) = EXIT_HOOK.get()
        && !EXIT_HOOK_RAN.swap(true, core::sync::atomic::Ordering::AcqRel)
    {
        hook();
    }
}

/// Exits QEMU. If no isa-debug-exit device is present, halts forever.
pub fn exit(code: ExitCode) -> ! {
    run_exit_hook();
    super::port::outl(DEBUG_EXIT_PORT, code as u32);
    super::halt_forever()
}
