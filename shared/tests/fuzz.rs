//! Fuzzing of the shared crate's parsers of untrusted text: the screen classifier of every
//! built-in profile, the reset-time parser, an operator profile file, command validation (a
//! decoded protobuf `Command` and its fields) and the id checks. Each target replays its corpus
//! (`tests/fuzz/corpus/NAME/`) and then arbitrary and mutated inputs; none may panic or take
//! unbounded time. `ARGUS_FUZZ_CASES=20000 cargo test -p argus-shared --test fuzz` for a long run.

#[path = "../../tests/fuzz/harness.rs"]
mod harness;

use argus_proto::v1 as pb;
use argus_shared::command::{self, Action};
use argus_shared::ids::{NodeId, SessionName};
use argus_shared::profile::{Profiles, parse_reset};
use harness::{fuzz, text};
use prost::Message;

/// 2026-11-30 12:00:00 UTC: a realistic "now".
const NOW: i64 = 1_795_953_600;

/// Every built-in profile classifies any screen, at ordinary and extreme clocks and offsets.
#[test]
fn screen_classifiers() {
    let profiles = Profiles::builtin();
    let names: Vec<String> = profiles.names().map(str::to_owned).collect();
    assert!(names.len() > 1, "the built-in profiles are loaded");
    fuzz("screen", |bytes| {
        let screen = text(bytes);
        for name in &names {
            let p = profiles.get(name).expect("a listed profile");
            let _ = p.classify(&screen, NOW, 3600);
        }
        // Extreme clocks on one profile: arithmetic must saturate or give up, never panic.
        let p = profiles.get(&names[0]).expect("a listed profile");
        let _ = p.classify(&screen, i64::MAX, i32::MAX);
        let _ = p.classify(&screen, i64::MIN, i32::MIN);
    });
}

/// The reset-time parser on any text, at ordinary and extreme clocks and offsets.
#[test]
fn reset_times() {
    fuzz("reset", |bytes| {
        let t = text(bytes);
        for (now, offset) in [
            (NOW, 0),
            (NOW, -12 * 3600),
            (NOW, 14 * 3600),
            (0, 0),
            (i64::MAX, i32::MAX),
            (i64::MIN, i32::MIN),
            (-1, 86_399),
        ] {
            let _ = parse_reset(&t, now, offset);
        }
    });
}

/// An operator's profile file: parsing either fails with an error or yields profiles that
/// classify without panicking.
#[test]
fn profile_files() {
    fuzz("profiles", |bytes| {
        if let Ok(profiles) = Profiles::from_toml(&text(bytes)) {
            let names: Vec<String> = profiles.names().map(str::to_owned).collect();
            for name in names {
                if let Some(p) = profiles.get(&name) {
                    let _ = p.classify("> \nesc to interrupt\nresets 3pm\n", NOW, 0);
                    let _ = p.resume_command("claude --flag 'x y'");
                }
            }
            let _ = profiles.match_process("claude", "node /usr/bin/claude");
        }
    });
}

/// Command validation: arbitrary bytes decoded as a protobuf `Command` (what a node agent reads
/// off its stream), its action validated; the text rules on the raw text; tmux start commands
/// split back into argv.
#[test]
fn commands() {
    fuzz("command", |bytes| {
        if let Ok(c) = pb::Command::decode(bytes)
            && let Some(a) = c.action
            && let Ok(action) = Action::try_from(a)
        {
            // What passed validation holds no control character anywhere it types or runs.
            match &action {
                Action::Nudge { text } => {
                    assert!(!text.chars().any(char::is_control), "nudge {text:?}");
                    assert!(!text.is_empty() && text.len() <= command::MAX_NUDGE_BYTES);
                }
                Action::Restart {
                    command,
                    cwd,
                    labels,
                    ..
                } => {
                    assert!(
                        !command.chars().any(char::is_control),
                        "command {command:?}"
                    );
                    assert!(!cwd.chars().any(char::is_control), "cwd {cwd:?}");
                    for (k, v) in labels {
                        assert!(
                            !k.chars().any(char::is_control) && !v.chars().any(char::is_control)
                        );
                    }
                }
                Action::Capture { lines } => assert!(*lines <= command::MAX_CAPTURE_LINES),
                Action::Kill { grace_ms } => assert!(*grace_ms <= command::MAX_KILL_GRACE_MS),
                Action::Gate {
                    command,
                    timeout_ms,
                } => {
                    assert!(!command.chars().any(char::is_control), "gate {command:?}");
                    assert!(*timeout_ms <= command::MAX_GATE_TIMEOUT_MS);
                }
                Action::Interrupt | Action::Checkpoint => {}
            }
            let _ = pb::command::Action::from(action);
        }
        let t = text(bytes);
        if command::validate_nudge(&t).is_ok() {
            assert!(!t.chars().any(char::is_control));
        }
        let (left, right) = t.split_at(
            t.char_indices()
                .nth(t.chars().count() / 2)
                .map_or(0, |(i, _)| i),
        );
        let _ = Action::restart(left, right);
        let argv = command::split_tmux_command(&t);
        assert!(argv.iter().map(String::len).sum::<usize>() <= t.len());
        let _ = command::shell_command_from_tmux(&t);
    });
}

/// Node ids and session names, as reported by a node: accepted or refused, never a panic.
#[test]
fn ids() {
    fuzz("ids", |bytes| {
        let t = text(bytes);
        for line in t.split('\n') {
            let _ = NodeId::new(line);
            let _ = SessionName::new(line);
        }
        let _ = NodeId::new(&t);
        let _ = SessionName::new(&t);
    });
}

/// The harness can fail: a target that takes far longer than its baseline is over the bound.
#[test]
fn the_harness_fails_a_slow_input() {
    let bound = harness::Bound::new(std::time::Duration::from_micros(10), 100);
    let slow = |_: &[u8]| std::thread::sleep(std::time::Duration::from_millis(400));
    assert!(harness::timed("slow", &slow, b"x", &bound).is_err());
    assert!(harness::timed("fast", &|_: &[u8]| {}, b"x", &bound).is_ok());
}

/// The harness can fail: a target that panics on some input is found out.
#[test]
#[should_panic(expected = "ids")]
fn the_harness_fails_a_panicking_target() {
    fuzz("ids", |bytes| {
        assert!(!bytes.contains(&0xff), "a 0xff byte")
    });
}
