#!/usr/bin/env bash
# The real-agents lane for CI (smoke size): installs the pinned CLIs (cached in
# ${ARGUS_REAL_AGENTS_CACHE:-$HOME/.cache/argus-real-agents}), drives each into the smoke states
# in a loopback-only network namespace, checks what the real node agent and controller report
# for those fresh screens, checks nudge, interrupt and resume live on each CLI, and a hang that
# still animates on Claude Code (hang.sh, about 70 s) and Claude Code's hooks deciding before
# the screen (hooks.sh, about 20 s).
# Skips (exit 0, with a message) only when the registries are unreachable and nothing is cached.
#   tests/real-agents/lane.sh [--full]     (--full: every state, not only the smoke set)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$here/../.."
size=(--smoke)
[[ "${1:-}" == "--full" ]] && size=()

set +e
cache="$("$here/install.sh")"
rc=$?
set -e
if [[ $rc -eq 3 ]]; then
  echo "real-agents lane SKIPPED: npm or PyPI unreachable and no cached install"
  exit 0
elif [[ $rc -ne 0 ]]; then
  exit "$rc"
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
start=$SECONDS
OUT="$out" "$here/capture.sh" "${size[@]}"
(cd "$repo" && cargo build -q -p argus-node-agent -p argus-controller --bins)
python3 "$here/report.py" "$repo/target/debug/argus-node-agent" --screens "$out" --check
"$here/actions.sh"
"$here/hang.sh"
"$here/hooks.sh"
echo "real-agents lane passed in $((SECONDS - start)) s"
