//! Classifies every screen fixture under `tests/fixtures/screens/<profile>/` with the built-in
//! profiles and checks it against the condition its file name states:
//!
//! - `<condition>-<n>.txt`, e.g. `waiting-permission-2.txt`;
//! - `near-miss-<what>.<condition>.txt`, e.g. `near-miss-rate-limiter-code.thinking.txt`: screens
//!   built to trip a careless pattern (code that mentions "rate limit", a diff with "Do you want
//!   to", an answered prompt far up in the scrollback).
//!
//! Rate-limited fixtures must also be listed in `reset_at.toml` with the reset time they name.
//!
//! `real-<state>.txt` files are screens of the real CLIs, recorded by `tests/real-agents/capture.sh`
//! (with `real-<state>.ansi`, the same screen with its escapes). `real.toml` says for each which
//! CLI and version, the state it was driven into, the condition it must classify as, when it was
//! captured (the classification's `now`), and for limits the reset time the provider named.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use argus_shared::profile::{Condition, Profiles};

/// 2026-03-10T13:20:00Z.
const NOW: i64 = 1_773_148_800;
/// Local time is UTC+1 (Europe/Berlin in winter).
const OFFSET: i32 = 3600;

fn screens_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/screens")
}

/// The condition a fixture's file name states.
fn expected_condition(file_name: &str) -> Option<Condition> {
    let stem = file_name.strip_suffix(".txt")?;
    if stem.starts_with("real-") {
        return None;
    }
    if let Some(rest) = stem.strip_prefix("near-miss-") {
        let (_, condition) = rest.rsplit_once('.')?;
        return Condition::parse(condition);
    }
    let (condition, n) = stem.rsplit_once('-')?;
    n.parse::<u32>().ok()?;
    Condition::parse(condition)
}

/// Expected reset times: profile -> file -> `Some(unix secs)` or `None` for "none".
fn expected_resets() -> BTreeMap<String, BTreeMap<String, Option<i64>>> {
    let text = fs::read_to_string(screens_dir().join("reset_at.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table
        .into_iter()
        .map(|(profile, files)| {
            let files = files
                .as_table()
                .unwrap_or_else(|| panic!("reset_at.toml: [{profile}] is not a table"))
                .iter()
                .map(|(file, v)| {
                    let at = match v {
                        toml::Value::Integer(t) => Some(*t),
                        toml::Value::String(s) if s == "none" => None,
                        other => panic!("reset_at.toml: {profile}.{file} = {other}"),
                    };
                    (file.clone(), at)
                })
                .collect();
            (profile, files)
        })
        .collect()
}

struct Fixture {
    profile: String,
    file: String,
    path: PathBuf,
}

fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for dir in fs::read_dir(screens_dir()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            if file.starts_with("real-") {
                continue;
            }
            out.push(Fixture {
                profile: profile.clone(),
                file,
                path,
            });
        }
    }
    out.sort_by(|a, b| (&a.profile, &a.file).cmp(&(&b.profile, &b.file)));
    out
}

#[test]
fn every_fixture_classifies_as_its_name_says() {
    let profiles = Profiles::builtin();
    let resets = expected_resets();
    let mut failures: Vec<String> = Vec::new();
    let mut checked = 0;
    for f in fixtures() {
        let name = format!("{}/{}", f.profile, f.file);
        let Some(want) = expected_condition(&f.file) else {
            failures.push(format!("{name}: file name states no condition"));
            continue;
        };
        let Some(profile) = profiles.get(&f.profile) else {
            failures.push(format!("{name}: no profile named {}", f.profile));
            continue;
        };
        let screen = fs::read_to_string(&f.path).unwrap();
        let got = profile.classify(&screen, NOW, OFFSET);
        checked += 1;
        if got.condition != want {
            failures.push(format!(
                "{name}: classified {}, name says {want}",
                got.condition
            ));
            continue;
        }
        if want == Condition::RateLimited {
            match resets.get(&f.profile).and_then(|m| m.get(&f.file)) {
                None => failures.push(format!("{name}: missing from reset_at.toml")),
                Some(at) if *at != got.reset_at => failures.push(format!(
                    "{name}: reset_at {:?}, reset_at.toml says {at:?}",
                    got.reset_at
                )),
                Some(_) => {}
            }
        } else if got.reset_at.is_some() {
            failures.push(format!(
                "{name}: reset_at {:?} outside RateLimited",
                got.reset_at
            ));
        }
    }
    assert!(
        checked > 0,
        "no fixtures found under {}",
        screens_dir().display()
    );
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn reset_manifest_lists_only_rate_limited_fixtures_that_exist() {
    let on_disk: Vec<(String, String)> = fixtures()
        .into_iter()
        .map(|f| (f.profile, f.file))
        .collect();
    for (profile, files) in expected_resets() {
        for file in files.keys() {
            assert!(
                on_disk.contains(&(profile.clone(), file.clone())),
                "reset_at.toml lists {profile}/{file}, which does not exist"
            );
            assert_eq!(
                expected_condition(file),
                Some(Condition::RateLimited),
                "reset_at.toml lists {profile}/{file}, which is not rate-limited"
            );
        }
    }
}

#[test]
fn every_agent_profile_has_fixtures_for_every_condition() {
    let fixtures = fixtures();
    let reals = real_fixtures();
    for profile in ["claude", "codex", "aider", "gemini", "shell"] {
        for condition in Condition::PRECEDENCE {
            // Dialogs are the agents' own (login, trust, first run); the shell has none.
            if profile == "shell" && condition == Condition::Dialog {
                continue;
            }
            let named = fixtures
                .iter()
                .filter(|f| f.profile == profile && !f.file.starts_with("near-miss-"))
                .filter(|f| expected_condition(&f.file) == Some(condition))
                .count();
            let real = reals
                .iter()
                .filter(|r| r.key.starts_with(&format!("{profile}/")) && r.expect == condition)
                .count();
            assert!(
                named + real >= 2,
                "{profile}: only {} {condition} fixture(s), want 2 or more",
                named + real
            );
        }
        let near_misses = fixtures
            .iter()
            .filter(|f| f.profile == profile && f.file.starts_with("near-miss-"))
            .count();
        assert!(
            near_misses >= 2,
            "{profile}: only {near_misses} near-miss fixture(s)"
        );
    }
}

#[test]
fn fixture_names_parse() {
    assert_eq!(
        expected_condition("at-prompt-1.txt"),
        Some(Condition::AtPrompt)
    );
    assert_eq!(
        expected_condition("waiting-permission-12.txt"),
        Some(Condition::WaitingPermission)
    );
    assert_eq!(
        expected_condition("near-miss-diff-do-you-want.at-prompt.txt"),
        Some(Condition::AtPrompt)
    );
    assert_eq!(
        expected_condition("near-miss-x.none.txt"),
        Some(Condition::None)
    );
    assert_eq!(expected_condition("thinking.txt"), None);
    assert_eq!(expected_condition("README.md"), None);
}

// === screens of the real CLIs ===

/// Most a parsed reset may differ from the one the fake server named: the CLIs print wall-clock
/// times to the minute.
const RESET_TOLERANCE_SECS: i64 = 120;

/// One `real.toml` entry.
struct Real {
    key: String,
    cli: String,
    version: String,
    state: String,
    expect: Condition,
    captured_at: i64,
    utc_offset: i32,
    /// `None`: no reset time on screen; `Some(t)`: about `t`.
    reset_at: Option<i64>,
}

fn real_fixtures() -> Vec<Real> {
    let text = fs::read_to_string(screens_dir().join("real.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table
        .into_iter()
        .map(|(key, v)| {
            let t = v.as_table().unwrap_or_else(|| panic!("real.toml: {key}"));
            let s = |k: &str| {
                t.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_else(|| panic!("real.toml: {key}.{k}"))
                    .to_owned()
            };
            let i = |k: &str| t.get(k).and_then(|v| v.as_integer());
            let expect = Condition::parse(&s("expect"))
                .unwrap_or_else(|| panic!("real.toml: {key}.expect is no condition"));
            Real {
                cli: s("cli"),
                version: s("version"),
                state: s("state"),
                expect,
                captured_at: i("captured_at").unwrap_or_else(|| panic!("{key}.captured_at")),
                utc_offset: i("utc_offset").unwrap_or(0) as i32,
                reset_at: i("reset_at"),
                key,
            }
        })
        .collect()
}

#[test]
fn every_real_screen_classifies_as_recorded() {
    let profiles = Profiles::builtin();
    let reals = real_fixtures();
    let mut failures = Vec::new();
    for r in &reals {
        let (profile, _) = r
            .key
            .split_once('/')
            .expect("real.toml keys are profile/file");
        let screen = fs::read_to_string(screens_dir().join(&r.key))
            .unwrap_or_else(|e| panic!("{}: {e}", r.key));
        let got = profiles
            .get(profile)
            .unwrap_or_else(|| panic!("{}: no profile {profile}", r.key))
            .classify(&screen, r.captured_at, r.utc_offset);
        let what = format!("{} ({} {}, {})", r.key, r.cli, r.version, r.state);
        if got.condition != r.expect {
            failures.push(format!(
                "{what}: classified {}, want {}",
                got.condition, r.expect
            ));
            continue;
        }
        let reset_ok = match (got.reset_at, r.reset_at) {
            (None, None) => true,
            (Some(g), Some(w)) => (g - w).abs() <= RESET_TOLERANCE_SECS,
            _ => false,
        };
        if !reset_ok {
            failures.push(format!(
                "{what}: reset_at {:?}, want {:?} (±{RESET_TOLERANCE_SECS} s)",
                got.reset_at, r.reset_at
            ));
        }
    }
    assert!(!reals.is_empty(), "real.toml lists no screens");
    assert!(
        failures.is_empty(),
        "{} real screen(s) misread:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_real_screen_file_is_in_the_manifest() {
    let listed: Vec<String> = real_fixtures().into_iter().map(|r| r.key).collect();
    for dir in fs::read_dir(screens_dir()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let profile = dir.file_name().unwrap().to_string_lossy().into_owned();
        for file in fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().file_name().to_string_lossy().into_owned();
            if file.starts_with("real-") && file.ends_with(".txt") {
                let key = format!("{profile}/{file}");
                assert!(listed.contains(&key), "{key} is not in real.toml");
            }
        }
    }
}

// === nudges: did the text leave the input box? ===

/// Real screens (`tests/fixtures/drafts/<profile>-<moment>.txt`) of each CLI with
/// "argus-draft-one please continue" typed and not submitted (`draft`), after a submit with the
/// profile's pause (`submitted`: the box is empty or gone), and with an Enter sent right behind
/// "argus-draft-two please continue" (`burst`: Codex and Gemini CLI take it into the draft).
#[test]
fn a_submitted_nudge_left_the_input_box() {
    let profiles = Profiles::builtin();
    let drafts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/drafts");
    let read = |name: &str| fs::read_to_string(drafts.join(name)).unwrap();
    for cli in ["claude", "codex", "gemini", "aider"] {
        let p = profiles.get(cli).unwrap();
        let one = "argus-draft-one please continue";
        let two = "argus-draft-two please continue";
        let draft = read(&format!("{cli}-draft.txt"));
        assert_eq!(p.draft_in_box(&draft, one), Some(true), "{cli}: typed");
        assert_eq!(
            p.draft_in_box(&draft, two),
            Some(false),
            "{cli}: other text"
        );
        let submitted = read(&format!("{cli}-submitted.txt"));
        assert_eq!(p.draft_in_box(&submitted, one), Some(false), "{cli}: sent");
        let burst = read(&format!("{cli}-burst.txt"));
        let held = matches!(cli, "codex" | "gemini");
        assert_eq!(p.draft_in_box(&burst, two), Some(held), "{cli}: burst");
        // The echo of the earlier message above the box is history, not the box.
        assert_eq!(p.draft_in_box(&burst, one), Some(false), "{cli}: echo");
        // A typed draft is still a prompt.
        assert_eq!(
            p.classify(&draft, 0, 0).condition,
            Condition::AtPrompt,
            "{cli}"
        );
    }
    // A screen streaming output shows no box: the profile cannot tell, the caller compares
    // screens.
    let aider = profiles.get("aider").unwrap();
    assert_eq!(aider.draft_in_box("> go\nThe answer is", "go"), None);
}
