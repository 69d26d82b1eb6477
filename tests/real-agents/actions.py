#!/usr/bin/env python3
"""Checks, live, what Argus's actions do to each real CLI, sent by the real node agent
(`argusctl` to a real controller; the node agent watches the CLI's private tmux server):

- the CLI itself: text typed with `send-keys -l`, then Enter at once as a separate `send-keys`:
  does it arrive? (It does not on every TUI: hence the profiles' `submit_delay_ms`.)
- nudge: `argusctl nudge`: does the text reach the model as a submitted message?
- interrupt: `argusctl interrupt` (one C-c) on a hung request: does the turn stop, the CLI stay?
- restart: `argusctl restart` from the session's own start command: the node agent adds the
  profile's `resume.args`; does the next request carry the earlier conversation?

Run inside `unshare -n` (actions.sh does). Prints one line per check and exits 1 on a failure.
Usage: actions.py CACHE [--only CLI[,CLI]] [--json OUT] [--bin-dir target/debug]
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import tomllib

import agents
from argus import BIN_DIR, Argus
from drive import Server, end_pids, pids_with_env, read_versions
from pane import Pane, Timeout, Tmux

PROFILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/profiles/agents.toml")


def profile_data(name):
    """The profile's `resume.args` and `submit_delay_ms`: the checks test Argus's own data."""
    with open(PROFILES, "rb") as f:
        p = tomllib.load(f)["profiles"][name]
    return p.get("resume", {}).get("args", []), p.get("submit_delay_ms", 0)


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


def check(agent, cache, server, root, bin_dir):
    results = {}
    home = tempfile.mkdtemp(prefix=f"{agent.name}-actions-home-", dir=root)
    work = tempfile.mkdtemp(prefix=f"{agent.name}-actions-work-", dir=root)
    launch = agent.launch(cache, home, work, server.port, "normal", False)
    sock = os.path.join(root, f"tmux-{agent.name}-actions.sock")
    tmux = Tmux(sock)
    argus = None
    try:
        pane = Pane.start(tmux, "agent", launch.argv, launch.env, work)
        tmux.run("set-option", "-t", "agent", "@argus-profile", agent.profile)
        pane.hooks = agent.hooks
        pane.wait_for(agent.ready, 60)
        pane.wait_quiet(1.0, 30)

        # The CLI itself: text, then Enter at once as a separate send-keys.
        server.set({"mode": "answer", "cwd": work})
        since = time.time()
        pane.tmux.run("send-keys", "-t", pane.name, "-l", "argus-marker-one please continue")
        pane.keys("Enter")
        results["nudge_no_delay"] = wait_marker(server, "argus-marker-one", since, 20)
        if not results["nudge_no_delay"]:
            pane.keys("Enter")  # submit what was typed, so that the next checks start clean
            wait_marker(server, "argus-marker-one", since, 20)
        pane.wait_quiet(2.0, 60, unless=agent.busy)

        # From here on through Argus: the real node agent executes the commands.
        argus_root = tempfile.mkdtemp(prefix=f"{agent.name}-argus-", dir=root)
        argus = Argus(argus_root, sock, bin_dir=bin_dir)
        listed = argus.wait_listed(["agent"], 30)
        results["argus_sees"] = listed.get("agent", "(not listed)")

        # Nudge as the node agent sends it (the profile's submit delay).
        _, delay_ms = profile_data(agent.profile)
        results["submit_delay_ms"] = delay_ms
        since = time.time()
        code, out = argus.ctl("nudge", argus.node_id, "agent", "argus-marker-two please continue")
        results["nudge_sent"] = code == 0 or out.strip()[-120:]
        results["argus_nudge_arrives"] = wait_marker(server, "argus-marker-two", since, 20)
        pane.wait_quiet(2.0, 60, unless=agent.busy)

        # Interrupt (one C-c, as the policy sends it) on a hung turn.
        server.set({"mode": "hang", "cwd": work})
        pane.submit("argus-marker-three wait for it")
        pane.wait_for(agent.busy, 30)
        pid = pane.pid()
        code, out = argus.ctl("interrupt", argus.node_id, "agent")
        results["interrupt_sent"] = code == 0 or out.strip()[-120:]
        # Stopped: the busy line is gone, or the prompt is back on the last line (Aider keeps
        # its old spinner line in the scrollback).
        # It must hold for two seconds: a TUI redrawing may lose its busy line for a frame.
        deadline = time.monotonic() + 15
        stopped, since_ok = False, None
        while not stopped and time.monotonic() < deadline:
            screen = pane.text()
            lines = [line for line in screen.splitlines() if line.strip()]
            ok = not re.search(agent.busy, screen, re.M) or bool(
                lines and re.search(agent.ready, lines[-1]))
            since_ok = (since_ok or time.monotonic()) if ok else None
            stopped = since_ok is not None and time.monotonic() - since_ok >= 2.0
            time.sleep(0.2)
        results["interrupt_stops_turn"] = stopped
        results["after_interrupt"] = [l for l in pane.text().splitlines() if l.strip()][-4:]
        if not stopped:
            pane.keys("Escape")  # leave the hung turn, so that the restart check can run
            pane.wait_for(agent.busy, 30, absent=True)
        pane.wait_quiet(2.0, 30)
        results["interrupt_keeps_cli"] = not pane.dead() and os.path.exists(f"/proc/{pid}")

        # Restart through Argus, from the session's own start command: the node agent adds the
        # profile's resume arguments. Does the next request carry the first conversation?
        server.set({"mode": "answer", "cwd": work})
        old_pid = pane.pid()
        code, out = argus.ctl("restart", argus.node_id, "agent")
        results["restart_accepted"] = code == 0 or out.strip()[-120:]
        deadline = time.monotonic() + 30
        while pane.pid() == old_pid and time.monotonic() < deadline:
            time.sleep(0.2)
        results["restarted"] = pane.pid() != old_pid
        time.sleep(3)
        results["after_restart"] = [l for l in pane.text().splitlines() if l.strip()][-6:]
        pane.wait_for(agent.ready, 60)
        pane.wait_quiet(2.0, 30)
        results["restarted_as"] = tmux.run(
            "display-message", "-p", "-t", "agent", "#{pane_start_command}").strip()[-80:]
        since = time.time()
        pane.submit("argus-marker-four what did I say before?")
        results["resume_restores_history"] = wait_marker(server, "argus-marker-one", since, 30)
    except Timeout as e:
        print(e, file=sys.stderr)
        results["error"] = str(e).splitlines()[0]
    finally:
        if argus:
            argus.stop()
        tmux.kill_server()
        end_pids(pids_with_env(f"HOME={home}"))
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--bin-dir", default=BIN_DIR)
    args = ap.parse_args()
    chosen = [a for a in agents.all_agents(read_versions())
              if not args.only or a.name in args.only.split(",")]
    root = tempfile.mkdtemp(prefix="argus-real-actions-")
    server = Server(root)
    report, failed = {}, False
    try:
        for agent in chosen:
            r = check(agent, args.cache, server, root, args.bin_dir)
            report[agent.name] = r
            print(f"{agent.name}: {json.dumps(r)}", flush=True)
            # What Argus relies on: a nudge with the profile's delay arrives, an interrupt
            # leaves the CLI running, a restart in resume form keeps the conversation.
            failed |= not (r.get("argus_nudge_arrives") and r.get("interrupt_keeps_cli")
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
