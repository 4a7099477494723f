//! vcrypt-report: turns the kernel's bench JSON lines into figures and tables, and puts two runs
//! side by side. A host tool: `cargo results ...` (an alias that builds it for the host target).
//!
//! ```text
//! cargo results run [--out DIR] -- <kernel words>     e.g. `-- bench data dur=200`
//! cargo results compare A B [--out DIR]               A, B: result folders or saved logs
//! cargo results render LOG [--out DIR]                a saved `cargo run -- bench` output
//! ```
//!
//! The workspace builds for the kernel's `x86_64-unknown-none` by default, so `cargo build
//! --workspace` and `cargo clippy --workspace` build this crate for it too. There it is an empty
//! stub without dependencies (they need `std`), so that those commands work; `run-qemu.sh` refuses
//! to boot it.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
mod cli;
#[cfg(not(target_os = "none"))]
mod compare;
#[cfg(not(target_os = "none"))]
mod figures;
#[cfg(not(target_os = "none"))]
mod host_cpu;
#[cfg(not(target_os = "none"))]
mod output;
#[cfg(not(target_os = "none"))]
mod render;
#[cfg(not(target_os = "none"))]
mod rows;
#[cfg(not(target_os = "none"))]
mod run;
#[cfg(test)]
mod samples;

#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

/// The stub for the kernel's target: nothing to run (see the crate's documentation).
#[cfg(target_os = "none")]
mod stub {
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
}
