//! `cargo test` at the root builds for the kernel's target (`x86_64-unknown-none`), which has no
//! test framework, so there is nothing for it to run. This target exists so that it says so and
//! fails instead of reporting "0 tests" and exit 0: cargo hands it to the runner, `run-qemu.sh`,
//! which recognises a test binary (under `deps/`) and prints where the tests are:
//! `cargo hosttest` (host unit tests), `cargo run` (in-QEMU self-tests), `scripts/test-all.sh`.
#![no_std]
#![no_main]

#[unsafe(no_mangle)]
extern "C" fn _start() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
