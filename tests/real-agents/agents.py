"""How to start each real CLI against the fake model server, in a private HOME.

One `Agent` per CLI: the files its first start wants (written ahead so that it skips onboarding,
or left out on purpose to show a first-run, login or trust dialog), its command line and
environment, and the screen shapes the driver waits for. The settings come from reading each
CLI's own code in the cache directory (see README.md).
"""

import json
import os
import subprocess
from dataclasses import dataclass, field

# A key of the real shape; the fake server accepts anything.
CLAUDE_KEY = "sk-ant-api03-argusfakeargusfakeargusfake-argus0000000000AA"


@dataclass
class Launch:
    argv: list
    env: dict = field(default_factory=dict)


@dataclass
class Agent:
    """One CLI: `profile` is the Argus profile name, `ready` a regex of its idle screen."""

    name: str
    profile: str
    version: str
    ready: str
    # The screen while it works on a turn; the driver waits for it to go away.
    busy: str

    # The question a tool permission shows.
    asks: str = ""
    # (regex, keys) of dialogs that may pop up mid-state, and how to dismiss them.
    hooks: list = field(default_factory=list)
    # variant -> [(regex, keys)]: screens to step through before a dialog state's capture.
    steps: dict = field(default_factory=dict)
    # A dialog state's question, when the CLI goes quiet before it shows (Aider stalls on its
    # offline price-list fetch first): the capture waits for it.
    dialog: str = ""

    def launch(self, cache, home, work, port, variant, retries):
        raise NotImplementedError


def base_env(home):
    return {
        "HOME": home,
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "XDG_CONFIG_HOME": f"{home}/.config",
        "XDG_CACHE_HOME": f"{home}/.cache",
        "XDG_DATA_HOME": f"{home}/.local/share",
        "XDG_STATE_HOME": f"{home}/.local/state",
        "NO_UPDATE_NOTIFIER": "1",
    }


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)


# === Claude Code ===


class Claude(Agent):
    def launch(self, cache, home, work, port, variant, retries):
        onboarded = variant != "onboarding"
        trusted = variant != "trust"
        write_json(f"{home}/.claude.json", {
            "hasCompletedOnboarding": onboarded,
            "numStartups": 3 if onboarded else 0,
            "theme": "dark",
            "autoUpdates": False,
            "hasResetAutoModeOptInForDefaultOffer": True,
            "customApiKeyResponses": {"approved": [CLAUDE_KEY[-20:]], "rejected": []},
            "projects": {work: {"hasTrustDialogAccepted": trusted,
                                "hasCompletedProjectOnboarding": True, "allowedTools": []}},
        })
        # The default mode asks before a tool runs; "auto" (the 2.1 default) would not. With
        # `defaultMode = "default"` in the settings instead of the flag, a dialog offers auto
        # mode after the first turn; skipAutoPermissionPrompt keeps it away.
        write_json(f"{home}/.claude/settings.json", {"skipAutoPermissionPrompt": True})
        env = base_env(home) | {
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
        }
        if variant == "subscription":
            env["CLAUDE_CODE_OAUTH_TOKEN"] = "sk-ant-oat01-argusfake"
        elif variant != "login":
            env["ANTHROPIC_API_KEY"] = CLAUDE_KEY
        if not retries:
            env["CLAUDE_CODE_MAX_RETRIES"] = "0"
        exe = f"{cache}/npm/node_modules/@anthropic-ai/claude-code/bin/claude.exe"
        return Launch([exe, "--permission-mode", "default"], env)


# === Codex CLI ===


class Codex(Agent):
    def launch(self, cache, home, work, port, variant, retries):
        codex_home = f"{home}/.codex"
        os.makedirs(codex_home, exist_ok=True)
        n = 4 if retries else 0
        lines = [
            'model = "gpt-5"',
            'approval_policy = "on-request"',
            'sandbox_mode = "read-only"',
            "check_for_update_on_startup = false",
        ]
        if variant != "login":
            lines += [
                'model_provider = "fake"',
                "[model_providers.fake]",
                'name = "fake"',
                f'base_url = "http://127.0.0.1:{port}/v1"',
                'env_key = "OPENAI_API_KEY"',
                'wire_api = "responses"',
                f"request_max_retries = {n}",
                f"stream_max_retries = {n}",
            ]
        if variant == "trust":
            # Codex asks about folders under version control only.
            subprocess.run(["git", "init", "-q", work], check=True)
        else:
            lines += [f'[projects."{work}"]', 'trust_level = "trusted"']
        with open(f"{codex_home}/config.toml", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        env = base_env(home) | {"CODEX_HOME": codex_home}
        if variant != "login":
            env["OPENAI_API_KEY"] = "sk-argusfake"
        js = f"{cache}/npm/node_modules/@openai/codex/bin/codex.js"
        return Launch(["node", js], env)


# === Gemini CLI ===


class Gemini(Agent):
    def launch(self, cache, home, work, port, variant, retries):
        # maxAttempts 1: final errors at once instead of its ten-attempt retry loop.
        settings = {"general": {"disableAutoUpdate": True, "disableUpdateNag": True,
                                "maxAttempts": 10 if retries else 1},
                    "ui": {"theme": "Default"},
                    "privacy": {"usageStatisticsEnabled": False}}
        if variant != "login":
            settings["security"] = {"auth": {"selectedType": "gemini-api-key"}}
        if variant == "onboarding":
            settings.pop("ui")
        write_json(f"{home}/.gemini/settings.json", settings)
        if variant != "trust":
            write_json(f"{home}/.gemini/trustedFolders.json", {work: "TRUST_FOLDER"})
        env = base_env(home) | {
            "GOOGLE_GEMINI_BASE_URL": f"http://127.0.0.1:{port}",
            "GEMINI_CLI_NO_RELAUNCH": "true",
        }
        if variant != "login":
            env["GEMINI_API_KEY"] = "argus-fake-key"
        js = f"{cache}/npm/node_modules/@google/gemini-cli/bundle/gemini.js"
        return Launch(["node", js], env)


# === Aider ===


class Aider(Agent):
    def launch(self, cache, home, work, port, variant, retries):
        os.makedirs(home, exist_ok=True)
        env = base_env(home) | {"GIT_AUTHOR_NAME": "argus", "GIT_AUTHOR_EMAIL": "a@b.c",
                                "GIT_COMMITTER_NAME": "argus", "GIT_COMMITTER_EMAIL": "a@b.c"}
        argv = [f"{cache}/aider-venv/bin/aider", "--no-check-update", "--analytics-disable",
                "--no-show-model-warnings"]
        if variant != "login":
            env["OPENAI_API_KEY"] = "sk-argusfake"
            argv += ["--openai-api-base", f"http://127.0.0.1:{port}/v1", "--model", "openai/gpt-5"]
        if variant != "onboarding":
            # First runs ask about .gitignore and offer the release notes.
            argv += ["--no-gitignore", "--no-show-release-notes"]
        if variant != "trust":
            subprocess.run(["git", "init", "-q", work], check=True)
        return Launch(argv, env)


def all_agents(versions):
    return [
        Claude("claude", "claude", versions["CLAUDE_CODE_VERSION"],
               ready=r"^❯\s*$", busy=r"(?i)esc to interrupt",
               asks=r"Do you want to (?:proceed|make this edit|create)",
               hooks=[(r"Make auto mode your default permission mode", ["Escape"])],
               # Offline, a first run without a key stops at its connectivity check before the
               # login screen; without a key after onboarding, the first message asks for /login.
               steps={"login": [(r"^❯\s*$", ["-l", "Reply please."]),
                                (r"Reply please\.", ["Enter"])]}),
        Codex("codex", "codex", versions["CODEX_VERSION"],
              ready=r"^› ", busy=r"(?i)esc to interrupt",
              asks=r"Would you like to|Press enter to confirm"),
        Gemini("gemini", "gemini", versions["GEMINI_CLI_VERSION"],
               ready=r"Type your message", busy=r"\(esc to cancel",
               asks=r"Allow execution|Apply this change|Allow edit|Allow once",
               # Its dialogs come after a start-up that can pause for seconds on a busy machine:
               # the capture waits for the question itself.
               dialog=r"How would you like to authenticate|Do you trust the files"),
        Aider("aider", "aider", versions["AIDER_VERSION"],
              ready=r"^>\s*$", busy=r"Waiting for",
              asks=r"\(Y\)es/\(N\)o", dialog=r"\(Y\)es/\(N\)o.*\[(?:Yes|No)\]:\s*$"),
    ]
