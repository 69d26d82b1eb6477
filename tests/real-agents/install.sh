#!/usr/bin/env bash
# Installs the pinned real CLIs (versions.env) into the cache directory, reusing what is there.
# Prints the cache directory on success. Exit 3: a registry is unreachable (callers skip).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${ARGUS_REAL_AGENTS_CACHE:-$HOME/.cache/argus-real-agents}"
mkdir -p "$cache"
stamp="$cache/installed-$CLAUDE_CODE_VERSION-$CODEX_VERSION-$GEMINI_CLI_VERSION-$AIDER_VERSION"
if [[ -f "$stamp" ]]; then echo "$cache"; exit 0; fi

reachable() { timeout 30 "$@" >/dev/null 2>&1; }
if ! reachable npm view "@openai/codex@$CODEX_VERSION" version \
   || ! reachable python3 -m pip download --no-deps -q -d "$cache/.probe" "aider-chat==$AIDER_VERSION"; then
  echo "registries unreachable (npm or PyPI)" >&2
  exit 3
fi
rm -rf "$cache/.probe"

npm_dir="$cache/npm"
mkdir -p "$npm_dir"
[[ -f "$npm_dir/package.json" ]] || echo '{"name":"argus-real-agents","private":true}' >"$npm_dir/package.json"
# Claude Code's postinstall fetches its native binary; with npm 11 scripts are skipped and its
# own install.cjs is run afterwards.
(cd "$npm_dir" && npm install --no-audit --no-fund --ignore-scripts \
  "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" \
  "@openai/codex@$CODEX_VERSION" \
  "@google/gemini-cli@$GEMINI_CLI_VERSION" >&2)
claude_pkg="$npm_dir/node_modules/@anthropic-ai/claude-code"
if [[ -f "$claude_pkg/install.cjs" ]]; then (cd "$claude_pkg" && node install.cjs >&2); fi

venv="$cache/aider-venv"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "aider-chat==$AIDER_VERSION" >&2

touch "$stamp"
echo "$cache"
