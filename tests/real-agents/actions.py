#!/usr/bin/env python3
"""Checks, live, what Argus's actions do to each real CLI, the way the node agent sends them:

- nudge: the text typed with `send-keys -l`, then Enter as a separate `send-keys` right after
  (no pause), and again after the profile's `submit_delay_ms`: does the text reach the model
  as a submitted message?
- interrupt: one C-c while the CLI waits on a hung request: does it stop the turn and stay up?
- resume: the CLI respawned in its resume form (the profile's `resume.args`): does the next
  request carry the earlier conversation?

Run inside `unshare -n` (actions.sh does). Prints one line per check and exits 1 on a failure.
Usage: actions.py CACHE [--only CLI[,CLI]] [--json OUT]
"""

import argparse
import json
import os
import shutil
import re
import sys
import tempfile
import time
import tomllib

import agents
from drive import Server, end_pids, pids_with_env, read_versions
from pane import Pane, Timeout, Tmux

PROFILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/profiles/agents.toml")


def profile_data(name):
    """The profile's `resume.args` and `submit_delay_ms`: the checks test Argus's own data."""
    with open(PROFILES, "rb") as f:
        p = tomllib.load(f)["profiles"][name]
    return p.get("resume", {}).get("args", []), p.get("submit_delay_ms", 0)


def resumed(argv, args):
    """argv with the resume args after the program (after `node script.js` for npm CLIs)."""
    at = 2 if os.path.basename(argv[0]) == "node" else 1
    return argv[:at] + args + argv[at:]


def wait_marker(server, marker, since, timeout):
    """True when a request after `since` carries `marker`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(server.log, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                if r["t"] >= since and marker in r.get("markers", []):
                    return True
        time.sleep(0.2)
    return False


def check(agent, cache, server, root):
    results = {}
    home = tempfile.mkdtemp(prefix=f"{agent.name}-actions-home-", dir=root)
    work = tempfile.mkdtemp(prefix=f"{agent.name}-actions-work-", dir=root)
    launch = agent.launch(cache, home, work, server.port, "normal", False)
    tmux = Tmux(os.path.join(root, f"tmux-{agent.name}-actions.sock"))
    try:
        pane = Pane.start(tmux, "agent", launch.argv, launch.env, work)
        pane.hooks = agent.hooks
        pane.wait_for(agent.ready, 60)
        pane.wait_quiet(1.0, 30)

        # Nudge as the node agent sends it without a delay: text, then Enter at once.
        server.set({"mode": "answer", "cwd": work})
        since = time.time()
        pane.tmux.run("send-keys", "-t", pane.name, "-l", "argus-marker-one please continue")
        pane.keys("Enter")
        results["nudge_no_delay"] = wait_marker(server, "argus-marker-one", since, 20)
        if not results["nudge_no_delay"]:
            pane.keys("Enter")  # submit what was typed, so that the next checks start clean
            wait_marker(server, "argus-marker-one", since, 20)
        pane.wait_quiet(2.0, 60, unless=agent.busy)

        # Nudge as the node agent sends it with the profile's delay.
        resume_args, delay_ms = profile_data(agent.profile)
        since = time.time()
        pane.tmux.run("send-keys", "-t", pane.name, "-l", "argus-marker-two please continue")
        time.sleep(delay_ms / 1000)
        pane.keys("Enter")
        results["nudge_profile_delay"] = wait_marker(server, "argus-marker-two", since, 20)
        pane.wait_quiet(2.0, 60, unless=agent.busy)

        # Interrupt: one C-c on a hung turn.
        server.set({"mode": "hang", "cwd": work})
        pane.submit("argus-marker-three wait for it")
        pane.wait_for(agent.busy, 30)
        pid = pane.pid()
        pane.keys("C-c")
        # Stopped: the busy line is gone, or the prompt is back on the last line (Aider keeps
        # its old spinner line in the scrollback).
        deadline = time.monotonic() + 15
        stopped = False
        while not stopped and time.monotonic() < deadline:
            screen = pane.text()
            lines = [line for line in screen.splitlines() if line.strip()]
            stopped = not re.search(agent.busy, screen, re.M) or bool(
                lines and re.search(agent.ready, lines[-1]))
            time.sleep(0.2)
        pane.wait_quiet(2.0, 30)
        alive = not pane.dead() and os.path.exists(f"/proc/{pid}")
        results["interrupt_stops_turn"] = stopped
        results["interrupt_keeps_cli"] = alive

        # Resume: end the CLI, start it again in its resume form, ask once more.
        server.set({"mode": "answer", "cwd": work})
        argv = resumed(launch.argv, resume_args)
        envv = [f"{k}={v}" for k, v in sorted(launch.env.items())]
        # respawn-pane -k alone: a codex started at once meets its predecessor's app-server
        # still draining and exits ("Server is draining"); first end everything it left.
        end_pids(pids_with_env(f"HOME={home}"))
        tmux.run("respawn-pane", "-k", "-t", pane.name, "env", "-i", *envv, *argv)
        pane.wait_for(agent.ready, 60)
        pane.wait_quiet(2.0, 30)
        since = time.time()
        pane.submit("argus-marker-four what did I say before?")
        results["resume_restores_history"] = wait_marker(server, "argus-marker-one", since, 30)
        results["resume_args"] = " ".join(resume_args)
        results["submit_delay_ms"] = delay_ms
    finally:
        tmux.kill_server()
        end_pids(pids_with_env(f"HOME={home}"))
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    chosen = [a for a in agents.all_agents(read_versions())
              if not args.only or a.name in args.only.split(",")]
    root = tempfile.mkdtemp(prefix="argus-real-actions-")
    server = Server(root)
    report, failed = {}, False
    try:
        for agent in chosen:
            try:
                r = check(agent, args.cache, server, root)
            except Timeout as e:
                print(e, file=sys.stderr)
                r = {"error": str(e).splitlines()[0]}
            report[agent.name] = r
            print(f"{agent.name}: {json.dumps(r)}", flush=True)
            # What Argus relies on: a nudge with the profile's delay arrives, an interrupt
            # leaves the CLI running, a restart in resume form keeps the conversation.
            failed |= not (r.get("nudge_profile_delay") and r.get("interrupt_keeps_cli")
                           and r.get("resume_restores_history"))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
