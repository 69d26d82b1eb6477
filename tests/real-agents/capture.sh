#!/usr/bin/env bash
# Recaptures every real-CLI fixture: installs the pinned CLIs (cached), then drives each into
# each state inside a network namespace with loopback only, and writes the screens to
# shared/tests/fixtures/screens/<profile>/real-*.txt with their manifest real.toml.
#   tests/real-agents/capture.sh [--only claude,codex] [--states fresh-prompt,...] [--smoke]
#   OUT=/some/dir tests/real-agents/capture.sh ...   (write elsewhere, e.g. for a check)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/../../shared/tests/fixtures/screens}"
cache="$("$here/install.sh")"
command -v tmux >/dev/null || { echo "tmux is needed" >&2; exit 1; }
exec unshare -n -- bash -c 'ip link set lo up && exec python3 "$0/drive.py" "$@"' \
  "$here" "$cache" "$out" "$@"
