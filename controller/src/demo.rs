//! The demo: a private tmux server with simulated agents that misbehave in the ways Argus
//! handles (busy, idle at a prompt, at a permission prompt, rate-limited with a reset time,
//! crash-looping, hung silently), supervised by `argus-controller --local --demo`. The simulated
//! agent is this binary itself (`argus-controller demo-agent MODE`); the multi-process tests use
//! the same program.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use argus_decide::policy::Policy;

fn prompt(out: &mut impl Write) {
    let _ = write!(
        out,
        "╭──────────────────────────────────────────╮\n│ >                                        │\n╰──────────────────────────────────────────╯\n  ? for shortcuts\n"
    );
    let _ = out.flush();
}

fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Runs a simulated agent whose screens are shaped like Claude Code's (the built-in `claude`
/// profile classifies them). `mode`:
/// - `working`: "✻ Working… (Ns · esc to interrupt)" and output every 200 ms;
/// - `idle`: the input prompt; each line typed is answered with "received: LINE" and the prompt;
/// - `permission`: a permission prompt, waiting for a person;
/// - `ratelimit [SECONDS]`: a usage-limit message with a reset time SECONDS from now (epoch
///   form); each line typed gets the same message again (the limit is renewed);
/// - `exit [CODE]`: one line, then exits with CODE (default 1) after 1 s;
/// - `quiet`: one line, then nothing and no CPU (hung silently);
/// - `resumable [BOOT_SECONDS]`: a spinner for BOOT_SECONDS (default 0), then the input prompt;
///   the first line typed is answered with "received: LINE" and the agent works from then on
///   (as `working`): what a restarted agent does with its resume message.
pub fn agent(mode: &str, arg: Option<&str>) -> ! {
    let mut out = std::io::stdout();
    match mode {
        "working" => {
            let start = Instant::now();
            let mut n = 0u64;
            loop {
                n += 1;
                let _ = writeln!(out, "⏺ Edited src/lib.rs (step {n})");
                let _ = writeln!(
                    out,
                    "✻ Working… ({}s · esc to interrupt)",
                    start.elapsed().as_secs()
                );
                let _ = out.flush();
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        "idle" => {
            let _ = writeln!(out, "⏺ Done. All tests pass.");
            prompt(&mut out);
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(out, "received: {line}");
                let _ = writeln!(out, "⏺ Continuing.");
                prompt(&mut out);
            }
            park()
        }
        "permission" => {
            let _ = write!(
                out,
                "⏺ Bash(rm -rf build/)\n╭──────────────────────────────────────────╮\n│ Bash command                             │\n│                                          │\n│   rm -rf build/                          │\n│                                          │\n│ Do you want to proceed?                  │\n│ ❯ 1. Yes                                 │\n│   2. No, and tell Claude what to do differently (esc) │\n╰──────────────────────────────────────────╯\n"
            );
            let _ = out.flush();
            park()
        }
        "ratelimit" => {
            let secs: i64 = arg.and_then(|a| a.parse().ok()).unwrap_or(120);
            let reset = argus_shared::time::now_ms() / 1000 + secs;
            let limit = |out: &mut std::io::Stdout| {
                let _ = writeln!(out, "⏺ Claude AI usage limit reached|{reset}");
                prompt(out);
            };
            limit(&mut out);
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(out, "received: {line}");
                limit(&mut out);
            }
            park()
        }
        "resumable" => {
            let boot: u64 = arg.and_then(|a| a.parse().ok()).unwrap_or(0);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(boot) {
                // One line, rewritten in place: nothing of it is left once the prompt shows.
                let _ = write!(
                    out,
                    "\r✻ Loading the conversation… ({}s · esc to interrupt)",
                    start.elapsed().as_secs()
                );
                let _ = out.flush();
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = write!(out, "\r\x1b[2K");
            prompt(&mut out);
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            let _ = writeln!(out, "received: {}", line.trim_end());
            let start = Instant::now();
            let mut n = 0u64;
            loop {
                n += 1;
                let _ = writeln!(out, "⏺ Resumed: edited src/lib.rs (step {n})");
                let _ = writeln!(
                    out,
                    "✻ Working… ({}s · esc to interrupt)",
                    start.elapsed().as_secs()
                );
                let _ = out.flush();
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        "exit" => {
            let code: i32 = arg.and_then(|c| c.parse().ok()).unwrap_or(1);
            let _ = writeln!(out, "⏺ agent exiting with {code}");
            let _ = out.flush();
            std::thread::sleep(Duration::from_secs(1));
            std::process::exit(code);
        }
        _ => {
            let _ = writeln!(out, "⏺ Reading the repository…");
            let _ = out.flush();
            park()
        }
    }
}

/// The demo's policy: the defaults with shorter dwell times, so that a newcomer sees the ladder
/// move within minutes.
pub fn policy() -> Policy {
    Policy {
        nudge_dwell: Duration::from_secs(10),
        hard_stall: Duration::from_secs(180),
        rate_limit_cooldown: Duration::from_secs(60),
        crash_loop_cooldown: Duration::from_secs(60),
        restart_backoff_min: Duration::from_secs(2),
        ..Policy::default()
    }
}

/// Starts the demo's private tmux server under `dir` and returns its socket.
pub fn start(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket = dir.join("demo-tmux.sock");
    let exe = std::env::current_exe().context("locating argus-controller")?;
    let exe = exe.display();
    let tmux = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .context("running tmux (is it installed?)")?;
        anyhow::ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    let _ = tmux(&["kill-server"]);
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let sessions: [(&str, String, Labels); 6] = [
        ("busy", format!("{exe} demo-agent working"), &[]),
        ("idle", format!("{exe} demo-agent idle"), &[]),
        ("asks", format!("{exe} demo-agent permission"), &[]),
        (
            "limited",
            format!("{exe} demo-agent ratelimit 90"),
            &[("provider", "anthropic"), ("account", "demo")],
        ),
        (
            "crashy",
            format!("{exe} demo-agent exit 1"),
            &[("restart", "")],
        ),
        ("hung", format!("{exe} demo-agent quiet"), &[]),
    ];
    for (name, cmd, labels) in sessions {
        let mut args: Vec<String> = [
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "30",
            &cmd,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend([";", "set-option", "@argus-profile", "claude"].map(str::to_owned));
        for (k, v) in labels {
            let v = if *k == "restart" { cmd.as_str() } else { v };
            args.extend([
                ";".to_owned(),
                "set-option".to_owned(),
                format!("@argus-{k}"),
                v.to_owned(),
            ]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tmux(&refs)?;
    }
    Ok(socket)
}

/// Stops the demo's tmux server.
pub fn stop(socket: &Path) {
    let _ = Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .arg("kill-server")
        .output();
}
