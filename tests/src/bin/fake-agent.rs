//! A fake coding agent for the multi-process tests: draws screens shaped like Claude Code's
//! (so the built-in `claude` profile classifies them) and misbehaves on demand.
//!
//! `fake-agent MODE [ARG]`, MODE one of:
//! - `working`: a spinner line "✻ Working… (Ns · esc to interrupt)" and output every 200 ms;
//! - `idle`: the input prompt; every line typed is answered with "received: LINE" and the
//!   prompt again;
//! - `permission`: a permission prompt, waiting for a person;
//! - `ratelimit`: a usage-limit message with a reset time, then waits;
//! - `exit CODE`: prints one line and exits with CODE after 300 ms;
//! - `quiet`: prints one line and then nothing, using no CPU (hung silently).

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

fn prompt(out: &mut impl Write) {
    let _ = write!(
        out,
        "╭──────────────────────────────────────────╮\n│ >                                        │\n╰──────────────────────────────────────────╯\n  ? for shortcuts\n"
    );
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("idle");
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
            // stdin closed: keep the process alive like a real agent would.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "permission" => {
            let _ = write!(
                out,
                "⏺ Bash(rm -rf build/)\n╭──────────────────────────────────────────╮\n│ Bash command                             │\n│                                          │\n│   rm -rf build/                          │\n│                                          │\n│ Do you want to proceed?                  │\n│ ❯ 1. Yes                                 │\n│   2. No, and tell Claude what to do differently (esc) │\n╰──────────────────────────────────────────╯\n"
            );
            let _ = out.flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "ratelimit" => {
            let _ = writeln!(
                out,
                "⏺ Claude usage limit reached. Your limit will reset at 3pm."
            );
            let _ = writeln!(out, "  /upgrade to increase your usage limit.");
            prompt(&mut out);
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        "exit" => {
            let code: i32 = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1);
            let _ = writeln!(out, "⏺ fake agent exiting with {code}");
            let _ = out.flush();
            std::thread::sleep(Duration::from_millis(300));
            std::process::exit(code);
        }
        _ => {
            let _ = writeln!(out, "⏺ Reading the repository…");
            let _ = out.flush();
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}
