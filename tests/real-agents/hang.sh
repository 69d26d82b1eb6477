#!/usr/bin/env bash
# Checks live on the real Claude Code that a hang whose spinner keeps moving is reported and
# triaged, and a slow answer is not (hang.py), inside a network namespace with loopback only.
#   tests/real-agents/hang.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="$("$here/install.sh")"
exec unshare -n -- bash -c 'ip link set lo up && exec python3 "$0/hang.py" "$@"' \
  "$here" "$cache" "$@"
