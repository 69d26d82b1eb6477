#!/usr/bin/env bash
# Checks nudge, interrupt and resume on each real CLI (actions.py), inside a network namespace
# with loopback only.   tests/real-agents/actions.sh [--only claude,codex] [--json out.json]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="$("$here/install.sh")"
exec unshare -n -- bash -c 'ip link set lo up && exec python3 "$0/actions.py" "$@"' \
  "$here" "$cache" "$@"
