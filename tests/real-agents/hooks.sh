#!/usr/bin/env bash
# Checks live on the real Claude Code that its hooks (installed by `argusctl hooks install`)
# reach Argus and decide before the screen (hooks.py), inside a network namespace with loopback
# only.
#   tests/real-agents/hooks.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="$("$here/install.sh")"
exec unshare -n -- bash -c 'ip link set lo up && exec python3 "$0/hooks.py" "$@"' \
  "$here" "$cache" "$@"
