//! Tests of the harness itself.

use super::TestResult;

/// Exists only to fail: `cargo run -- test harness::must_fail` must exit non-zero.
pub fn must_fail() -> TestResult {
    Err(alloc::string::String::from(
        "this test fails on purpose to prove failures are reported",
    ))
}

/// Exists only to fault: a page fault inside a test must fail the run and name the test.
pub fn fault_must_fail() -> TestResult {
    let unmapped = 0x0000_7000_0000_0000u64 as *const u64;
    // SAFETY: deliberately unsound: nothing is mapped there, so this read page-faults, and the
    // fault handler ends the run.
    let value = unsafe { core::ptr::read_volatile(unmapped) };
    Err(alloc::format!(
        "reading an unmapped address returned {value:#x} instead of faulting"
    ))
}
