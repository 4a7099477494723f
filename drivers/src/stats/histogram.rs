//! A log2 latency histogram in microseconds, printed like the `usecs : count distribution`
//! tables of bcc's funclatency (the shape the ctrl-queue commit quotes). Recording is lock-free.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

/// Buckets: `[0,1]`, `[2,3]`, `[4,7]`, ..., `[2^k, 2^(k+1)-1]`; the last one takes everything larger.
pub const BUCKETS: usize = 32;

pub struct Log2Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket a value falls in: 0 and 1 share bucket 0, then one bucket per power of two.
pub fn bucket_of(usecs: u64) -> usize {
    if usecs <= 1 {
        0
    } else {
        (63 - usecs.leading_zeros() as usize).min(BUCKETS - 1)
    }
}

/// The inclusive range of values in `bucket`.
pub fn bucket_range(bucket: usize) -> (u64, u64) {
    if bucket == 0 {
        (0, 1)
    } else {
        (1 << bucket, (1 << (bucket + 1)) - 1)
    }
}

impl Log2Histogram {
    pub const fn new() -> Self {
        Log2Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }

    pub fn record(&self, usecs: u64) {
        self.counts[bucket_of(usecs)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn counts(&self) -> [u64; BUCKETS] {
        core::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    pub fn total(&self) -> u64 {
        self.counts().iter().sum()
    }

    pub fn reset(&self) {
        for c in &self.counts {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&self, other: &Log2Histogram) {
        for (mine, theirs) in self.counts.iter().zip(other.counts()) {
            mine.fetch_add(theirs, Ordering::Relaxed);
        }
    }

    /// Upper bound of the bucket holding the `pct`-th percentile (0..=100), or 0 when empty.
    pub fn percentile_upper_bound(&self, pct: u64) -> u64 {
        percentile_upper_bound(&self.counts(), pct)
    }
}

/// Upper bound of the bucket holding the `pct`-th percentile (0..=100) of a histogram's
/// `counts`, or 0 when it is empty.
pub fn percentile_upper_bound(counts: &[u64; BUCKETS], pct: u64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = (total * pct).div_ceil(100).max(1);
    let mut seen = 0;
    for (bucket, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_range(bucket).1;
        }
    }
    bucket_range(BUCKETS - 1).1
}

/// Prints the table from the first non-empty bucket's predecessor to the last non-empty one,
/// with stars scaled to the largest count (40 wide).
impl fmt::Display for Log2Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = self.counts();
        let Some(last) = counts.iter().rposition(|&c| c > 0) else {
            return writeln!(
                f,
                "     usecs               : count     distribution\n     (no samples)"
            );
        };
        let max = *counts.iter().max().unwrap_or(&1);
        writeln!(f, "     usecs               : count     distribution")?;
        for (bucket, &count) in counts.iter().enumerate().take(last + 1) {
            let (low, high) = bucket_range(bucket);
            let stars = (count * 40).div_ceil(max.max(1)) as usize;
            write!(f, "{low:>10} -> {high:<10} : {count:<9} |")?;
            for i in 0..40 {
                f.write_str(if i < stars { "*" } else { " " })?;
            }
            writeln!(f, "|")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn buckets_follow_powers_of_two() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(3), 1);
        assert_eq!(bucket_of(4), 2);
        assert_eq!(bucket_of(15), 3);
        assert_eq!(bucket_of(16), 4);
        assert_eq!(bucket_of(8192), 13);
        assert_eq!(bucket_of(16383), 13);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for b in 0..BUCKETS - 1 {
            let (low, high) = bucket_range(b);
            assert_eq!(bucket_of(low), b);
            assert_eq!(bucket_of(high), b);
        }
    }

    #[test]
    fn percentiles_and_table() {
        let h = Log2Histogram::new();
        for _ in 0..99 {
            h.record(10);
        }
        h.record(10_000);
        assert_eq!(h.total(), 100);
        assert_eq!(h.percentile_upper_bound(50), 15);
        assert_eq!(h.percentile_upper_bound(99), 15);
        assert_eq!(h.percentile_upper_bound(100), 16383);
        let table = h.to_string();
        assert!(
            table.contains(
                "         8 -> 15         : 99        |****************************************|"
            ),
            "{table}"
        );
        assert!(
            table.contains("      8192 -> 16383      : 1         |*"),
            "{table}"
        );
        assert_eq!(table.lines().count(), 1 + 14);
    }

    #[test]
    fn merge_adds_counts() {
        let (a, b) = (Log2Histogram::new(), Log2Histogram::new());
        a.record(3);
        b.record(3);
        b.record(100);
        a.merge(&b);
        assert_eq!(a.counts()[1], 2);
        assert_eq!(a.total(), 3);
    }
}
