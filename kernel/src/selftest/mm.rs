pub fn heap_alloc_free_many_sizes() -> super::TestResult { Ok(()) }
pub fn frames_never_handed_out_twice() -> super::TestResult { Ok(()) }
pub fn dma_alloc_is_zeroed_and_contiguous() -> super::TestResult { Ok(()) }
