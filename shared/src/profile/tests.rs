//! Unit tests of the profile engine and of the built-in profiles' trickier lines. Whole-screen
//! fixtures live in `shared/tests/profiles.rs`.

use proptest::prelude::*;

use super::*;

/// 2026-03-10T13:20:00Z.
const NOW: i64 = 1_773_148_800;

fn builtin() -> Profiles {
    Profiles::builtin()
}

fn classify(profile: &str, screen: &str) -> Classification {
    let profiles = builtin();
    let p = profiles.get(profile).unwrap();
    p.classify(screen, NOW, 0)
}

fn condition(profile: &str, screen: &str) -> Condition {
    classify(profile, screen).condition
}

// === the built-in file ===

#[test]
fn builtin_profiles_parse() {
    let parsed = Profiles::from_toml(include_str!("../../profiles/agents.toml"));
    let profiles = parsed.unwrap();
    assert!(profiles.version() >= 1);
    let mut names: Vec<&str> = profiles.names().collect();
    names.sort_unstable();
    assert_eq!(names, ["aider", "claude", "codex", "gemini", "shell"]);
    assert_eq!(builtin().version(), profiles.version());
}

#[test]
fn every_builtin_profile_submits_with_enter() {
    let profiles = builtin();
    for name in profiles.names() {
        assert_eq!(
            profiles.get(name).unwrap().submit_keys(),
            ["Enter"],
            "{name}"
        );
    }
}

#[test]
fn generic_is_the_shell_profile() {
    assert_eq!(builtin().generic().name, "shell");
}

// === process matching ===

#[test]
fn agents_match_by_comm_or_cmdline() {
    let p = builtin();
    let name = |comm: &str, cmdline: &str| p.match_process(comm, cmdline).map(|p| p.name.clone());
    assert_eq!(
        name("claude", "claude --continue").as_deref(),
        Some("claude")
    );
    assert_eq!(
        name(
            "node",
            "node /usr/local/bin/claude --dangerously-skip-permissions"
        )
        .as_deref(),
        Some("claude")
    );
    assert_eq!(
        name(
            "node",
            "node /usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"
        )
        .as_deref(),
        Some("claude")
    );
    assert_eq!(name("codex", "codex").as_deref(), Some("codex"));
    assert_eq!(
        name("codex-x86_64-un", "/usr/lib/node_modules/@openai/codex/vendor/x86_64-unknown-linux-musl/codex/codex-x86_64-unknown-linux-musl").as_deref(),
        Some("codex")
    );
    assert_eq!(
        name("node", "node /usr/bin/codex --full-auto").as_deref(),
        Some("codex")
    );
    assert_eq!(
        name(
            "aider",
            "/usr/bin/python3 /home/u/.local/bin/aider --model sonnet"
        )
        .as_deref(),
        Some("aider")
    );
    assert_eq!(
        name("python3", "python3 -m aider --architect").as_deref(),
        Some("aider")
    );
    assert_eq!(
        name(
            "python",
            "/home/u/.local/share/uv/tools/aider-chat/bin/python /home/u/.local/bin/aider"
        )
        .as_deref(),
        Some("aider")
    );
    assert_eq!(
        name("node", "node /usr/local/bin/gemini").as_deref(),
        Some("gemini")
    );
    assert_eq!(name("gemini", "gemini --yolo").as_deref(), Some("gemini"));
    assert_eq!(
        name(
            "node",
            "node --no-warnings=DEP0040 /usr/lib/node_modules/@google/gemini-cli/dist/index.js"
        )
        .as_deref(),
        Some("gemini")
    );
}

#[test]
fn shells_and_bystanders_match_no_profile() {
    let p = builtin();
    for (comm, cmdline) in [
        ("bash", "-bash"),
        ("bash", "/bin/bash"),
        ("zsh", "-zsh"),
        ("sh", "/bin/sh -c make test"),
        ("fish", "/usr/bin/fish"),
        ("dash", "dash"),
        ("vim", "vim claude.md"),
        ("less", "less /tmp/codex.log"),
        ("grep", "grep -r aider src/"),
        ("node", "node server.js"),
        ("python3", "python3 manage.py runserver"),
        ("cat", "cat gemini.txt"),
    ] {
        assert!(
            p.match_process(comm, cmdline).is_none(),
            "{comm} / {cmdline}"
        );
    }
}

#[test]
fn generic_profile_never_matches_by_process_and_cannot_be_given_patterns() {
    let err = Profiles::from_toml(
        r#"
        version = 1
        [profiles.shell.process]
        comm = ['^bash$']
        "#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("profiles.shell.process"), "{err}");
}

// === the TOML format ===

#[test]
fn errors_name_the_key_and_the_reason() {
    let bad_regex = Profiles::from_toml(
        r#"
        version = 2
        [profiles.mine.thinking]
        patterns = ['ok', '(unclosed']
        "#,
    )
    .unwrap_err();
    let msg = bad_regex.to_string();
    assert!(msg.contains("`mine`"), "{msg}");
    assert!(msg.contains("profiles.mine.thinking.patterns[1]"), "{msg}");
    assert!(msg.contains("not a valid regex"), "{msg}");

    let unknown_key =
        Profiles::from_toml("version = 1\n[profiles.mine]\nthinkin = {}\n").unwrap_err();
    assert!(unknown_key.to_string().contains("thinkin"), "{unknown_key}");

    let no_version = Profiles::from_toml("[profiles.mine]\n").unwrap_err();
    assert!(no_version.to_string().contains("version"), "{no_version}");

    let zero_lines = Profiles::from_toml(
        "version = 1\n[profiles.mine.prompt]\nlast_lines = 0\npatterns = ['>']\n",
    )
    .unwrap_err();
    assert!(
        zero_lines
            .to_string()
            .contains("profiles.mine.prompt.last_lines"),
        "{zero_lines}"
    );

    let bad_name = Profiles::from_toml("version = 1\n[profiles.Mine]\n").unwrap_err();
    assert!(bad_name.to_string().contains("profiles.Mine"), "{bad_name}");

    let empty_key =
        Profiles::from_toml("version = 1\n[profiles.mine]\nsubmit_keys = ['']\n").unwrap_err();
    assert!(
        empty_key
            .to_string()
            .contains("profiles.mine.submit_keys[0]"),
        "{empty_key}"
    );

    let clear_only =
        Profiles::from_toml("version = 1\n[profiles.mine.error]\ncleared_by = ['x']\n")
            .unwrap_err();
    assert!(
        clear_only
            .to_string()
            .contains("profiles.mine.error.cleared_by"),
        "{clear_only}"
    );

    let empty_pattern =
        Profiles::from_toml("version = 1\n[profiles.mine.error]\npatterns = ['']\n").unwrap_err();
    assert!(
        empty_pattern
            .to_string()
            .contains("profiles.mine.error.patterns[0]"),
        "{empty_pattern}"
    );
}

#[test]
fn windows_and_precedence() {
    let p = Profiles::from_toml(
        r#"
        version = 1
        [profiles.t]
        last_lines = 3
        submit_keys = ["C-m"]
        [profiles.t.prompt]
        last_lines = 1
        patterns = ['^>$']
        [profiles.t.error]
        patterns = ['^ERR']
        cleared_by = ['^OK']
        [profiles.t.thinking]
        patterns = ['^busy']
        [profiles.t.permission]
        patterns = ['\?$']
        [profiles.t.rate_limit]
        patterns = ['^LIMIT']
        "#,
    )
    .unwrap();
    let t = p.get("t").unwrap();
    assert_eq!(t.submit_keys(), ["C-m"]);
    let c = |s: &str| t.classify(s, NOW, 0).condition;
    assert_eq!(c(""), Condition::None);
    assert_eq!(c("\n\n  \n"), Condition::None);
    assert_eq!(c("text\n>\n\n\n"), Condition::AtPrompt);
    // The prompt window is one line.
    assert_eq!(c(">\ntext"), Condition::None);
    assert_eq!(c("ERR x\n>"), Condition::Error);
    assert_eq!(c("ERR x\nOK\n>"), Condition::AtPrompt);
    // The newest of a limit, a busy line and an error wins.
    assert_eq!(c("busy\nERR x\nmore"), Condition::Error);
    assert_eq!(c("ERR x\nbusy\nmore"), Condition::Thinking);
    // A prompt on the last line ends the busy line above it, and what came before it.
    assert_eq!(c("ERR x\nbusy\n>"), Condition::AtPrompt);
    assert_eq!(c("busy\nERR x\n>"), Condition::Error);
    assert_eq!(c("LIMIT\nbusy"), Condition::Thinking);
    assert_eq!(c("busy\nLIMIT"), Condition::RateLimited);
    // A question holds the screen whatever is below it.
    assert_eq!(c("go on?\nbusy"), Condition::WaitingPermission);
    // ...until the turn ends: then the question was answered.
    assert_eq!(c("go on?\nbusy\n>"), Condition::AtPrompt);
    assert_eq!(c("LIMIT\ngo on?\nbusy"), Condition::WaitingPermission);
    // Blank lines do not count towards a window; the fourth non-blank line from the bottom is out.
    assert_eq!(c("LIMIT\n\n\na\n\nb\n\nc\n\n"), Condition::None);
    assert_eq!(c("LIMIT\n\n\na\n\nb\n\n"), Condition::RateLimited);
    assert_eq!(c("LIMIT\r\nb\r\n>\r\n"), Condition::RateLimited);
}

#[test]
fn overrides_replace_by_name_and_add_new_names() {
    let operator = Profiles::from_toml(
        r#"
        version = 7
        [profiles.claude]
        description = "site build of claude"
        [profiles.claude.process]
        comm = ['^claude-site$']
        [profiles.claude.prompt]
        patterns = ['^READY$']
        [profiles.opencode.process]
        comm = ['^opencode$']
        "#,
    )
    .unwrap();
    let p = builtin().with_overrides(operator);
    assert_eq!(p.version(), 7);
    assert_eq!(p.get("claude").unwrap().description, "site build of claude");
    assert!(p.match_process("claude", "claude").is_none());
    assert_eq!(p.match_process("claude-site", "").unwrap().name, "claude");
    assert_eq!(
        p.match_process("opencode", "opencode").unwrap().name,
        "opencode"
    );
    assert_eq!(p.match_process("codex", "codex").unwrap().name, "codex");
    assert_eq!(
        p.get("claude").unwrap().classify("READY", NOW, 0).condition,
        Condition::AtPrompt
    );
    assert_eq!(p.generic().name, "shell");
}

#[test]
fn a_set_without_generic_profile_classifies_nothing() {
    let p = Profiles::from_toml("version = 1\n").unwrap();
    assert_eq!(p.generic().name, "shell");
    assert_eq!(p.generic().classify("$", NOW, 0), Classification::default());
    assert_eq!(p.generic().submit_keys(), ["Enter"]);
}

#[test]
fn condition_names_round_trip() {
    for c in [
        Condition::None,
        Condition::AtPrompt,
        Condition::Thinking,
        Condition::WaitingPermission,
        Condition::RateLimited,
        Condition::Error,
    ] {
        assert_eq!(Condition::parse(c.as_str()), Some(c));
        assert_eq!(c.to_string(), c.as_str());
    }
    assert_eq!(Condition::parse("idle"), None);
}

// === built-in patterns, line by line ===

#[test]
fn claude_rate_limit_shapes() {
    for line in [
        "  ⎿  You've hit your session limit · resets 8:50pm (UTC)",
        "● You've hit your limit · resets Feb 17 at 2pm (Asia/Seoul)",
        "Claude usage limit reached. Your limit will reset at 3pm (Europe/Berlin).",
        "Claude AI usage limit reached|1767225600",
        "5-hour limit reached ∙ resets 3pm",
        "  ⎿  API Error: 429 {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\"}}",
    ] {
        assert_eq!(condition("claude", line), Condition::RateLimited, "{line}");
    }
    for line in [
        "+    // Return 429 Too Many Requests once the rate limit is reached",
        "  12 +        \"usage limit reached\" => Kind::Usage,",
        "⏺ I'll add a rate limiter in src/limit.rs so callers see \"You've hit your limit\".",
        "Implemented the usage limit reached banner.",
    ] {
        assert_ne!(condition("claude", line), Condition::RateLimited, "{line}");
    }
}

#[test]
fn claude_reset_times() {
    let at = |s: &str| classify("claude", s).reset_at;
    assert_eq!(
        at("Claude AI usage limit reached|1767225600"),
        Some(1_767_225_600)
    );
    // 13:20 UTC now: 3pm UTC today.
    assert_eq!(
        at("5-hour limit reached ∙ resets 3pm"),
        Some(NOW + 100 * 60)
    );
    assert_eq!(at("You've hit your session limit"), None);
    // The reset time wrapped onto the next line.
    assert_eq!(
        at("Claude usage limit reached. Your limit will\nreset at 3pm (Europe/Berlin).\n> "),
        Some(NOW + 100 * 60)
    );
    // Offsets: the local 3pm of UTC+1 is 14:00 UTC.
    let p = builtin();
    let claude = p.get("claude").unwrap();
    assert_eq!(
        claude
            .classify("5-hour limit reached ∙ resets 3pm", NOW, 3600)
            .reset_at,
        Some(NOW + 40 * 60)
    );
}

#[test]
fn claude_thinking_and_finished_lines() {
    for line in [
        "✻ Thinking… (5s · ↑ 120 tokens · esc to interrupt)",
        "✶ Cooking… (2m 14s · esc to interrupt)",
        "✳ Drizzling… (6s · thinking with medium effort)",
        "· Thinking… (esc to interrupt · ctrl+t to show todos)",
    ] {
        assert_eq!(condition("claude", line), Condition::Thinking, "{line}");
    }
    for line in [
        "✻ Worked for 5s",
        "✻ Thinking…",
        "✻ Churned for 2h 0m 54s",
        "Press esc to interrupt it.",
    ] {
        assert_eq!(condition("claude", line), Condition::None, "{line}");
    }
}

#[test]
fn aider_answered_confirmation_is_not_a_question() {
    assert_eq!(
        condition(
            "aider",
            "Run shell command? (Y)es/(N)o/(D)on't ask again [Yes]: "
        ),
        Condition::WaitingPermission
    );
    assert_eq!(
        condition(
            "aider",
            "Run shell command? (Y)es/(N)o/(D)on't ask again [Yes]: y\n> "
        ),
        Condition::AtPrompt
    );
}

#[test]
fn aider_retry_then_success_clears_the_rate_limit() {
    let retrying = "litellm.RateLimitError: AnthropicException - rate_limit_error\n\
                    The API provider has rate limited you. Try again later or check your quotas.\n\
                    Retrying in 0.5 seconds...";
    // Aider retrying by itself is busy, and its back-off is no reset time.
    let c = classify("aider", retrying);
    assert_eq!(c.condition, Condition::Thinking);
    assert_eq!(c.reset_at, None);
    // Once it stops at its prompt after the limit, the limit stands, without a reset time.
    let gave_up = classify(
        "aider",
        &format!(
            "{retrying}\nlitellm.RateLimitError: rate_limit_error\nThe API provider has rate limited you. Try again later or check your quotas.\n> "
        ),
    );
    assert_eq!(gave_up.condition, Condition::RateLimited);
    assert_eq!(gave_up.reset_at, None);
    let answered = format!("{retrying}\nParis.\nTokens: 12 sent, 4 received.\n> ");
    assert_eq!(condition("aider", &answered), Condition::AtPrompt);
}

#[test]
fn shell_prompts() {
    for line in [
        "user@host:~/src/argus$ ",
        "root@box:/# ",
        "bash-5.2$ ",
        "~/proj $",
        "(venv) ~/proj $ ",
        "/srv/app# ",
        "$ ",
        "% ",
        "argus on  main ❯ ",
        "me@laptop ~ % ",
    ] {
        assert_eq!(condition("shell", line), Condition::AtPrompt, "{line}");
    }
    for line in ["Downloading 50%", "</div>", "total 48", "echo $"] {
        assert_eq!(condition("shell", line), Condition::None, "{line}");
    }
}

proptest! {
    #[test]
    fn classify_never_panics(screen in any::<String>(), now in any::<i64>(), offset in any::<i32>()) {
        let profiles = builtin();
        for name in profiles.names() {
            let _ = profiles.get(name).unwrap().classify(&screen, now, offset);
        }
    }

    #[test]
    fn trailing_blank_lines_change_nothing(
        lines in prop::collection::vec(
            r"(> |❯ |› |✻ Thinking… \(3s · esc to interrupt\)|Do you want to proceed\?|\$|[a-z ]{0,20}|You've hit your limit · resets 3pm)",
            0..20,
        ),
        padding in r"[ \n]{0,10}",
    ) {
        let screen = lines.join("\n");
        let padded = format!("{screen}\n{padding}");
        let profiles = builtin();
        for name in profiles.names() {
            let p = profiles.get(name).unwrap();
            prop_assert_eq!(p.classify(&screen, NOW, 0), p.classify(&padded, NOW, 0), "{}", name);
        }
    }
}

// === acting on the real CLIs ===

#[test]
fn restarts_resume_in_each_cli_s_own_form() {
    let p = builtin();
    let resume = |profile: &str, cmd: &str| p.get(profile).unwrap().resume_command(cmd);
    assert_eq!(resume("claude", "claude"), "claude --continue");
    assert_eq!(
        resume(
            "claude",
            "claude --model opus --append-system-prompt 'be brief'"
        ),
        "claude --continue --model opus --append-system-prompt 'be brief'"
    );
    assert_eq!(
        resume("claude", "claude --resume abc"),
        "claude --resume abc"
    );
    assert_eq!(resume("codex", "codex"), "codex resume --last");
    assert_eq!(
        resume(
            "codex",
            "node /usr/lib/node_modules/@openai/codex/bin/codex.js -m gpt-5"
        ),
        "node /usr/lib/node_modules/@openai/codex/bin/codex.js resume --last -m gpt-5"
    );
    assert_eq!(
        resume("codex", "codex resume --last"),
        "codex resume --last"
    );
    assert_eq!(
        resume("gemini", "env FOO=1 gemini -y"),
        "env FOO=1 gemini --resume latest -y"
    );
    assert_eq!(
        resume("aider", "python3 -m aider --model x"),
        "python3 -m aider --restore-chat-history --model x"
    );
    assert_eq!(
        resume(
            "claude",
            "env -i HOME=/h PATH=/bin /opt/claude.exe --permission-mode default"
        ),
        "env -i HOME=/h PATH=/bin /opt/claude.exe --continue --permission-mode default"
    );
    assert_eq!(resume("shell", "bash"), "bash");
    assert_eq!(p.get("codex").unwrap().submit_delay().as_millis(), 300);
}

#[test]
fn numbered_menus_are_never_prompts() {
    for (profile, menu) in [
        ("codex", "› 1. Yes, proceed (y)\n  2. No (esc)"),
        ("claude", "❯ 1. Yes\n  2. No"),
        ("codex", "Pick one\n› 2. Something else"),
    ] {
        assert_ne!(condition(profile, menu), Condition::AtPrompt, "{menu}");
    }
    assert_eq!(
        condition("codex", "› Ask Codex to do anything"),
        Condition::AtPrompt
    );
}

#[test]
fn an_old_banner_above_a_newer_turn_is_history() {
    let claude = "● API Error: 500 Internal server error\n❯ try again\n● Done, the tests pass.\n❯ \n  ? for shortcuts";
    assert_eq!(condition("claude", claude), Condition::AtPrompt);
    let codex = "■ You've hit your usage limit. Try again at 3:05 PM.\n› go on\n• Fixed it.\n  Worked for 3s\n› Ask Codex to do anything\n  ? for shortcuts";
    assert_eq!(condition("codex", codex), Condition::AtPrompt);
    // The same banner with nothing newer below is the state.
    let limited = "› go on\n■ You've hit your usage limit. Try again at 3:05 PM.\n› Ask Codex to do anything\n  ? for shortcuts";
    assert_eq!(condition("codex", limited), Condition::RateLimited);
}

#[test]
fn a_cli_retrying_by_itself_is_busy_and_its_back_off_is_no_reset() {
    for (profile, screen) in [
        (
            "claude",
            "❯ go\n✻ API error · retrying in 31s · attempt 2/10\n❯ \n  esc to interrupt",
        ),
        (
            "claude",
            "❯ go\nAPI error · retrying in 4s · attempt 3/10\n❯ \n  ? for shortcuts",
        ),
        (
            "aider",
            "litellm.RateLimitError: rate limited\nThe API provider has rate limited you. Try again in 10 minutes.\nRetrying in 1.0 seconds...",
        ),
    ] {
        let c = classify(profile, screen);
        assert_eq!(c.condition, Condition::Thinking, "{screen}");
        assert_eq!(c.reset_at, None, "{screen}");
    }
}

#[test]
fn streaming_output_without_a_status_line_is_busy() {
    let codex = "› hi\n• streaming slowly word\n› Ask Codex to do anything\n  gpt-5 · ~/src";
    assert_eq!(condition("codex", codex), Condition::Thinking);
    let done =
        "› hi\n• the answer\n  Worked for 2s • 12:30\n› Ask Codex to do anything\n  gpt-5 · ~/src";
    assert_eq!(condition("codex", done), Condition::AtPrompt);
    let aider = "> explain\nThe probe loop walks every pane";
    assert_eq!(condition("aider", aider), Condition::Thinking);
    let aider_done =
        "> explain\nThe probe loop walks every pane\nTokens: 2k sent, 13 received.\n> ";
    assert_eq!(condition("aider", aider_done), Condition::AtPrompt);
}

#[test]
fn a_prompt_on_the_last_line_ends_the_busy_line_above_it() {
    // Aider after one C-c on a hung request: the spinner stays in the scrollback.
    let aider = "> hello\n  ░█       Waiting for openai/gpt-5\n^C again to exit\n──────────\n> ";
    assert_eq!(condition("aider", aider), Condition::AtPrompt);
    let busy = "> hello\n  ░█       Waiting for openai/gpt-5";
    assert_eq!(condition("aider", busy), Condition::Thinking);
}

#[test]
fn codex_after_an_interrupt() {
    // Escape (its interrupt key) ends the turn: back at the prompt, no error.
    let stopped = "› wait for it\n■ Conversation interrupted - use /feedback if something went wrong\n› Ask Codex to do anything\n  gpt-5 default · ~/src";
    assert_eq!(condition("codex", stopped), Condition::AtPrompt);
    // C-c asks what to do, and the turn goes on meanwhile: a person must choose.
    let menu = "› 1. Cancel task        Stop the current task and stay in Codex\n  2. Run in background  Exit Codex and leave the task running\n  3. Exit               Stop the current task and exit Codex\n  enter select · esc back";
    assert_eq!(condition("codex", menu), Condition::WaitingPermission);
}

#[test]
fn interrupts_use_the_key_that_never_exits_each_cli() {
    // (profile, keys, "press again to exit" window): Claude Code and Gemini CLI say "esc to
    // interrupt" / "esc to cancel" and exit on C-c twice; Codex answers C-c with a menu (and
    // exits on one at an empty prompt); Aider stops on C-c and exits on a second within 2 s.
    let p = builtin();
    for (name, keys, window_ms) in [
        ("claude", ["Escape"], 2000),
        ("codex", ["Escape"], 1000),
        ("gemini", ["Escape"], 3000),
        ("aider", ["C-c"], 2000),
        ("shell", ["C-c"], DEFAULT_INTERRUPT_WINDOW_MS),
    ] {
        let profile = p.get(name).unwrap();
        assert_eq!(profile.interrupt_keys(), keys, "{name}");
        assert_eq!(
            profile.interrupt_window().as_millis() as u64,
            window_ms,
            "{name}"
        );
    }
    assert_eq!(
        builtin_profile("codex").map(|p| p.interrupt_window().as_millis()),
        Some(1000)
    );
    let err = Profiles::from_toml("version = 1\n[profiles.x]\ninterrupt_window_ms = 600000\n")
        .unwrap_err();
    assert!(
        err.to_string().contains("profiles.x.interrupt_window_ms"),
        "{err}"
    );
}

#[test]
fn the_submit_pause_defaults_to_one_that_works_for_all_four() {
    let p = builtin();
    for (name, ms) in [
        ("claude", 200),
        ("codex", 300),
        ("gemini", 300),
        ("aider", 200),
    ] {
        assert_eq!(
            p.get(name).unwrap().submit_delay().as_millis(),
            ms,
            "{name}"
        );
    }
    let mine = Profiles::from_toml("version = 1\n[profiles.mine]\n").unwrap();
    assert_eq!(
        mine.get("mine").unwrap().submit_delay().as_millis() as u64,
        DEFAULT_SUBMIT_DELAY_MS
    );
}

#[test]
fn a_restart_never_opens_a_picker() {
    let p = builtin();
    let resume = |profile: &str, cmd: &str| p.get(profile).unwrap().resume_command(cmd);
    // The picker forms (no session named): replaced by the non-interactive resume form.
    assert_eq!(resume("claude", "claude -r"), "claude --continue");
    assert_eq!(
        resume("claude", "claude --resume --model opus"),
        "claude --continue --model opus"
    );
    assert_eq!(resume("codex", "codex resume"), "codex resume --last");
    assert_eq!(
        resume("codex", "codex resume -m gpt-5"),
        "codex resume --last -m gpt-5"
    );
    assert_eq!(resume("codex", "codex fork"), "codex resume --last");
    // A named session, or the resume form itself, is kept.
    assert_eq!(resume("claude", "claude -r abc"), "claude -r abc");
    assert_eq!(
        resume("claude", "claude --resume=abc"),
        "claude --resume=abc"
    );
    assert_eq!(
        resume("codex", "codex resume 0199ab"),
        "codex resume 0199ab"
    );
    assert_eq!(resume("codex", "codex fork --last"), "codex fork --last");
    // Gemini CLI reads a bare `--resume` as "latest": no picker.
    assert_eq!(resume("gemini", "gemini --resume"), "gemini --resume");
    // Every built-in resume form is non-interactive, whatever the start command.
    for name in ["claude", "codex", "gemini", "aider"] {
        let profile = p.get(name).unwrap();
        for start in [
            name,
            &format!("{name} --model x"),
            &format!("/opt/bin/{name} -y"),
        ] {
            let form = profile.resume_command(start);
            assert_ne!(form, *start, "{name}: {start}");
            assert_eq!(profile.without_picker(&form), form, "{name}: {form}");
        }
    }
}

#[test]
fn tmux_and_other_programs_arguments_are_never_agents() {
    let p = builtin();
    for (comm, cmdline) in [
        // tmux's server, and a pane's process before tmux exec'd its command: the command line
        // of the `tmux new-session` that started the server, session name and all.
        (
            "tmux: server",
            "tmux -S /tmp/s -f /dev/null new-session -d -s aider aider --model x",
        ),
        ("tmux", "tmux new -s claude claude"),
        ("tmux: client", "/usr/bin/tmux attach -t codex"),
        (
            "tmux: server",
            "tmux new -s x node /usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
        ),
        // Another program naming an agent in its arguments.
        ("vim", "vim /usr/lib/node_modules/@openai/codex/README.md"),
        ("watch", "watch -n1 tmux capture-pane -p -t gemini"),
        ("less", "less /home/u/.aider.chat.history.md"),
    ] {
        assert!(
            p.match_process(comm, cmdline).is_none(),
            "{comm}: {cmdline}"
        );
    }
    // Patterns free to match anywhere in a command line are refused.
    let err = Profiles::from_toml(
        "version = 1\n[profiles.x.process]\ncmdline = ['@anthropic-ai/claude-code/']\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("profiles.x.process.cmdline[0]"),
        "{err}"
    );
}

#[test]
fn login_trust_and_first_run_screens_are_dialogs() {
    for (profile, line) in [
        (
            "claude",
            " Quick safety check: Is this a project you created or one you trust? (Like your own code",
        ),
        ("claude", "  ⎿  Not logged in · Please run /login"),
        (
            "codex",
            "  Trust this folder? Codex can read, edit, and run files here, subject to your",
        ),
        ("codex", "> 1. Sign in with ChatGPT"),
        (
            "gemini",
            "│   How would you like to authenticate for this project?     │",
        ),
        (
            "aider",
            "Add .aider* to .gitignore (recommended)? (Y)es/(N)o [Yes]:",
        ),
    ] {
        assert_eq!(condition(profile, line), Condition::Dialog, "{line}");
    }
}

proptest! {
    /// Whatever came before, a newer agent turn below it leaves no limit, error or dialog live.
    #[test]
    fn a_newer_turn_voids_every_banner_above_it(
        banner in prop::sample::select(vec![
            "● API Error: 500 Internal server error",
            "  ⎿  You've hit your 5-hour limit · resets 2:29pm (UTC)",
            "  ⎿  Not logged in · Please run /login",
        ]),
        filler in prop::collection::vec("[a-z ]{0,30}", 0..4),
    ) {
        let mut screen = vec![banner.to_owned()];
        screen.extend(filler.iter().map(|f| format!("  {f}")));
        screen.push("● Done.".to_owned());
        screen.push("❯ ".to_owned());
        let c = classify("claude", &screen.join("\n"));
        prop_assert_eq!(c.condition, Condition::AtPrompt);
    }

    /// A numbered entry behind any selection marker is never read as a prompt.
    #[test]
    fn menu_entries_are_not_prompts(marker in "[›❯>]", n in 1u8..10, text in "[A-Za-z ,]{1,30}") {
        let line = format!("{marker} {n}. {text}");
        for profile in ["claude", "codex", "gemini"] {
            prop_assert_ne!(condition(profile, &line), Condition::AtPrompt);
        }
    }
}

#[test]
fn a_restart_resumes_the_conversation_the_agent_named() {
    let p = builtin();
    let claude = p.get("claude").expect("claude");
    let id = "2b246e8d-f2c5-4cc9-aa53-2c283548eb0d";
    assert_eq!(
        claude.resume_with_id("claude", id).as_deref(),
        Some("claude --resume 2b246e8d-f2c5-4cc9-aa53-2c283548eb0d")
    );
    assert_eq!(
        claude
            .resume_with_id("env A=1 claude --continue --model opus", id)
            .as_deref(),
        Some("env A=1 claude --resume 2b246e8d-f2c5-4cc9-aa53-2c283548eb0d --model opus")
    );
    assert_eq!(
        claude
            .resume_with_id("claude --resume 0ld-id -r --verbose", id)
            .as_deref(),
        Some("claude --resume 2b246e8d-f2c5-4cc9-aa53-2c283548eb0d --verbose")
    );
    // Not a plain id: the usual resume form instead.
    assert_eq!(claude.resume_with_id("claude", "x; rm -rf ~"), None);
    assert_eq!(claude.resume_with_id("claude", ""), None);
    // Codex's notify names a thread id that `codex resume <id>` does not find: no id form.
    let codex = p.get("codex").expect("codex");
    assert_eq!(codex.resume_with_id("codex resume --last", id), None);
    let gemini = p.get("gemini").expect("gemini");
    assert_eq!(gemini.resume_with_id("gemini", id), None);
}
