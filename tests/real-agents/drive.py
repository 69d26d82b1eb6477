#!/usr/bin/env python3
"""Drives every real CLI into every state against the fake model server and records the screens.

Run it inside a network namespace with loopback only (capture.sh does: `unshare -n`). For each
(CLI, state) it starts the fake server's scenario, a private HOME, a private tmux server, the CLI
in one pane; types the prompt; waits (polling, with a deadline) for the state; and writes

    <out>/<profile>/real-<state>.txt      the screen as the node agent reads it
    <out>/<profile>/real-<state>.ansi     the same with escapes (`capture-pane -e`)
    <out>/real.toml                       CLI, version, state, expected condition, time

Usage: drive.py CACHE OUT [--only CLI[,CLI]] [--states S[,S]] [--smoke]
"""

import argparse
import json
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import agents
import manifest
from pane import Pane, Timeout, Tmux
from states import STATES

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_versions():
    out = {}
    with open(os.path.join(HERE, "versions.env"), encoding="utf-8") as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, v = line.strip().split("=", 1)
                out[k] = v
    return out


def pids_with_env(marker):
    """Processes whose environment holds `marker` (our private HOME): the ones we started,
    including those a CLI leaves behind (codex app-server)."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(d))
        except OSError:
            pass
    return found


def end_pids(pids, deadline=3.0):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + deadline
    while time.monotonic() < end and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Server:
    """The fake model server, one per run; scenarios switch by rewriting its file."""

    def __init__(self, root):
        self.port = free_port()
        self.scenario = os.path.join(root, "scenario.json")
        self.log = os.path.join(root, "requests.jsonl")
        self.set({"mode": "answer"})
        open(self.log, "w").close()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fake_model.py"), str(self.port),
             self.scenario, self.log, root], stdout=subprocess.PIPE, text=True)
        self.proc.stdout.readline()  # "listening": the socket is bound

    def set(self, scenario):
        tmp = self.scenario + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(scenario, f)
        os.replace(tmp, self.scenario)

    def requests(self, mode, since):
        n = 0
        with open(self.log, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                if r["t"] >= since and r["mode"] == mode and r["status"] != 200:
                    n += 1
        return n

    def stop(self):
        self.proc.terminate()
        self.proc.wait(5)


def wait_requests(server, mode, since, n, timeout):
    deadline = time.monotonic() + timeout
    while server.requests(mode, since) < n:
        if time.monotonic() > deadline:
            raise Timeout(f"the fake server saw fewer than {n} {mode} requests in {timeout}s")
        time.sleep(0.2)


def drive_one(agent, state, cache, server, root):
    """Starts `agent`, drives it into `state`; returns (plain screen, screen with escapes)."""
    home = tempfile.mkdtemp(prefix=f"{agent.name}-{state.name}-home-", dir=root)
    work = tempfile.mkdtemp(prefix=f"{agent.name}-{state.name}-work-", dir=root)
    server.set({"mode": "answer"})
    launch = agent.launch(cache, home, work, server.port, state.variant, state.retries)
    tmux = Tmux(os.path.join(root, f"tmux-{agent.name}-{state.name}.sock"))
    try:
        pane = Pane.start(tmux, "agent", launch.argv, launch.env, work)
        if state.expect != "dialog":
            pane.hooks = agent.hooks
        if state.expect == "dialog":
            for rx, keys in agent.steps.get(state.variant, []):
                pane.wait_for(rx, 30)
                pane.wait_quiet(1.0, 30)
                pane.keys(*keys)
            # Some dialogs come after a welcome animation that shows the prompt: wait for the
            # prompt to go, then for the dialog to settle.
            if re.search(agent.ready, pane.wait_quiet(2.0, 60), re.M):
                try:
                    pane.wait_for(agent.ready, 15, absent=True)
                except Timeout:
                    pass
                pane.wait_quiet(2.0, 60)
            if agent.dialog:
                pane.wait_for(agent.dialog, 30)
                pane.wait_quiet(1.0, 30)
        else:
            pane.wait_for(agent.ready, 60)
            pane.wait_quiet(1.0, 30)
        since = time.time()
        if state.prompt is not None:
            server.set({"mode": state.mode, "reset_in": state.reset_in, "cwd": work,
                        "no_retry_after": state.no_retry_after})
            since = time.time()
            pane.submit(state.prompt)
            until = state.until
            if until.startswith("text:"):
                pane.wait_for(until[5:], 300)
            elif until.startswith("requests:"):
                wait_requests(server, state.mode, since, int(until[9:]), 90)
            elif until == "hang":
                wait_requests(server, "hang", since, 1, 30)
                pane.wait_for(agent.busy, 30)
            else:
                if state.mode in ("tool_shell", "tool_edit"):
                    # The question may come with a busy footer or a live timer: wait for it.
                    pane.wait_for(agent.asks, 60)
                    try:
                        pane.wait_quiet(1.0, 5)
                    except Timeout:
                        pass
                else:
                    if state.mode != "answer":
                        wait_requests(server, state.mode, since, 1, 60)
                    # Gemini retries 500 and 503 for minutes before it gives up.
                    pane.wait_quiet(2.0, 420, unless=agent.busy)
        reset = None
        if state.expect == "rate-limited" and agent.name not in state.no_reset:
            reset = int(time.time() if state.reset_from_capture else since) + state.reset_in
        return pane.text(), pane.text(escapes=True), pane.dialogs, reset
    finally:
        tmux.kill_server()
        end_pids(pids_with_env(f"HOME={home}"))
        server.set({"mode": "answer"})



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("out")
    ap.add_argument("--only", default="")
    ap.add_argument("--states", default="")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    versions = read_versions()
    chosen = [a for a in agents.all_agents(versions)
              if not args.only or a.name in args.only.split(",")]
    states = [s for s in STATES if (not args.states or s.name in args.states.split(","))
              and (not args.smoke or s.smoke)]
    root = tempfile.mkdtemp(prefix="argus-real-agents-")
    server = Server(root)
    runs = []
    failures = []
    try:
        for agent in chosen:
            for state in states:
                if state.only and agent.name not in state.only:
                    continue
                label = f"{agent.name}/{state.name}"
                t0 = time.monotonic()
                try:
                    plain, ansi, dialogs, reset = drive_one(agent, state, args.cache, server, root)
                except Exception as e:  # one state failing must not lose the others
                    failures.append(label)
                    print(f"FAIL {label}: {e}", file=sys.stderr)
                    traceback.print_exc()
                    continue
                print(f"ok   {label} ({time.monotonic() - t0:.1f}s)", flush=True)
                d = os.path.join(args.out, agent.profile)
                os.makedirs(d, exist_ok=True)
                base = os.path.join(d, f"real-{state.name}")
                with open(base + ".txt", "w", encoding="utf-8") as f:
                    f.write(plain)
                with open(base + ".ansi", "w", encoding="utf-8") as f:
                    f.write(ansi)
                runs.append((agent, state.name, state.expect, int(time.time()), reset))
                if dialogs:
                    name = "dialog-mid-state"
                    with open(os.path.join(d, f"real-{name}.txt"), "w", encoding="utf-8") as f:
                        f.write(dialogs[0][0])
                    with open(os.path.join(d, f"real-{name}.ansi"), "w", encoding="utf-8") as f:
                        f.write(dialogs[0][1])
                    runs.append((agent, name, "dialog", int(time.time()), None))
    finally:
        server.stop()
        if os.environ.get("KEEP"):
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    write_manifest(args.out, runs)
    if failures:
        print(f"{len(failures)} state(s) not reached: {', '.join(failures)}", file=sys.stderr)
        sys.exit(1)


def write_manifest(out, runs):
    """Merges this run's entries into <out>/real.toml."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "real.toml")
    entries = manifest.read(path)
    for agent, state, expect, now, reset in runs:
        entry = {
            "cli": agent.name, "version": agent.version, "state": state, "expect": expect,
            "captured_at": now,
            "utc_offset": -time.timezone if not time.daylight else -time.altzone,
        }
        if reset is not None:
            entry["reset_at"] = reset
        entries[f"{agent.profile}/real-{state}.txt"] = entry
    manifest.write(path, entries, out)


if __name__ == "__main__":
    main()
