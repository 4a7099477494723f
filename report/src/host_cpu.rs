//! CPU time of the QEMU process per thread, read from /proc on the host.
//!
//! QEMU runs with `-name vcrypt,debug-threads=on` (run-qemu.sh), so its threads carry names:
//! "CPU 0/TCG" per vCPU, "qemu-system-x86" for the main loop (where the virtio-crypto builtin
//! backend does its work), "worker", "call_rcu". Sampled around each bench point, it shows whether
//! the guest (vCPU threads near 100%) or the device side (the main loop near 100%) is the limit,
//! without changing the kernel.

use std::fs;
use std::path::Path;

/// Linux reports /proc/<pid>/stat times in USER_HZ ticks, which is 100 on x86.
const USER_HZ_NS: u64 = 10_000_000;

/// CPU time one thread had used when sampled.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadTime {
    pub tid: u32,
    pub name: String,
    pub cpu_ns: u64,
}

/// Every thread of a process at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub wall_ns: u64,
    pub threads: Vec<ThreadTime>,
}

/// CPU time from `/proc/<pid>/task/<tid>/stat`: utime + stime (fields 14 and 15). The name field
/// is in parentheses and may hold spaces ("CPU 0/TCG"), so fields are counted after its `)`.
pub fn parse_stat_cpu_ns(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * USER_HZ_NS)
}

/// CPU time from `/proc/<pid>/task/<tid>/schedstat` (nanoseconds on the CPU, first field): finer
/// than stat's 10 ms ticks, which matter for 50 ms bench points.
pub fn parse_schedstat_cpu_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().next()?.parse().ok()
}

/// Reads every thread of `pid` under `proc_root` (normally "/proc"). Threads that exit while
/// being read are skipped.
pub fn snapshot(proc_root: &Path, pid: u32, wall_ns: u64) -> std::io::Result<Snapshot> {
    let task_dir = proc_root.join(pid.to_string()).join("task");
    let mut threads = Vec::new();
    for entry in fs::read_dir(&task_dir)? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let dir = entry.path();
        let Ok(name) = fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let cpu_ns = fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| parse_schedstat_cpu_ns(&s))
            .or_else(|| {
                fs::read_to_string(dir.join("stat"))
                    .ok()
                    .and_then(|s| parse_stat_cpu_ns(&s))
            });
        if let Some(cpu_ns) = cpu_ns {
            threads.push(ThreadTime {
                tid,
                name: name.trim_end().to_string(),
                cpu_ns,
            });
        }
    }
    threads.sort_by_key(|t| t.tid);
    Ok(Snapshot { wall_ns, threads })
}

/// Percent of one host CPU each thread name used between two snapshots (threads of one name,
/// such as QEMU's "worker" pool, are summed). Threads born in between count from zero; a zero
/// interval gives nothing rather than a division by zero.
pub fn usage_by_name(before: &Snapshot, after: &Snapshot) -> Vec<(String, f64)> {
    let wall = after.wall_ns.saturating_sub(before.wall_ns);
    if wall == 0 {
        return Vec::new();
    }
    let mut usage: Vec<(String, f64)> = Vec::new();
    for thread in &after.threads {
        let start = before
            .threads
            .iter()
            .find(|t| t.tid == thread.tid)
            .map_or(0, |t| t.cpu_ns);
        let pct = thread.cpu_ns.saturating_sub(start) as f64 * 100.0 / wall as f64;
        match usage.iter_mut().find(|(name, _)| *name == thread.name) {
            Some((_, total)) => *total += pct,
            None => usage.push((thread.name.clone(), pct)),
        }
    }
    for (_, pct) in &mut usage {
        *pct = (*pct * 10.0).round() / 10.0;
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (CPU 0/TCG) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100";
        assert_eq!(parse_stat_cpu_ns(stat), Some(300 * USER_HZ_NS));
        let odd = "7 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(parse_stat_cpu_ns(odd), Some(3 * USER_HZ_NS));
        assert_eq!(parse_stat_cpu_ns("7 (short) S 1 2"), None);
    }

    #[test]
    fn schedstat_gives_nanoseconds() {
        assert_eq!(
            parse_schedstat_cpu_ns("123456789 5000 12\n"),
            Some(123_456_789)
        );
        assert_eq!(parse_schedstat_cpu_ns(""), None);
    }

    fn thread(tid: u32, name: &str, cpu_ns: u64) -> ThreadTime {
        ThreadTime {
            tid,
            name: name.to_string(),
            cpu_ns,
        }
    }

    #[test]
    fn usage_is_per_name_in_percent_of_the_interval() {
        let before = Snapshot {
            wall_ns: 1_000_000_000,
            threads: vec![
                thread(1, "qemu-system-x86", 100),
                thread(2, "CPU 0/TCG", 0),
                thread(3, "worker", 0),
            ],
        };
        let after = Snapshot {
            wall_ns: 2_000_000_000,
            threads: vec![
                thread(1, "qemu-system-x86", 100 + 250_000_000),
                thread(2, "CPU 0/TCG", 990_000_000),
                thread(3, "worker", 100_000_000),
                thread(4, "worker", 50_000_000),
            ],
        };
        assert_eq!(
            usage_by_name(&before, &after),
            [
                ("qemu-system-x86".to_string(), 25.0),
                ("CPU 0/TCG".to_string(), 99.0),
                ("worker".to_string(), 15.0),
            ]
        );
        assert!(usage_by_name(&after, &after).is_empty());
    }

    #[test]
    fn this_process_can_be_sampled() {
        let now = snapshot(Path::new("/proc"), std::process::id(), 1).unwrap();
        assert!(!now.threads.is_empty());
        assert!(snapshot(Path::new("/proc"), u32::MAX, 1).is_err());
    }
}
