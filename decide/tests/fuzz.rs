//! Fuzzing of the policy file (the operator's TOML, read at start and on reload) and of the
//! session-name globs of `act_on`. Each target replays its corpus (`tests/fuzz/corpus/NAME/`)
//! and then arbitrary and mutated inputs; none may panic or take unbounded time.
//! `ARGUS_FUZZ_CASES=20000 cargo test -p argus-decide --test fuzz` for a long run.

#[path = "../../tests/fuzz/harness.rs"]
mod harness;

use argus_decide::policy::{Policy, glob_matches};
use harness::{fuzz, text};

/// A policy document parses and validates, or is refused with an error; what is accepted holds
/// the relations `validate` promises, in every group too.
#[test]
fn policy_files() {
    fuzz("policy", |bytes| {
        if let Ok(p) = Policy::from_toml(&text(bytes)) {
            assert!(p.validate().is_ok());
            for g in p.groups.values() {
                assert!(g.validate().is_ok());
            }
        }
    });
}

/// `glob\nname`: matching never panics (no slicing inside a character) and never backtracks
/// exponentially; a glob without `*` matches only itself.
#[test]
fn globs() {
    fuzz("glob", |bytes| {
        let t = text(bytes);
        let (glob, name) = t.split_once('\n').unwrap_or((&t, ""));
        let m = glob_matches(glob, name);
        if !glob.contains('*') {
            assert_eq!(m, glob == name, "{glob:?} against {name:?}");
        }
        assert!(glob_matches("*", name));
        let _ = glob_matches(name, glob);
    });
}
