//! `docs/performance.md`: the machine, date and commit the figures come from, and one generated
//! section per benchmark between `<!-- bench:KEY -->` markers. Running one benchmark replaces only
//! its own section; text outside the markers (analysis written by people) is kept.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

/// Section keys in the order they appear in a new file.
const ORDER: [&str; 5] = ["probe", "death", "silence", "load", "chaos"];

/// Where a run happened.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub date: String,
    pub commit: String,
    /// `/proc/loadavg`'s 1-minute figure when the run started (other work on the machine).
    pub load: String,
}

impl Machine {
    /// Reads this machine's description, the date and the checkout's commit.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_gib: mem_kib / (1024.0 * 1024.0),
            kernel,
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            commit: commit(),
            load: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
                .unwrap_or_default(),
        }
    }

    /// One line for a section's header.
    pub fn line(&self) -> String {
        format!(
            "{} CPUs ({}), {:.0} GiB RAM, Linux {}; {}; commit {}; load average {} at start",
            self.cpus, self.cpu_model, self.mem_gib, self.kernel, self.date, self.commit, self.load
        )
    }
}

/// The checkout's short commit, with `+dirty` when the tree has uncommitted changes.
fn commit() -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{c}+dirty") } else { c }
        }
        None => "unknown".to_owned(),
    }
}

/// Whether a figure reaches its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// No target for this figure.
    Info,
}

impl Verdict {
    /// `Met` when `ok`, else `Missed`.
    pub fn of(ok: bool) -> Self {
        if ok { Self::Met } else { Self::Missed }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "**missed**",
            Self::Info => "",
        }
    }
}

/// One row of a results table.
#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub value: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    pub verdict: Verdict,
}

impl Row {
    /// A row with a value only.
    pub fn info(figure: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            figure: figure.into(),
            value: value.into(),
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
            verdict: Verdict::Info,
        }
    }

    /// A row with a target.
    pub fn target(
        figure: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        ok: bool,
    ) -> Self {
        Self {
            target: target.into(),
            verdict: Verdict::of(ok),
            ..Self::info(figure, value)
        }
    }

    /// Adds a baseline without a ratio.
    pub fn baseline(mut self, baseline: impl Into<String>) -> Self {
        self.baseline = baseline.into();
        self
    }

    /// Adds a baseline and the ratio baseline / value.
    pub fn with_baseline(mut self, baseline: impl Into<String>, ratio: f64) -> Self {
        self.baseline = baseline.into();
        self.ratio = if ratio >= 10.0 {
            format!("{ratio:.0}x")
        } else {
            format!("{ratio:.1}x")
        };
        self
    }
}

/// A markdown table of rows.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| figure | measured | baseline | ratio | target | |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.figure,
            r.value,
            r.baseline,
            r.ratio,
            r.target,
            r.verdict.as_str()
        );
    }
    s
}

/// A benchmark's generated section.
#[derive(Debug, Clone)]
pub struct Section {
    /// Marker key (`probe`, `death`, `silence`, `load`).
    pub key: &'static str,
    /// Markdown, starting with its `##` heading.
    pub body: String,
}

impl Section {
    /// True when any row of the section missed its target.
    pub fn missed(&self) -> bool {
        self.body.contains(Verdict::Missed.as_str())
    }
}

fn markers(key: &str) -> (String, String) {
    (
        format!("<!-- bench:{key} begin -->"),
        format!("<!-- bench:{key} end -->"),
    )
}

const HEADER: &str = "# Performance\n\n\
Figures from `cargo run --release -p argus-tests --bin bench -- all` (one benchmark: `probe`, \
`death`, `silence` or `load` instead of `all`; `--smoke` runs a tiny configuration of each and \
writes nothing). Each section is regenerated by its benchmark, between its markers, with the \
machine, date and commit it ran on; the notes outside the markers are written by people. \
Baselines are measured side by side in the same run.\n";

/// Replaces (or adds) `section` in the markdown file at `path`, creating the file when missing.
pub fn write_section(path: &Path, section: &Section) -> anyhow::Result<()> {
    let mut text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut t = HEADER.to_owned();
            for key in ORDER {
                let (b, e) = markers(key);
                let _ = write!(t, "\n{b}\n{e}\n");
            }
            t
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let (begin, end) = markers(section.key);
    let block = format!("{begin}\n{}\n{end}", section.body.trim_end());
    match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => text.replace_range(b..e + end.len(), &block),
        _ => {
            text.push('\n');
            text.push_str(&block);
            text.push('\n');
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_in_place_and_notes_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("perf.md");
        let s = |body: &str| Section {
            key: "death",
            body: body.to_owned(),
        };
        write_section(&path, &s("## Death\nfirst")).expect("write");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("\nNotes by people.\n");
        std::fs::write(&path, text).expect("write notes");
        write_section(&path, &s("## Death\nsecond")).expect("rewrite");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("second") && !text.contains("first"), "{text}");
        assert!(text.contains("Notes by people."));
        assert!(text.find("bench:probe").expect("probe") < text.find("bench:death").expect("d"));
    }

    #[test]
    fn tables_mark_misses() {
        let rows = [
            Row::target("p99", "12 ms", "< 100 ms", true),
            Row::target("rss", "30 MiB", "< 20 MiB", false).with_baseline("x", 2.0),
        ];
        let t = table(&rows);
        assert!(
            t.contains("| met |") && t.contains("**missed**") && t.contains("2.0x"),
            "{t}"
        );
    }
}
