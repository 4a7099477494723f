//! The in-kernel test harness: named tests registered in one table ([`TESTS`]), a name filter
//! from the command line, one `test <name> ... ok|FAILED: <reason>` line per test, then the
//! closing `N passed, N failed` line and a QEMU exit status. A panic or CPU exception inside a
//! test fails the run and names the test.

mod arch;
mod bench;
mod crypto;
mod harness;
mod iommu;
mod irq;
mod mm;
mod pci;
mod reference;
mod reset;
mod rsa;
pub(crate) mod rsa_vectors;
mod sched;
mod service;
mod smp;
mod stream;
mod sync;

use alloc::string::String;
use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

use crate::arch::qemu::{self, ExitCode};
use crate::{console, println};

/// A test's outcome: `Err` carries the reason.
pub type TestResult = Result<(), String>;

pub struct Test {
    pub name: &'static str,
    pub run: fn() -> TestResult,
    /// Runs only when named exactly on the command line (tests that exist to fail).
    pub explicit_only: bool,
}

/// A test registered by its function's path: the name printed and matched by filters is the
/// path itself (`crypto::known_answers_every_mode`), so a name cannot drift from the function it
/// runs.
macro_rules! test {
    ($path:path) => {
        Test {
            name: stringify!($path),
            run: $path,
            explicit_only: false,
        }
    };
}

/// A test that runs only when named exactly on the command line (slow ones, and tests that
/// exist to fail), registered by its path like [`test!`].
macro_rules! explicit {
    ($path:path) => {
        Test {
            name: stringify!($path),
            run: $path,
            explicit_only: true,
        }
    };
}

/// Every test, in the order they run.
pub static TESTS: &[Test] = &[
    test!(mm::heap_alloc_free_many_sizes),
    test!(mm::frames_never_handed_out_twice),
    test!(mm::dma_alloc_is_zeroed_and_contiguous),
    test!(arch::breakpoint_is_caught_and_resumes),
    test!(arch::timer_ticks_agree_with_tsc),
    test!(arch::boot_stack_keeps_headroom),
    test!(smp::cpu_count_matches_madt),
    test!(smp::every_cpu_checked_in_with_own_index_and_apic_id),
    test!(smp::every_cpu_takes_timer_ticks),
    test!(smp::ipi_runs_handler_on_target_cpu),
    test!(irq::occupied_vector_is_refused),
    test!(irq::every_handler_of_a_line_runs),
    test!(pci::finds_virtio_crypto_with_expected_ids),
    test!(pci::virtio_crypto_config_reads_back_consistently),
    test!(pci::msix_entries_read_back),
    test!(pci::bar_above_4gib_is_mapped_and_reachable),
    test!(sched::tasks_run_on_every_cpu),
    test!(sched::spinning_task_does_not_starve_another),
    test!(sched::busy_percent_idle_and_spinning),
    test!(sched::sleep_waits_and_yields),
    test!(sync::ping_pong_10000_across_cpus),
    test!(sync::wake_from_interrupt_resumes_sleeper),
    test!(sync::timed_wait_times_out_in_window),
    test!(sync::lock_stats_show_contention_only_across_cpus),
    test!(crypto::known_answers_every_mode),
    test!(crypto::bad_inputs_get_their_error_and_device_stays_usable),
    test!(crypto::ctr_any_length_vs_rustcrypto),
    test!(crypto::session_exhaustion_and_recovery),
    test!(crypto::many_tasks_every_cpu_many_in_flight),
    test!(crypto::differential_1000_per_mode_vs_rustcrypto),
    test!(crypto::data_path_allocates_nothing_after_warmup),
    test!(crypto::volume_300k_data_100k_control),
    test!(stream::streams_random_lengths_every_mode_vs_rustcrypto),
    test!(stream::many_streams_and_independent_requests_on_every_cpu),
    test!(stream::failing_chunk_fails_the_stream_and_later_streams_work),
    test!(irq::every_device_takes_interrupts_in_its_mode),
    test!(service::every_cpu_submits_to_its_mapped_queue),
    test!(service::one_session_every_cpu_matches_rustcrypto_and_drops_everywhere),
    test!(service::hundred_thousand_requests_over_all_devices_none_lost),
    test!(irq::completions_wake_on_the_submitting_cpu),
    test!(rsa::known_answers),
    test!(rsa::bad_inputs_get_their_error_and_device_stays_usable),
    test!(rsa::every_key_size_1024_to_4096),
    test!(rsa::differential_200_per_op_vs_rustcrypto),
    test!(rsa::mixed_with_cipher_sessions_every_cpu),
    test!(rsa::kcapi_all_four_operations),
    test!(bench::every_bench_runs_and_emits_parsable_json),
    test!(irq::wakes_of_a_halted_cpu_share_one_ipi),
    // Last: checks what the whole run may have broken.
    test!(irq::reschedule_ipis_still_reach_the_scheduler),
    // The full differential count (about the time of the rest of the suite under TCG):
    // run once by scripts/test-all.sh.
    explicit!(rsa::differential_3000_per_op_vs_rustcrypto),
    test!(iommu::sharing_maps_only_the_buffer_with_its_direction),
    test!(iommu::unmapped_page_faults_and_the_device_recovers),
    test!(iommu::page_unmapped_after_a_request_is_out_of_reach),
    // Slow, and QEMU prints a complaint per injected fault: test-all runs it on its own.
    explicit!(reset::twenty_cycles_with_fault_injection),
    explicit!(sched::stack_overflow_must_fail),
    explicit!(harness::must_fail),
    explicit!(harness::fault_must_fail),
];

/// Returns `Err(reason)` from the enclosing test when `cond` is false.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            return Err(alloc::format!($($reason)+));
        }
    };
}

static CURRENT_TEST: AtomicPtr<&'static str> = AtomicPtr::new(core::ptr::null_mut());
static PASSED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static SKIPPED: AtomicUsize = AtomicUsize::new(0);
/// Set by [`not_applicable`] during the running test (tests run one at a time).
static NOT_APPLICABLE: spin::Mutex<Option<String>> = spin::Mutex::new(None);

/// Ends the running test as "not applicable" here (a test of MSI-X on a device without it): it
/// is neither passed nor failed, and is counted as skipped. Use as `return not_applicable(...)`.
pub fn not_applicable(reason: String) -> TestResult {
    *NOT_APPLICABLE.lock() = Some(reason);
    Ok(())
}

fn selected<'a>(filters: &'a [&'a str]) -> impl Iterator<Item = &'static Test> + 'a {
    TESTS.iter().filter(move |t| {
        if filters.is_empty() {
            !t.explicit_only
        } else {
            filters
                .iter()
                .any(|f| t.name == *f || (!t.explicit_only && t.name.contains(f)))
        }
    })
}

/// Runs the tests whose names contain one of `filters` (all when empty) and exits QEMU.
pub fn run(filters: &[&str]) -> ! {
    if filters.contains(&"") {
        // An empty word would match every name: say so rather than run everything.
        println!(
            "error: test: an empty filter ('') matches every test; give no filter to run them all"
        );
        println!("0 passed, 1 failed");
        qemu::exit(ExitCode::Failure);
    }
    let count = selected(filters).count();
    if count == 0 {
        let shown: alloc::vec::Vec<String> =
            filters.iter().map(|f| crate::cmdline::shown(f)).collect();
        println!("error: no test matches {}; tests are:", shown.join(" "));
        for t in TESTS {
            println!("  {}", t.name);
        }
        println!("0 passed, 1 failed");
        qemu::exit(ExitCode::Failure);
    }
    println!("running {count} tests");
    for t in selected(filters) {
        CURRENT_TEST.store(&t.name as *const &'static str as *mut _, Ordering::SeqCst);
        let start = crate::arch::tsc::now_ns();
        let result = (t.run)();
        let ms = (crate::arch::tsc::now_ns() - start) / 1_000_000;
        CURRENT_TEST.store(core::ptr::null_mut(), Ordering::SeqCst);
        let not_applicable = NOT_APPLICABLE.lock().take();
        match (result, not_applicable) {
            (Ok(()), Some(reason)) => {
                SKIPPED.fetch_add(1, Ordering::SeqCst);
                println!("test {} ... not applicable: {reason}", t.name);
            }
            (Ok(()), None) => {
                PASSED.fetch_add(1, Ordering::SeqCst);
                println!("test {} ... ok ({ms} ms)", t.name);
            }
            (Err(reason), _) => {
                FAILED.fetch_add(1, Ordering::SeqCst);
                println!("test {} ... FAILED: {reason}", t.name);
            }
        }
    }
    finish()
}

/// `N passed, N failed, N skipped`, the skipped being the tests that did not apply.
fn closing_line(passed: usize, failed: usize) -> String {
    alloc::format!(
        "{passed} passed, {failed} failed, {} skipped",
        SKIPPED.load(Ordering::SeqCst)
    )
}

/// Prints the closing line and exits with the matching status.
pub fn finish() -> ! {
    let passed = PASSED.load(Ordering::SeqCst);
    let failed = FAILED.load(Ordering::SeqCst);
    // The profile (profile=on) before the closing line: the closing line is the last line.
    qemu::run_exit_hook();
    println!("{}", closing_line(passed, failed));
    qemu::exit(if failed == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// Reports an unrecoverable error (panic, CPU exception) and fails the run, naming the test that
/// was running. Writes without the console lock: the failing code may hold it.
pub fn fatal(reason: fmt::Arguments) -> ! {
    crate::arch::irq_save();
    console::emergency_write_fmt(format_args!("\nfatal: {reason}\n"));
    let current = CURRENT_TEST.load(Ordering::SeqCst);
    if !current.is_null() {
        // SAFETY: CURRENT_TEST only ever holds pointers to the `name` field of a 'static Test.
        let name = unsafe { *current };
        console::emergency_write_fmt(format_args!("test {name} ... FAILED: {reason}\n"));
        FAILED.fetch_add(1, Ordering::SeqCst);
    }
    let passed = PASSED.load(Ordering::SeqCst);
    let failed = FAILED.load(Ordering::SeqCst).max(1);
    let skipped = SKIPPED.load(Ordering::SeqCst);
    console::emergency_write_fmt(format_args!(
        "{passed} passed, {failed} failed, {skipped} skipped\n"
    ));
    qemu::exit(ExitCode::Failure)
}
