#!/usr/bin/env python3
"""Checks, live on the real Claude Code, that a hang whose spinner keeps moving is found and a
slow answer is not: the fake model server first streams an answer one word per 0.5 s, then
accepts a request and never answers (Claude's spinner, verb and timer keep moving). The real
node agent and controller watch with a short `animated_hang`; the slow answer must never be
stalled, the hang must be stalled with its own reason and handed to triage. Also records which
source decided and whether Claude's session file named the conversation.

Run inside `unshare -n` (hang.sh does). Prints one JSON line and exits 1 on a failure.
Usage: hang.py CACHE [--bin-dir target/debug]
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
import tomllib

import agents
from argus import BIN_DIR, Argus
from drive import Server, end_pids, pids_with_env, read_versions, wait_requests
from pane import Pane, Timeout, Tmux

#: Short enough for CI, longer than any pause of a streaming answer. Claude Code 2.1 draws a
#: streamed answer one whole line at a time: at the fake server's 0.5 s per word a new line
#: appears every 10 to 11 s while only the spinner, timer and token counter move in between; a
#: 10 s hang time took that slow answer for a hang.
HANG_S = 20
# No idle stalls (nor nudges) of the prompt between the two turns: only the hang is looked at.
POLICY = f'animated_hang = "{HANG_S}s"\nnudge_dwell = "3s"\nidle_checks = 1000\n'


def title_rules():
    """The claude profile's title rules, from Argus's own data."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           "../../shared/profiles/agents.toml"), "rb") as f:
        return tomllib.load(f)["profiles"]["claude"]["title"]


def session(argus):
    """`argusctl session` of the agent: (state line, condition line, whole output)."""
    try:
        _, out = argus.ctl("session", argus.node_id, "agent")
    except subprocess.TimeoutExpired:
        return "", "", ""
    state = next((l for l in out.splitlines() if l.startswith("state")), "")
    cond = next((l for l in out.splitlines() if l.startswith("condition")), "")
    return state, cond, out


def check(agent, cache, server, root, bin_dir):
    r = {}
    home = tempfile.mkdtemp(prefix="claude-hang-home-", dir=root)
    work = tempfile.mkdtemp(prefix="claude-hang-work-", dir=root)
    launch = agent.launch(cache, home, work, server.port, "normal", False)
    sock = os.path.join(root, "tmux-claude-hang.sock")
    tmux = Tmux(sock)
    argus = None
    try:
        pane = Pane.start(tmux, "agent", launch.argv, launch.env, work, width=120, height=40)
        tmux.run("set-option", "-t", "agent", "@argus-profile", agent.profile)
        pane.hooks = agent.hooks
        pane.wait_for(agent.ready, 60)
        pane.wait_quiet(1.0, 30)
        policy = os.path.join(root, "policy.toml")
        with open(policy, "w", encoding="utf-8") as f:
            f.write(POLICY)
        os.environ["ARGUS_POLICY"] = policy
        argus = Argus(tempfile.mkdtemp(prefix="argus-", dir=root), sock, bin_dir=bin_dir)
        argus.wait_listed(["agent"], 30)

        title = lambda: tmux.run("display-message", "-p", "-t", "=agent:", "#{pane_title}").strip()
        r["title_at_prompt"] = title()
        # A slow answer, for longer than the hang time: never stalled.
        server.set({"mode": "slow", "cwd": work})
        pane.submit("argus-marker-slow tell me a long story")
        pane.wait_for(r"streaming slowly word", 30)
        start, states = time.monotonic(), set()
        while time.monotonic() - start < HANG_S + 2:
            state = session(argus)[0]
            states.add(state.split()[1] if state else "?")
            time.sleep(1.0)
        r["slow_states"] = sorted(states)
        r["slow_never_stalled"] = states == {"working"}
        if not r["slow_never_stalled"]:
            print(session(argus)[2], file=sys.stderr)
        pane.keys("Escape")
        pane.wait_for(agent.busy, 30, absent=True)
        pane.wait_quiet(2.0, 30)
        r["title_after_turn"] = title()

        # A request that is never answered: the spinner moves, nothing else.
        server.set({"mode": "hang", "cwd": work})
        since = time.time()
        pane.submit("argus-marker-hang reply please")
        wait_requests(server, "hang", since, 1, 30)
        t0 = time.monotonic()
        found = ""
        while time.monotonic() - t0 < HANG_S + 30:
            state, cond, _ = session(argus)
            if "animated but no progress" in state:
                found = state
                r["condition_line"] = cond
                break
            time.sleep(0.5)
        r["hang_reported"] = bool(found)
        r["hang_reported_after_s"] = round(time.monotonic() - t0, 1)
        r["hang_reason"] = found[:120]

        # Triage reads the screen first (a capture in the session's command history).
        deadline = time.monotonic() + 20
        triaged = False
        while time.monotonic() < deadline and not triaged:
            triaged = "triage reads the screen" in session(argus)[2]
            time.sleep(0.5)
        r["triaged"] = triaged
        r["commands_other_than_triage"] = [
            l.split()[2] for l in session(argus)[2].split("commands:")[-1].splitlines()
            if l.strip() and "triage reads the screen" not in l]
        # Claude's session file, as the node agent reads it: the conversation id, and the start
        # time that guards against a reused pid.
        sessions = os.path.join(home, ".claude", "sessions")
        files = sorted(f for f in os.listdir(sessions) if f.endswith(".json")) if os.path.isdir(sessions) else []
        r["session_file"] = files
        if files:
            with open(os.path.join(sessions, files[0]), encoding="utf-8") as f:
                data = json.load(f)
            pid = data.get("pid")
            with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
                stat = f.read()
            r["session_file_keys"] = sorted(data)[:12]
            r["proc_start_matches"] = str(data.get("procStart")) == stat[stat.rindex(")") + 2:].split()[19]
            r["session_id"] = data.get("sessionId", "")
            r["argus_names_conversation"] = (
                f"resumes   conversation {r['session_id']}" in session(argus)[2])
        r["still_animating"] = bool(re.search(agent.busy, pane.text(), re.M))
        r["title_busy"] = sorted({title() for _ in range(6) if time.sleep(0.3) is None})
        rules = title_rules()
        r["title_rules_hold"] = (
            all(any(re.search(p, t) for p in rules["thinking"]) for t in r["title_busy"])
            and any(re.search(p, r["title_after_turn"]) for p in rules["prompt"]))
    except (Timeout, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"claude: {e}", file=sys.stderr)
        r["error"] = str(e).splitlines()[0]
    finally:
        if argus:
            argus.stop()
        tmux.kill_server()
        end_pids(pids_with_env(f"HOME={home}"))
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--bin-dir", default=BIN_DIR)
    args = ap.parse_args()
    agent = next(a for a in agents.all_agents(read_versions()) if a.name == "claude")
    root = tempfile.mkdtemp(prefix="argus-real-hang-")
    try:
        server = Server(root)
        try:
            r = check(agent, args.cache, server, root, args.bin_dir)
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"claude hang: {json.dumps(r)}", flush=True)
    ok = (r.get("slow_never_stalled") and r.get("hang_reported") and r.get("triaged")
          and not r.get("commands_other_than_triage") and r.get("argus_names_conversation")
          and r.get("title_rules_hold"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
