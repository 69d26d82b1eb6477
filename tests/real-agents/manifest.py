"""real.toml, the manifest of the real-CLI fixtures: read, merge, write. One table per fixture:
CLI, version, state, expected condition, capture time, UTC offset, and for limits the reset time
the fake server named."""

import json
import os
import tomllib

HEADER = (
    "# Real CLI screens recorded by tests/real-agents/capture.sh: which CLI and version,\n"
    "# the state it was driven into, the condition Argus must report, when it was captured\n"
    "# (Unix seconds; shared/tests/profiles.rs classifies at that time) and, for limits, the\n"
    "# reset time the fake server named (absent: the screen names none).\n"
)
KEYS = ("cli", "version", "state", "expect", "captured_at", "utc_offset", "reset_at")


def read(path):
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        return {k: v for k, v in tomllib.load(f).items() if isinstance(v, dict)}


def write(path, entries, root):
    """Writes `entries`, leaving out those whose screen file is gone."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(HEADER)
        for key in sorted(entries):
            if not os.path.exists(os.path.join(root, key)):
                continue
            f.write(f"\n[{json.dumps(key)}]\n")
            for k in KEYS:
                if k in entries[key]:
                    v = entries[key][k]
                    f.write(f"{k} = {v if isinstance(v, int) else json.dumps(v)}\n")
