//! The progress hash on the real CLIs' screens: frames of the same hung screen that differ only
//! in their animation (spinner glyph, busy verb, elapsed time, token counter) hash the same; a
//! new output line changes the hash. The frames are the recorded `real-*.txt` screens with their
//! animated parts rewritten the way the CLIs redraw them.

use std::fs;
use std::path::Path;

use argus_shared::profile::{Condition, Profiles};
use argus_shared::screen;

fn real(cli: &str, state: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/screens")
        .join(cli)
        .join(format!("real-{state}.txt"));
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The progress hash of a screen as the node agent computes it (the whole capture).
fn progress(cli: &str, text: &str) -> String {
    let profiles = Profiles::builtin();
    let p = profiles.get(cli).expect("profile");
    p.progress_hash(text)
}

/// Replaces the one line containing `old` with `new` (the line must be on screen).
fn redraw(text: &str, old: &str, new: &str) -> String {
    assert!(text.contains(old), "`{old}` not on screen");
    text.replacen(old, new, 1)
}

/// Inserts an output line above the line containing `above`.
fn with_output(text: &str, above: &str, line: &str) -> String {
    let at = text.find(above).expect("anchor on screen");
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    format!("{}{line}\n{}", &text[..start], &text[start..])
}

fn check(cli: &str, state: &str, frames: &[(&str, &str)], anchor: &str, output: &str) {
    let base = real(cli, state);
    let h0 = progress(cli, &base);
    assert_ne!(
        screen::hash(&base),
        screen::hash(&redraw(&base, frames[0].0, frames[0].1)),
        "{cli}/{state}: the raw hash moves with the animation"
    );
    for (old, new) in frames {
        let frame = redraw(&base, old, new);
        assert_eq!(
            progress(cli, &frame),
            h0,
            "{cli}/{state}: `{old}` -> `{new}` is animation, not progress"
        );
    }
    let moved = with_output(&base, anchor, output);
    assert_ne!(
        progress(cli, &moved),
        h0,
        "{cli}/{state}: a new output line is progress"
    );
    // The mask leaves the classification alone: it is only for the hash.
    let profiles = Profiles::builtin();
    let p = profiles.get(cli).expect("profile");
    assert_eq!(p.classify(&base, 0, 0).condition, Condition::Thinking);
}

#[test]
fn claude_s_spinner_verb_timer_and_tokens_are_animation() {
    check(
        "claude",
        "hang",
        &[
            ("✻ Galloping…", "✶ Galloping… (12s · ↓ 40 tokens)"),
            (
                "✻ Galloping…",
                "✢ Percolating… (3m 2s · ↑ 1.2k tokens · esc to interrupt)",
            ),
            ("◐ medium", "◓ medium"),
        ],
        "✻ Galloping…",
        "● Here is the answer.",
    );
    check(
        "claude",
        "streaming",
        &[(
            "✶ Generating… (11s · ↓ 32 tokens)",
            "✳ Generating… (14s · ↓ 33 tokens)",
        )],
        "✶ Generating…",
        "  and a second line of the answer",
    );
    check(
        "claude",
        "retrying-429",
        &[("retrying in 31s", "retrying in 7s")],
        "✻ API error",
        "● A new answer block",
    );
}

#[test]
fn codex_s_timer_is_animation() {
    check(
        "codex",
        "hang",
        &[
            ("Working (0s •", "Working (12s •"),
            ("Working (0s •", "Working (1m 04s •"),
        ],
        "• Working",
        "• Ran cargo test",
    );
}

#[test]
fn gemini_s_spinner_phrase_and_timer_are_animation() {
    check(
        "gemini",
        "hang",
        &[
            (
                "⠙ Thinking... (esc to cancel, 0s)",
                "⠹ Counting electrons... (esc to cancel, 7s)",
            ),
            (
                "⠙ Thinking... (esc to cancel, 0s)",
                "⠏ Reticulating splines... (esc to cancel, 1m 3s)",
            ),
        ],
        "⠙ Thinking...",
        "✦ Here is the answer.",
    );
}

#[test]
fn aider_s_bar_is_animation() {
    check(
        "aider",
        "hang",
        &[
            ("█░         Waiting for", "  ░█       Waiting for"),
            ("█░         Waiting for", "       ▒▓█ Waiting for"),
        ],
        "Waiting for openai",
        "Here is the answer.",
    );
}

/// Claude Code 2.1 draws a streamed answer one whole line at a time, high up in a tall pane,
/// with its input box pinned to the bottom rows and blank rows between (as it showed live, at
/// 120x40): the new line is progress although the bottom rows do not change.
#[test]
fn a_new_line_high_up_a_tall_claude_pane_is_progress() {
    let blank = "\n".repeat(25);
    let frame = |answer: &str, timer: &str| {
        format!(
            " ▐▛███▛█   Claude Code v2.1.332\n\n❯ tell me a long story\n\n{answer}{blank}✢ Lollygagging… ({timer} · ↓ 59 tokens)\n\n{rule}\n❯\u{a0}\n{rule}\n  ⏸ manual mode on · esc to interrupt\n",
            rule = "─".repeat(100)
        )
    };
    let one = "● streaming slowly word by word so that the screen keeps changing\n";
    let two = "● streaming slowly word by word so that the screen keeps changing\n  changing streaming slowly word by word\n";
    assert_eq!(
        progress("claude", &frame(one, "20s")),
        progress("claude", &frame(one, "21s"))
    );
    assert_ne!(
        progress("claude", &frame(one, "20s")),
        progress("claude", &frame(two, "22s"))
    );
    // The raw hash of the bottom rows, as before, sees only the timer.
    let bottom = |t: &str| screen::hash(screen::last_lines(t, screen::DEFAULT_LINES));
    assert_eq!(bottom(&frame(one, "20s")), bottom(&frame(two, "20s")));
}

#[test]
fn titles_say_what_the_clis_show() {
    let profiles = Profiles::builtin();
    let title = |cli: &str, t: &str| profiles.get(cli).expect(cli).title_condition(t);
    // As Claude Code 2.1.332 set them live (tests/real-agents/hang.sh).
    assert_eq!(title("claude", "◐ Claude Code"), Condition::Thinking);
    assert_eq!(title("claude", "◑ Claude Code"), Condition::Thinking);
    assert_eq!(title("claude", "✳ Claude Code"), Condition::AtPrompt);
    // Before its first turn it leaves a stray graphics query there.
    assert_eq!(
        title("claude", "Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA"),
        Condition::None
    );
    assert_eq!(title("claude", "claude-host"), Condition::None);
    assert_eq!(title("claude", ""), Condition::None);
    assert_eq!(
        title("codex", "Action Required · argus"),
        Condition::WaitingPermission
    );
    assert_eq!(title("codex", "Working · argus"), Condition::Thinking);
    assert_eq!(
        title("gemini", "✋ Action Required (argus)"),
        Condition::WaitingPermission
    );
    assert_eq!(title("gemini", "✦ Working… (argus)"), Condition::Thinking);
    assert_eq!(title("gemini", "◇ Ready (argus)"), Condition::AtPrompt);
    // A host name as title (tmux's default) says nothing.
    assert_eq!(title("shell", "build-01"), Condition::None);
}

/// The progress hash's cost beside the raw hash and the classification the node agent already
/// runs on every capture (`cargo test -p argus-shared --test masking -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check"]
fn progress_hash_cost() {
    let profiles = Profiles::builtin();
    for cli in ["claude", "codex", "gemini", "aider"] {
        let p = profiles.get(cli).expect("profile");
        let text = real(cli, "hang");
        let n = 2_000;
        let time = |f: &dyn Fn() -> usize| {
            let t = std::time::Instant::now();
            let mut sink = 0;
            for _ in 0..n {
                sink += f();
            }
            assert!(sink > 0);
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        };
        let raw = time(&|| screen::hash(screen::last_lines(&text, screen::DEFAULT_LINES)).len());
        let progress = time(&|| p.progress_hash(&text).len());
        let classify = time(&|| p.classify(&text, 0, 0).condition as usize + 1);
        println!(
            "{cli}: raw hash {raw:.1} µs, progress hash {progress:.1} µs ({:.1}x), classify {classify:.1} µs",
            progress / raw
        );
    }
}
