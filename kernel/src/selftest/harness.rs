//! Tests of the harness itself.

use super::TestResult;

/// Exists only to fail: `cargo run -- test harness_must_fail` must exit non-zero.
pub fn must_fail() -> TestResult {
    Err(alloc::string::String::from("this test fails on purpose to prove failures are reported"))
}
