# syntax=docker/dockerfile:1
# deepseek_proxy container image. Two stages: build on the official Rust
# image, run on Debian slim as a non-root user.
#
#   docker build -t deepseek-proxy .
#   docker run -p 8080:8080 -v ./config.toml:/etc/deepseek_proxy/config.toml:ro \
#     -v deepseek-proxy-data:/data -e OPENAI_API_KEY deepseek-proxy
#
# The entrypoint is the binary, so arguments after the image are its own: the
# first admin (in the database the config names) with the same mounts,
#   docker run --rm -it -v ./config.toml:/etc/deepseek_proxy/config.toml:ro \
#     -v deepseek-proxy-data:/data deepseek-proxy user add admin --role admin
# (DEEPSEEK_PROXY_CONFIG below stands in for --config).
#
# The build step is the same `cargo build --release --locked` that CI runs
# (.ci/package); CI lints this file with hadolint but cannot build the image
# (no container engine on the CI machine).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# .git is not copied (.dockerignore): pass the commit for `--version`, e.g.
# --build-arg DEEPSEEK_PROXY_GIT_COMMIT=$(git rev-parse --short=12 HEAD)
ARG DEEPSEEK_PROXY_GIT_COMMIT=unknown
ENV DEEPSEEK_PROXY_GIT_COMMIT=${DEEPSEEK_PROXY_GIT_COMMIT}
RUN cargo build --release --locked

FROM debian:bookworm-slim
# curl for HEALTHCHECK only. TLS roots are compiled into the binary, so no
# ca-certificates (deepseek.ca_file adds roots for TLS-inspecting egress).
# Not pinned (DL3008): bookworm's security updates replace old versions, so a
# pin would break the build instead of making it reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home deepseek \
    && install -d -o deepseek -g deepseek -m 0750 /data
COPY --from=build /src/target/release/deepseek_proxy /usr/local/bin/deepseek_proxy

# Mount the config here (read-only). It must listen on 0.0.0.0:8080 and keep
# the ledger in /data (storage.sqlite_path = "/data/usage.db") or PostgreSQL.
ENV DEEPSEEK_PROXY_CONFIG=/etc/deepseek_proxy/config.toml
VOLUME ["/data"]
WORKDIR /data
# Numeric, so a runtime can check it is not root without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# /healthz: the process is alive (/readyz would also check Redis).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
# SIGTERM: stop accepting, let open streams finish for
# server.shutdown_grace_seconds; give `docker stop -t` more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/deepseek_proxy"]
