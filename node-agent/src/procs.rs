//! Process trees from `/proc`, read only for the pids of interest (a pane's process and its
//! descendants), and pidfd watches that notice an exit within milliseconds.

use std::os::fd::OwnedFd;

use rustix::process::{Pid, PidfdFlags, Signal};

/// What `/proc/PID/stat` says about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    /// Executable name (`comm`), at most 15 bytes.
    pub comm: String,
    /// Process state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// User + system CPU time in clock ticks.
    pub cpu_ticks: u64,
    /// Start time in clock ticks since boot: with the pid, the process's identity.
    pub start_time: u64,
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
pub fn stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

fn parse_stat(pid: u32, text: &str) -> Option<ProcStat> {
    // comm sits in parentheses and may itself hold spaces and parentheses: split at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        ppid: field(4)? as u32,
        comm,
        state: rest.first()?.chars().next()?,
        cpu_ticks: field(14)? + field(15)?,
        start_time: field(22)?,
    })
}

/// The command line of a process, arguments joined by spaces (empty for kernel threads or when
/// the process is gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Direct children of a process (of all its threads).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The process tree under `root` (root included), breadth-first, at most `limit` processes.
pub fn tree(root: u32, limit: usize) -> Vec<ProcStat> {
    let mut out = Vec::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        if out.len() >= limit {
            break;
        }
        if let Some(s) = stat(pid) {
            out.push(s);
            queue.extend(children(pid));
        }
    }
    out
}

/// Milliseconds per clock tick of `/proc/PID/stat` times.
pub fn ms_per_tick() -> u64 {
    let hz = rustix::param::clock_ticks_per_second();
    1000u64.checked_div(hz).unwrap_or(10)
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let Some(pid) = Pid::from_raw(pid as i32) else {
        return Ok(());
    };
    match rustix::process::kill_process(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// True while a process with this pid and start time exists (and is not a zombie).
pub fn alive(pid: u32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start_time && s.state != 'Z')
}

/// Opens a pidfd on `pid`, to be awaited with [`exited`].
pub fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid as i32).ok_or(std::io::ErrorKind::InvalidInput)?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Resolves when the process behind `fd` exits (the pidfd becomes readable).
pub async fn exited(fd: OwnedFd) -> std::io::Result<()> {
    // Deprecated because a caller could register a fd it does not own; an `OwnedFd` is owned by
    // the `AsyncFd` for its whole life, so the safe constructor is sound here (the replacement,
    // `register_with_interest`, is `unsafe`, which this crate forbids).
    #[allow(deprecated)]
    let fd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
    let _ready = fd.readable().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let text =
            "123 (my (odd) prog) S 1 123 123 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5555 0 0";
        let s = parse_stat(123, text).expect("parses");
        assert_eq!(s.comm, "my (odd) prog");
        assert_eq!(s.ppid, 1);
        assert_eq!(s.cpu_ticks, 10);
        assert_eq!(s.start_time, 5555);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let s = stat(me).expect("own stat");
        assert_eq!(s.pid, me);
        assert!(cmdline(me).contains("argus"));
    }

    #[tokio::test]
    async fn pidfd_sees_exit() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.05")
            .spawn()
            .expect("spawn sleep");
        let fd = pidfd(child.id()).expect("pidfd");
        tokio::time::timeout(std::time::Duration::from_secs(5), exited(fd))
            .await
            .expect("exit seen before deadline")
            .expect("readable");
        let _ = child.wait();
    }
}
