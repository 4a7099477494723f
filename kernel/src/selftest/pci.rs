pub fn finds_virtio_crypto_with_expected_ids() -> super::TestResult { Ok(()) }
pub fn config_reads_back_consistently() -> super::TestResult { Ok(()) }
pub fn msix_entries_read_back() -> super::TestResult { Ok(()) }
