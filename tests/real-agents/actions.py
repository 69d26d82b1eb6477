#!/usr/bin/env python3
"""Checks, live, what Argus's actions do to each real CLI, sent by the real node agent
(`argusctl` to a real controller; the node agent watches the CLI's private tmux server):

- the CLI itself: text typed with `send-keys -l`, then Enter at once as a separate `send-keys`:
  does it arrive? (It does not on every TUI: hence the profiles' `submit_delay_ms`.)
- nudge: five `argusctl nudge`: each reaches the model as a submitted message, and the node
  agent's result says "delivered" (it saw the text leave the input box);
- interrupt: `argusctl interrupt` at the idle prompt is declined; one while an answer streams
  stops the turn and the CLI stays; a second right behind it is declined (the CLI's window);
- restart: `argusctl restart` from the session's own start command: the node agent adds the
  profile's `resume.args`; does the next request carry the earlier conversation?
- recreate: the session closes; `argusctl restart` creates it anew at its previous size (not
  tmux's 80x24), and the agent resumes its conversation.

Run inside `unshare -n` (actions.sh does). Prints one line per check and exits 1 on a failure.
Usage: actions.py CACHE [--only CLI[,CLI]] [--json OUT] [--bin-dir target/debug]
"""

import argparse
import concurrent.futures
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
from drive import Server, end_pids, pids_with_env, read_versions
from pane import Pane, Timeout, Tmux

#: The agents' window size: tmux's default for a new session is 80x24.
WIDTH, HEIGHT = 120, 40

PROFILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../shared/profiles/agents.toml")


def profile_data(name):
    """The profile's `resume.args` and `submit_delay_ms`: the checks test Argus's own data."""
    with open(PROFILES, "rb") as f:
        p = tomllib.load(f)["profiles"][name]
    return p.get("resume", {}).get("args", []), p.get("submit_delay_ms", 200)


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


def settle(pane, agent):
    """Until the CLI is idle: the screen still for 2 s and no busy line."""
    pane.wait_quiet(2.0, 60, unless=agent.busy)


def session_states(argus):
    """session name -> state, from `argusctl sessions` (NODE SESSION STATE …)."""
    try:
        _, out = argus.ctl("sessions")
    except subprocess.TimeoutExpired:
        return {}
    return {c[1]: c[2] for c in (line.split() for line in out.splitlines()[1:]) if len(c) >= 3}


def wait_until(check, timeout, every=0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    return check()


def stopped_streaming(pane, agent, timeout=15):
    """The turn stopped: no busy line (or the prompt back on the last line: Aider keeps its old
    spinner line in the scrollback) and the screen still for 3 s, so no more words arrive."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        screen = pane.text()
        lines = [line for line in screen.splitlines() if line.strip()]
        idle = not re.search(agent.busy, screen, re.M) or bool(
            lines and re.search(agent.ready, lines[-1]))
        if screen != last or not idle:
            last, since = screen, time.monotonic()
        elif time.monotonic() - since >= 3.0:
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
        pane = Pane.start(tmux, "agent", launch.argv, launch.env, work, width=WIDTH, height=HEIGHT)
        tmux.run("set-option", "-t", "agent", "@argus-profile", agent.profile)
        # Another session keeps the tmux server up when the agent's session is closed.
        tmux.run("new-session", "-d", "-s", "keeper", "sleep", "100000")
        pane.hooks = agent.hooks
        pane.wait_for(agent.ready, 60)
        pane.wait_quiet(1.0, 30)

        # The CLI itself: text, then Enter at once as a separate send-keys.
        server.set({"mode": "answer", "cwd": work})
        since = time.time()
        pane.tmux.run("send-keys", "-t", pane.name, "-l", "argus-marker-one please continue")
        pane.keys("Enter")
        results["nudge_no_delay"] = wait_marker(server, "argus-marker-one", since, 10)
        if not results["nudge_no_delay"]:
            pane.keys("Enter")  # submit what was typed, so that the next checks start clean
            wait_marker(server, "argus-marker-one", since, 20)
        settle(pane, agent)

        # From here on through Argus: the real node agent executes the commands.
        argus_root = tempfile.mkdtemp(prefix=f"{agent.name}-argus-", dir=root)
        argus = Argus(argus_root, sock, bin_dir=bin_dir)
        listed = argus.wait_listed(["agent"], 30)
        results["argus_sees"] = listed.get("agent", "(not listed)")

        # Five nudges as the node agent sends them: each must be submitted (it reaches the
        # model) and confirmed (the command result says delivered).
        results["submit_delay_ms"] = profile_data(agent.profile)[1]
        nudges, how = [], set()
        for i in range(5):
            marker = f"argus-marker-nudge{i}"
            since = time.time()
            code, out = argus.ctl("nudge", argus.node_id, "agent", f"{marker} please continue")
            arrived = wait_marker(server, marker, since, 20)
            confirmed = code == 0 and " ok delivered" in out
            how.update(re.findall(r"ok delivered: ([^\n]*)", out))
            nudges.append(confirmed and arrived or out.strip()[-160:] or "not arrived")
            settle(pane, agent)
        results["nudges"] = nudges
        results["nudges_confirmed"] = sum(n is True for n in nudges)
        results["nudges_seen_as"] = sorted(how)

        # An interrupt at the idle prompt: nothing to interrupt, declined.
        code, out = argus.ctl("interrupt", argus.node_id, "agent")
        results["interrupt_at_prompt_declined"] = code != 0 and "DECLINED" in out

        # An interrupt while an answer streams (one word per 0.5 s).
        server.set({"mode": "slow", "cwd": work})
        pane.submit("argus-marker-three tell me a long story")
        pane.wait_for(r"streaming slowly word", 30)
        time.sleep(1.0)
        pid = pane.pid()
        code, out = argus.ctl("interrupt", argus.node_id, "agent")
        results["interrupt_sent"] = code == 0 or out.strip()[-160:]
        # A second one right behind it would exit some CLIs: declined.
        code, out = argus.ctl("interrupt", argus.node_id, "agent")
        results["second_interrupt_declined"] = code != 0 and "DECLINED" in out
        results["interrupt_stops_turn"] = stopped_streaming(pane, agent)
        results["after_interrupt"] = [l for l in pane.text().splitlines() if l.strip()][-4:]
        if not results["interrupt_stops_turn"]:
            pane.keys("Escape")  # leave the turn, so that the restart check can run
            pane.wait_for(agent.busy, 30, absent=True)
        pane.wait_quiet(2.0, 30)
        results["interrupt_keeps_cli"] = not pane.dead() and os.path.exists(f"/proc/{pid}")

        # Restart through Argus, from the session's own start command: the node agent adds the
        # profile's resume arguments. Does the next request carry the first conversation?
        server.set({"mode": "answer", "cwd": work})
        old_pid = pane.pid()
        code, out = argus.ctl("restart", argus.node_id, "agent")
        results["restart_accepted"] = code == 0 or out.strip()[-160:]
        wait_until(lambda: pane.pid() != old_pid, 30)
        results["restarted"] = pane.pid() != old_pid
        pane.wait_for(agent.ready, 60)
        pane.wait_quiet(2.0, 30)
        results["restart_shows_history"] = "argus-marker-nudge" in pane.text()
        results["restarted_as"] = tmux.run(
            "display-message", "-p", "-t", "agent", "#{pane_start_command}").strip()[-80:]
        since = time.time()
        pane.submit("argus-marker-four what did I say before?")
        results["resume_restores_history"] = wait_marker(server, "argus-marker-one", since, 30)
        settle(pane, agent)

        # The session closes; a restart creates it anew at its previous size, resuming.
        tmux.run("kill-session", "-t", "=agent")
        results["seen_gone"] = wait_until(
            lambda: session_states(argus).get("agent") in ("dead", "completed"), 30)
        code, out = argus.ctl("restart", argus.node_id, "agent")
        results["recreate_accepted"] = code == 0 or out.strip()[-160:]
        size = wait_until(lambda: tmux.run("display-message", "-p", "-t", "=agent:",
                                           "#{window_width}x#{window_height}", check=False).strip(), 10)
        results["recreated_size"] = size
        results["recreated_keeps_size"] = size == f"{WIDTH}x{HEIGHT}"
        pane.wait_for(agent.ready, 60)
        pane.wait_quiet(2.0, 30)
        since = time.time()
        pane.submit("argus-marker-five and before that?")
        results["recreate_resumes"] = wait_marker(server, "argus-marker-one", since, 30)
    except (Timeout, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"{agent.name}: {e}", file=sys.stderr)
        results["error"] = str(e).splitlines()[0]
    finally:
        if argus:
            argus.stop()
        tmux.kill_server()
        end_pids(pids_with_env(f"HOME={home}"))
    return results


#: Every check must hold on every CLI.
REQUIRED = ("interrupt_at_prompt_declined", "interrupt_sent", "second_interrupt_declined",
            "interrupt_stops_turn", "interrupt_keeps_cli", "resume_restores_history",
            "recreated_keeps_size", "recreate_resumes")


def failures(r):
    """The checks that did not hold."""
    bad = [k for k in REQUIRED if r.get(k) is not True]
    if r.get("nudges_confirmed") != 5:
        bad.append("nudges_confirmed")
    return bad


def run_one(agent, args, root):
    """One CLI's checks with a fake model server of its own (scenarios are per server)."""
    sub = tempfile.mkdtemp(prefix=f"{agent.name}-", dir=root)
    server = Server(sub)
    try:
        return check(agent, args.cache, server, sub, args.bin_dir)
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--bin-dir", default=BIN_DIR)
    # Two CLIs at a time keep the lane's CI time down; they wait on the model most of the time.
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    chosen = [a for a in agents.all_agents(read_versions())
              if not args.only or a.name in args.only.split(",")]
    root = tempfile.mkdtemp(prefix="argus-real-actions-")
    report, failed = {}, False
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            runs = {agent.name: pool.submit(run_one, agent, args, root) for agent in chosen}
            for name, run in runs.items():
                r = run.result()
                report[name] = r
                print(f"{name}: {json.dumps(r)}", flush=True)
                bad = failures(r)
                if bad:
                    print(f"{name}: FAILED {', '.join(bad)}", flush=True)
                failed |= bool(bad)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
