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
import subprocess
import sys
import tempfile

import manifest
from argus import BIN_DIR, Argus

HERE = os.path.dirname(os.path.abspath(__file__))
SCREENS = os.path.join(HERE, "../../shared/tests/fixtures/screens")


def session_name(key):
    # "claude/real-rate-limit.txt" -> "claude--rate-limit"
    profile, file = key.split("/")
    return f"{profile}--{file[len('real-'):-len('.txt')]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("node_agent")
    ap.add_argument("--bin-dir", default=BIN_DIR)
    ap.add_argument("--json", default="")
    ap.add_argument("--screens", default=SCREENS, help="a fixture tree with its real.toml")
    ap.add_argument("--check", action="store_true", help="exit 1 when a screen is misread")
    args = ap.parse_args()
    screens = args.screens
    entries = manifest.read(os.path.join(screens, "real.toml"))
    root = tempfile.mkdtemp(prefix="argus-report-")
    sock = os.path.join(root, "tmux.sock")
    tmux = ["tmux", "-S", sock, "-f", "/dev/null"]
    argus = None
    try:
        for key in sorted(entries):
            ansi = os.path.join(screens, key[:-len(".txt")] + ".ansi")
            name = session_name(key)
            # Wide enough that the joined lines of the capture do not wrap again.
            subprocess.run(tmux + ["new-session", "-d", "-x", "250", "-y", "60", "-s", name,
                                   f"cat '{ansi}'; exec sleep 100000"], check=True)
            subprocess.run(tmux + ["set-option", "-t", name, "@argus-profile",
                                   key.split("/")[0]], check=True)
        argus = Argus(root, sock, node_agent=args.node_agent, bin_dir=args.bin_dir,
                      node_id="replay")
        got = argus.wait_listed({session_name(k) for k in entries}, 60)
        rows = []
        for key in sorted(entries):
            e = entries[key]
            reported = got.get(session_name(key), "(not listed)")
            reported = {"-": "none"}.get(reported, reported).replace("_", "-")
            rows.append({"key": key, "cli": e["cli"], "version": e["version"],
                         "state": e["state"], "expect": e["expect"], "reported": reported,
                         "right": reported == e["expect"]})
    finally:
        if argus:
            argus.stop()
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
