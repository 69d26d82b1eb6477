# syntax=docker/dockerfile:1
# Both binaries from one build, two small runtime images:
#   docker build --target controller -t argus-controller .
#   docker build --target node-agent -t argus-node-agent .
# Codegen needs no protoc (protox); the Cargo.lock pins every dependency.

FROM rust:1.90-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p argus-controller -p argus-node-agent --bins \
    && install -D -m 0755 -t /out target/release/argus-controller target/release/argusctl \
       target/release/argus-node-agent

# The controller: no shell tools needed beyond CA roots (https webhooks, the triage endpoint).
FROM debian:bookworm-slim AS controller
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/argus --create-home argus
COPY --from=build /out/argus-controller /out/argusctl /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/argus
EXPOSE 7070 7071
ENTRYPOINT ["/usr/local/bin/argus-controller"]

# The node agent: tmux (its control client talks to the host's tmux server, so keep the major
# version of the hosts' tmux), git for checkpoints, util-linux for setpriv, CA roots.
FROM debian:bookworm-slim AS node-agent
RUN apt-get update \
    && apt-get install -y --no-install-recommends tmux git util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/argus-node-agent /out/argusctl /usr/local/bin/
ENTRYPOINT ["/usr/local/bin/argus-node-agent"]
