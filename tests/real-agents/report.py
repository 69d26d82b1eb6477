#!/usr/bin/env python3
"""What the real node agent reports for every recorded real-CLI screen.

Replays each fixture of real.toml in its own session of a private tmux server (the screen with
its escapes, printed by `cat`, then a `sleep` holds it) with `@argus-profile` set to the CLI's
profile, runs the real `argus-controller` (loopback, temp SQLite) and `argus-node-agent` on that
server, and reads the conditions back with `argusctl sessions`. Prints a Markdown table (or JSON).

Usage: report.py NODE_AGENT_BIN [--bin-dir target/debug] [--screens DIR] [--json OUT] [--check]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import manifest

HERE = os.path.dirname(os.path.abspath(__file__))
SCREENS = os.path.join(HERE, "../../shared/tests/fixtures/screens")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_name(key):
    # "claude/real-rate-limit.txt" -> "claude--rate-limit"
    profile, file = key.split("/")
    return f"{profile}--{file[len('real-'):-len('.txt')]}"


def conditions(argusctl, url):
    """session name -> condition column of `argusctl sessions`."""
    out = subprocess.run([argusctl, "--controller", url, "sessions"], capture_output=True,
                         text=True, timeout=20).stdout
    found = {}
    # NODE SESSION STATE CONDITION PID REASON…: the names hold no spaces, so split on any.
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 4:
            found[cols[1]] = cols[3]
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("node_agent")
    ap.add_argument("--bin-dir", default=os.path.join(HERE, "../../target/debug"))
    ap.add_argument("--json", default="")
    ap.add_argument("--screens", default=SCREENS, help="a fixture tree with its real.toml")
    ap.add_argument("--check", action="store_true", help="exit 1 when a screen is misread")
    args = ap.parse_args()
    screens = args.screens
    entries = manifest.read(os.path.join(screens, "real.toml"))
    root = tempfile.mkdtemp(prefix="argus-report-")
    sock = os.path.join(root, "tmux.sock")
    tmux = ["tmux", "-S", sock, "-f", "/dev/null"]
    procs = []
    try:
        for key in sorted(entries):
            ansi = os.path.join(screens, key[:-len(".txt")] + ".ansi")
            name = session_name(key)
            # Wide enough that the joined lines of the capture do not wrap again.
            subprocess.run(tmux + ["new-session", "-d", "-x", "250", "-y", "60", "-s", name,
                                   f"cat '{ansi}'; exec sleep 100000"], check=True)
            subprocess.run(tmux + ["set-option", "-t", name, "@argus-profile",
                                   key.split("/")[0]], check=True)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(os.path.join(root, "log"), "w")
        procs.append(subprocess.Popen(
            [os.path.join(args.bin_dir, "argus-controller"), "--insecure",
             "--listen", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{free_port()}",
             "--db", f"sqlite://{root}/argus.db"], stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            [args.node_agent, "--insecure", "--controller", url, "--node-id", "replay",
             "--tmux-socket", sock, "--state-dir", os.path.join(root, "node"),
             "--probe-interval", "1s"], stdout=log, stderr=log))
        want = {session_name(k) for k in entries}
        deadline = time.monotonic() + 60
        got = {}
        while time.monotonic() < deadline:
            try:
                got = conditions(os.path.join(args.bin_dir, "argusctl"), url)
            except subprocess.TimeoutExpired:
                got = {}
            if want <= set(got):
                break
            time.sleep(1)
        rows = []
        for key in sorted(entries):
            e = entries[key]
            reported = got.get(session_name(key), "(not listed)")
            reported = {"-": "none"}.get(reported, reported).replace("_", "-")
            rows.append({"key": key, "cli": e["cli"], "version": e["version"],
                         "state": e["state"], "expect": e["expect"], "reported": reported,
                         "right": reported == e["expect"]})
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(tmux + ["kill-server"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    right = sum(r["right"] for r in rows)
    print(f"{right}/{len(rows)} right", file=sys.stderr)
    for r in rows:
        print(f"| {r['cli']} {r['version']} | {r['state']} | {r['expect']} | {r['reported']} | "
              f"{'right' if r['right'] else 'WRONG'} |")
    if args.check and right < len(rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
