//! What a benchmark reads about the processes it starts from `/proc`: CPU time (nanosecond
//! `schedstat` where it can, clock ticks otherwise), resident and peak memory, and the CPU of
//! reaped children.

use std::time::Duration;

use anyhow::Context;

// === CPU and memory from /proc ===

/// Clock ticks per second of `/proc/*/stat` times.
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

fn stat_fields(path: &str) -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // comm may hold spaces: fields start after the last ')'. Field 3 (state) is a letter.
    let rest = text
        .rfind(')')
        .and_then(|i| text.get(i + 2..))
        .with_context(|| format!("malformed {path}"))?;
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .collect())
}

/// User + system CPU time of a process (all its threads, living and exited), from clock ticks.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    // rest[0] is field 3; utime is field 14, stime 15.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Ok(ticks_to_duration(ticks))
}

/// CPU time of this process's reaped children (and theirs): `cutime + cstime`.
pub fn children_cpu_time() -> anyhow::Result<Duration> {
    let f = stat_fields("/proc/self/stat")?;
    let ticks = f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0);
    Ok(ticks_to_duration(ticks))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_second())
}

/// Nanosecond CPU time summed over the living threads of a process (`/proc/PID/task/*/schedstat`).
/// Threads that exited are missing, so pair it with [`cpu_time`] and take the larger delta.
pub fn thread_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(&path) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(ns))
}

/// A CPU reading of one process: both counters, so that a delta can use the precise one.
#[derive(Debug, Clone, Copy)]
pub struct CpuReading {
    ticks: Duration,
    threads: Duration,
}

impl CpuReading {
    /// Reads both counters of `pid`.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        Ok(Self {
            ticks: cpu_time(pid)?,
            threads: thread_cpu_time(pid)?,
        })
    }

    /// CPU used between `earlier` and this reading: the nanosecond thread sum, unless the tick
    /// counter shows more (threads exited in between); ticks are 10 ms coarse.
    pub fn since(&self, earlier: &Self) -> Duration {
        let threads = self.threads.saturating_sub(earlier.threads);
        let ticks = self.ticks.saturating_sub(earlier.ticks);
        if ticks > threads + Duration::from_millis(20) {
            ticks
        } else {
            threads
        }
    }
}

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub peak_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of a process.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
    })
}

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> anyhow::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim).context("raising RLIMIT_NOFILE")?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// Sends SIGKILL to `pid` (a process this benchmark made, or a fake agent it started in tmux).
pub fn sigkill(pid: u32) -> anyhow::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).context("pid 0")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .with_context(|| format!("kill -KILL {}", pid.as_raw_nonzero()))
}

/// Start time (field 22 of `/proc/PID/stat`) of a process, `None` when it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(&format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|f| f.get(19).copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let m = memory(me).expect("status");
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib);
        let a = CpuReading::of(me).expect("cpu");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let b = CpuReading::of(me).expect("cpu");
        assert!(b.since(&a) > Duration::ZERO);
        assert!(start_time(me).is_some());
    }
}
