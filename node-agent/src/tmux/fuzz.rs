//! Fuzzing of the pane-line parser: `list-panes -a` lines are made of names, paths, labels and
//! start commands that anyone with access to the tmux server chooses. Any line parses or is
//! skipped, never a panic, in bounded time.

/// The shared fuzz harness, included once for the crate (the control-mode fuzz test uses it too).
#[path = "../../../tests/fuzz/harness.rs"]
pub(super) mod harness;

use super::{Pane, SEP};

#[test]
fn pane_lines() {
    harness::fuzz("pane-line", |bytes| {
        let text = harness::text(bytes);
        // The corpus writes the field separator as a visible `|`: the same seed then exercises
        // both the real separator and a line without any.
        let line = text.replace('|', &SEP.to_string());
        for l in line.split('\n') {
            if let Some(p) = Pane::parse(l) {
                assert!(!p.session_name.contains(SEP));
                let _ = p.label("restart");
            }
        }
        let _ = Pane::parse(&text);
    });
}
