//! The fuzz harness shared by the crates' fuzz tests (`shared/tests/fuzz.rs`,
//! `decide/tests/fuzz.rs`, node-agent's `tmux/fuzz.rs` and `tmux/control/fuzz.rs`, each
//! including this file by path): property tests over arbitrary bytes, mutated seeds of the
//! committed corpus (`tests/fuzz/corpus/TARGET/`), and the corpus itself replayed first.
//!
//! A target is a function of bytes that must not panic and must finish in bounded time. The
//! bound is computed in the same run from a baseline (the slowest corpus seed, best of three,
//! scaled by input length) times a generous factor, so that a slow machine or a debug build does
//! not fail it, while a catastrophic blow-up (a quadratic scan, a regex gone exponential, a loop
//! that never ends) does. `ARGUS_FUZZ_CASES` sets the number of generated inputs per target
//! (default 1000: a second or a few each in CI).

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Generated inputs per target unless `ARGUS_FUZZ_CASES` says otherwise.
pub const DEFAULT_CASES: u32 = 1000;

/// How many times slower than the baseline (per byte) an input may be.
const SLACK_FACTOR: u32 = 200;

/// Added to every bound: scheduling noise on a shared machine.
const SLACK_FLOOR: Duration = Duration::from_millis(250);

/// Longest generated input.
const MAX_LEN: usize = 8192;

/// Generated inputs per target.
pub fn cases() -> u32 {
    std::env::var("ARGUS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// The committed seeds of `target`, sorted by file name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the corpus {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("reading a corpus seed");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "the corpus {} is empty", dir.display());
    seeds
}

/// The time bound for an input of `len` bytes, from the baseline.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Slowest corpus seed (best of three runs).
    baseline: Duration,
    /// Its length (at least 1 KiB, so that short seeds do not make the per-byte rate tiny).
    baseline_len: usize,
}

impl Bound {
    /// A bound from a baseline time for an input of `len` bytes.
    pub fn new(baseline: Duration, len: usize) -> Self {
        Self {
            baseline: baseline.max(Duration::from_micros(1)),
            baseline_len: len.max(1024),
        }
    }

    fn of(&self, len: usize) -> Duration {
        let scale = (len as f64 / self.baseline_len as f64).max(1.0);
        self.baseline.mul_f64(scale) * SLACK_FACTOR + SLACK_FLOOR
    }
}

/// Runs `target` on `input`, checking its time against `bound`.
pub fn timed(
    name: &str,
    target: &impl Fn(&[u8]),
    input: &[u8],
    bound: &Bound,
) -> Result<(), TestCaseError> {
    let start = Instant::now();
    target(input);
    let took = start.elapsed();
    let limit = bound.of(input.len());
    if took > limit {
        return Err(TestCaseError::fail(format!(
            "{name}: an input of {} bytes took {took:?}, over the bound of {limit:?} (baseline \
             {:?} for {} bytes)",
            input.len(),
            bound.baseline,
            bound.baseline_len
        )));
    }
    Ok(())
}

/// Inputs: arbitrary bytes, arbitrary text, and corpus seeds with random edits (overwrites,
/// insertions, a truncation), which reach much deeper into structured parsers than noise.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    let mutated = (
        0..n,
        proptest::collection::vec(
            (any::<prop::sample::Index>(), any::<u8>(), any::<bool>()),
            0..12,
        ),
        any::<Option<prop::sample::Index>>(),
    )
        .prop_map(move |(i, edits, cut)| {
            let mut s = seeds[i].clone();
            for (at, byte, insert) in edits {
                if s.is_empty() || insert {
                    let at = at.index(s.len() + 1);
                    s.insert(at, byte);
                } else {
                    let at = at.index(s.len());
                    s[at] = byte;
                }
            }
            if let Some(cut) = cut {
                let at = cut.index(s.len() + 1);
                s.truncate(at);
            }
            s
        });
    prop_oneof![
        3 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..MAX_LEN),
        1 => ".{0,2000}".prop_map(String::into_bytes),
        1 => "[ -~\n]{0,4000}".prop_map(String::into_bytes),
    ]
}

/// Fuzzes `target` (named after its corpus folder): replays every seed, measures the baseline,
/// then runs [`cases`] generated inputs. Panics (the test fails) on a panic of the target or an
/// input over its time bound, naming the input.
pub fn fuzz(name: &str, target: impl Fn(&[u8])) {
    let seeds = corpus(name);
    // Warm up (lazy regexes, allocator) and replay: every seed must pass.
    for (file, seed) in &seeds {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(seed)));
        assert!(r.is_ok(), "{name}: the corpus seed {file} panics");
    }
    // The baseline: the slowest seed, best of three.
    let (baseline, baseline_len) = seeds
        .iter()
        .map(|(_, seed)| {
            let best = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    target(seed);
                    t.elapsed()
                })
                .min()
                .unwrap_or_default();
            (best, seed.len())
        })
        .max()
        .unwrap_or_default();
    let bound = Bound::new(baseline, baseline_len);
    for (file, seed) in &seeds {
        if let Err(e) = timed(name, &target, seed, &bound) {
            panic!("{name}: the corpus seed {file}: {e}");
        }
    }
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        // A slow input makes every shrinking step slow: give up shrinking after 30 s.
        max_shrink_time: 30_000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let strategy = inputs(seeds.into_iter().map(|(_, s)| s).collect());
    if let Err(e) = runner.run(&strategy, |input| timed(name, &target, &input, &bound)) {
        panic!(
            "{name}: {e}\n(add the failing input to tests/fuzz/corpus/{name}/ once it is fixed)"
        );
    }
}

/// The bytes as text, the way the parsers receive it (tmux output and screens are decoded
/// lossily).
pub fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}
