#!/usr/bin/env python3
"""Checks, live on the real Claude Code, that its hooks reach Argus and decide before the
screen: two sessions of the same CLI side by side, one with Argus's hooks installed by
`argusctl hooks install --agent claude` into its own settings (which already hold the lane's
settings: they must survive), one without. Each is asked to run a shell command (the fake model
server's `tool_shell`: a permission prompt), then the prompt is approved and the turn ends. For
each, the time from the prompt on the screen to Argus reporting waiting-permission, and from the
end of the turn to Argus reporting at-prompt, and which source decided.

Run inside `unshare -n` (hooks.sh does). Prints one JSON line and exits 1 on a failure.
Usage: hooks.py CACHE [--bin-dir target/debug]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import agents
from argus import BIN_DIR, Argus
from drive import Server, end_pids, pids_with_env, read_versions
from pane import Pane, Timeout, Tmux

POLICY = 'nudge_dwell = "1h"\nidle_checks = 1000\n'


def condition(argus, name):
    """(condition, source) of a session from `argusctl session`."""
    try:
        _, out = argus.ctl("session", argus.node_id, name, timeout=5)
    except subprocess.TimeoutExpired:
        return "", ""
    line = next((l for l in out.splitlines() if l.startswith("condition")), "")
    m = re.search(r"decided by the (\w+)", line)
    cols = line.split()
    return (cols[1] if len(cols) > 1 else ""), (m.group(1) if m else "")


def watch(argus, pane, name, screen_rx, want, timeout):
    """Polls the screen and Argus together: (seconds from the screen showing `screen_rx` to
    Argus reporting `want`, the source that decided; negative when Argus knew first)."""
    rx = re.compile(screen_rx, re.M)
    seen_screen = seen_argus = None
    source = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (seen_screen is None or seen_argus is None):
        now = time.monotonic()
        if seen_screen is None and rx.search(pane.text()):
            seen_screen = now
        if seen_argus is None:
            cond, src = condition(argus, name)
            if cond == want:
                seen_argus, source = time.monotonic(), src
        time.sleep(0.05)
    if seen_screen is None or seen_argus is None:
        raise Timeout(f"{name}: screen /{screen_rx}/ at {seen_screen}, Argus {want} at "
                      f"{seen_argus}; screen:\n{pane.text()}")
    return round(seen_argus - seen_screen, 3), source


def check(agent, cache, server, root, bin_dir):
    r = {}
    sock = os.path.join(root, "tmux-hooks.sock")
    tmux = Tmux(sock)
    argus_root = tempfile.mkdtemp(prefix="argus-", dir=root)
    homes = []
    argus = None
    try:
        panes = {}
        for name in ("plain", "hooked"):
            home = tempfile.mkdtemp(prefix=f"claude-{name}-home-", dir=root)
            work = tempfile.mkdtemp(prefix=f"claude-{name}-work-", dir=root)
            homes.append(home)
            launch = agent.launch(cache, home, work, server.port, "normal", False)
            if name == "hooked":
                settings = os.path.join(home, ".claude", "settings.json")
                with open(settings, encoding="utf-8") as f:
                    before = json.load(f)
                out = subprocess.run(
                    [os.path.join(bin_dir, "argusctl"), "hooks", "install", "--agent", "claude",
                     "--settings", settings], capture_output=True, text=True, check=True)
                r["install"] = out.stdout.strip().splitlines()[0][:100]
                with open(settings, encoding="utf-8") as f:
                    after = json.load(f)
                r["settings_kept"] = all(after.get(k) == v for k, v in before.items())
            # `env -i` in the pane: the hook finds the node agent's socket by this variable.
            env = launch.env | {"ARGUS_NODE_SOCKET": os.path.join(argus_root, "node", "node.sock")}
            pane = Pane.start(tmux, name, launch.argv, env, work, width=120, height=40)
            tmux.run("set-option", "-t", name, "@argus-profile", agent.profile)
            pane.hooks = agent.hooks
            panes[name] = pane
        for pane in panes.values():
            pane.wait_for(agent.ready, 60)
            pane.wait_quiet(1.0, 30)
        policy = os.path.join(root, "policy.toml")
        with open(policy, "w", encoding="utf-8") as f:
            f.write(POLICY)
        os.environ["ARGUS_POLICY"] = policy
        argus = Argus(argus_root, sock, bin_dir=bin_dir)
        argus.wait_listed(list(panes), 30)

        server.set({"mode": "tool_shell"})
        for name, pane in panes.items():
            pane.submit(f"argus-marker-{name} run a command")
            r[f"{name}_permission"] = watch(argus, pane, name, agent.asks,
                                            "waiting_permission", 30)
            for _ in range(3):
                pane.keys("Enter")  # the first option: yes
                try:
                    pane.wait_for(agent.asks, 10, absent=True)
                    break
                except Timeout:
                    continue
            r[f"{name}_at_prompt"] = watch(argus, pane, name, agent.ready, "at_prompt", 60)
    except (Timeout, RuntimeError, subprocess.SubprocessError, OSError) as e:
        print(f"claude hooks: {e}", file=sys.stderr)
        r["error"] = str(e).splitlines()[0] if str(e) else repr(e)
    finally:
        if argus:
            argus.stop()
        tmux.kill_server()
        for home in homes:
            end_pids(pids_with_env(f"HOME={home}"))
    return r


def check_others(all_agents, cache, server, root, bin_dir):
    """Codex's notify, Gemini CLI's hooks and Aider's notifications command, each installed the
    way the README says, on one answered turn: Argus must hear the end of the turn from the
    hook (the hook decides, or agrees with the screen and is credited)."""
    r = {}
    sock = os.path.join(root, "tmux-hooks-others.sock")
    tmux = Tmux(sock)
    argus_root = tempfile.mkdtemp(prefix="argus-others-", dir=root)
    argusctl = os.path.join(bin_dir, "argusctl")
    homes, panes, argus = [], {}, None
    try:
        for agent in all_agents:
            home = tempfile.mkdtemp(prefix=f"{agent.name}-home-", dir=root)
            work = tempfile.mkdtemp(prefix=f"{agent.name}-work-", dir=root)
            homes.append(home)
            launch = agent.launch(cache, home, work, server.port, "normal", False)
            argv = list(launch.argv)
            if agent.name == "aider":
                argv += ["--notifications", "--notifications-command",
                         f"{argusctl} self event --from aider"]
            else:
                settings = {"codex": f"{home}/.codex/config.toml",
                            "gemini": f"{home}/.gemini/settings.json"}[agent.name]
                subprocess.run([argusctl, "hooks", "install", "--agent", agent.name,
                                "--settings", settings], capture_output=True, text=True,
                               check=True)
            env = launch.env | {"ARGUS_NODE_SOCKET": os.path.join(argus_root, "node", "node.sock")}
            pane = Pane.start(tmux, agent.name, argv, env, work, width=120, height=40)
            tmux.run("set-option", "-t", agent.name, "@argus-profile", agent.profile)
            pane.hooks = agent.hooks
            panes[agent.name] = (agent, pane)
        for agent, pane in panes.values():
            pane.wait_for(agent.ready, 90)
            pane.wait_quiet(1.0, 30)
        argus = Argus(argus_root, sock, bin_dir=bin_dir)
        argus.wait_listed(list(panes), 30)
        server.set({"mode": "answer"})
        for name, (agent, pane) in panes.items():
            pane.submit(f"argus-marker-{name} reply please")
        for name, (agent, pane) in panes.items():
            # The answer on screen, then the hook's report of the turn's end (a report from
            # before the turn would be the screen's: no hook of these fires at start-up).
            try:
                pane.wait_for(r"answer is 42", 60)
            except Timeout as e:
                r[f"{name}_error"] = str(e).splitlines()[0]
                continue
            t0, got = time.monotonic(), ("", "")
            while time.monotonic() - t0 < 15 and got != ("at_prompt", "hook"):
                got = condition(argus, name)
                time.sleep(0.05)
            r[f"{name}_at_prompt"] = [round(time.monotonic() - t0, 3), got[1], got[0]]
    except (Timeout, RuntimeError, subprocess.SubprocessError, OSError) as e:
        print(f"hooks of the other CLIs: {e}", file=sys.stderr)
        r["error"] = str(e).splitlines()[0] if str(e) else repr(e)
    finally:
        if argus:
            argus.stop()
        tmux.kill_server()
        for home in homes:
            end_pids(pids_with_env(f"HOME={home}"))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--bin-dir", default=BIN_DIR)
    args = ap.parse_args()
    every = agents.all_agents(read_versions())
    agent = next(a for a in every if a.name == "claude")
    others = [a for a in every if a.name != "claude"]
    root = tempfile.mkdtemp(prefix="argus-real-hooks-")
    try:
        server = Server(root)
        try:
            r = check(agent, args.cache, server, root, args.bin_dir)
            o = check_others(others, args.cache, server, root, args.bin_dir)
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"claude hooks: {json.dumps(r)}", flush=True)
    print(f"other hooks: {json.dumps(o)}", flush=True)
    ok = (all(o.get(f"{a.name}_at_prompt", (0, ""))[1] == "hook" for a in others)
          and r.get("settings_kept")
          and r.get("hooked_permission", (0, ""))[1] == "hook"
          and r.get("plain_permission", (0, ""))[1] == "screen"
          and r.get("hooked_at_prompt") and r.get("plain_at_prompt"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
