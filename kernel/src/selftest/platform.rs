pub fn breakpoint_is_caught_and_resumes() -> super::TestResult { Ok(()) }
pub fn timer_ticks_agree_with_tsc() -> super::TestResult { Ok(()) }
