# syntax=docker/dockerfile:1
#
# The WAIaaS image: `waiaas-launcher run` supervising the `waiaas-daemon` that
# sits beside it in /usr/local/bin. The image is the unit of upgrade: a new
# image brings a new daemon, which backs up (`backups/pre-migrate-…`) and
# migrates the database on the /data volume when it starts; `waiaas-launcher
# upgrade` refuses inside the container and says to pull the new image.
#
#   docker build --build-arg VERSION=1.8.1 -t waiaas/daemon:1.8.1 .
#   docker compose up -d            # see docker-compose.yml and the README
#
# The default (last) stage compiles both programs here. `--target prebuilt`
# instead takes binaries built elsewhere: the context's prebuilt/ folder holds
# waiaas-launcher, waiaas-daemon (built for bookworm's glibc) and the
# ca-certificates.crt to ship. The container tests build both ways
# (testkit/src/images.rs), the release workflow the prebuilt one
# from the package job's binaries, so the image carries the bytes the npm
# packages do (.github/workflows/release.yml, job docker). Both stages start from
# `runtime`; a build skips the stages its target does not need (BuildKit,
# buildah), so the default build needs no prebuilt/ and `--target prebuilt`
# compiles nothing.

# ---------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# Set by the release workflow; a local build says what it is with "dev".
ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="WAIaaS" \
      org.opencontainers.image.description="Self-hosted WAIaaS daemon under its supervising launcher" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/waiaas/waiaas-launcher" \
      org.opencontainers.image.url="https://github.com/waiaas/waiaas-launcher" \
      org.opencontainers.image.documentation="https://github.com/waiaas/waiaas-launcher#upgrading-a-docker-installation" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="WAIaaS" \
      org.opencontainers.image.base.name="debian:bookworm-slim" \
      com.centurylinklabs.watchtower.enable="true"

# A fixed, unprivileged uid/gid, so a volume's owner survives image upgrades.
# /data is created here, owned by that user (mode 0700, as `init` makes a data
# dir): a new named volume starts as a copy of it and so belongs to the user.
RUN groupadd --system --gid 10001 waiaas \
    && useradd --system --no-log-init --uid 10001 --gid waiaas \
       --home-dir /data --no-create-home --shell /usr/sbin/nologin waiaas \
    && install -d -o waiaas -g waiaas -m 0700 /data

# WAIAAS_CONTAINER=1: supervise the daemon beside the launcher and refuse
# `upgrade`. Every config key can be set as WAIAAS_{SECTION}_{KEY}; the
# daemon listens on all of the container's interfaces so a published port
# reaches it (docker-compose.yml publishes it on the host's loopback only).
ENV WAIAAS_CONTAINER=1 \
    WAIAAS_DATA_DIR=/data \
    WAIAAS_DAEMON_HOSTNAME=0.0.0.0 \
    WAIAAS_DAEMON_PORT=3100

USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 3100

# The launcher stops the daemon gracefully on SIGTERM (up to
# [daemon] shutdown_timeout, 30 s by default): give it that long
# (`docker stop -t 40`, compose's stop_grace_period).
STOPSIGNAL SIGTERM

# Exit 0 only while the supervisor runs and the daemon answers /health: no
# curl in the image. The start period covers a migration at first start.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["waiaas-launcher", "status", "--quiet"]

ENTRYPOINT ["waiaas-launcher", "run"]

# ---------------------------------------------------------------------------
# `--target prebuilt`: the context's prebuilt/ folder. TLS roots for the
# version check (rustls reads the system bundle) come with the binaries, so
# no stage runs a package manager; both programs in one folder: in the
# container the launcher runs the daemon beside it, not `current/` (which
# belongs to npm/systemd installations).
FROM runtime AS prebuilt
COPY prebuilt/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY prebuilt/waiaas-launcher prebuilt/waiaas-daemon /usr/local/bin/

# ---------------------------------------------------------------------------
# Build stage: the same Debian release as the runtime stage, so the binaries
# link against the glibc they run with.
FROM rust:1.95-bookworm AS build

WORKDIR /src
COPY . .

# Built-in release public keys (comma-separated minisign keys; public, from a
# repository variable in CI). Inside the container `upgrade` is refused, but
# the binaries are the same ones the release packages ship.
ARG WAIAAS_RELEASE_PUBKEYS=""

# The Cargo profile: `dist`, as the release packages (Cargo.toml: LTO,
# opt-level "s", stripped). `--build-arg PROFILE=dev` builds unoptimized
# binaries in a fraction of the time (the container tests build the default
# image so); cargo puts the dev profile's output in target/debug.
ARG PROFILE=dist

# Cache mounts keep the registry and the target folder between builds; the
# binaries are copied out of the cache within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --profile "$PROFILE" --locked -p waiaas-launcher -p waiaas-daemon \
    && out="target/$(if [ "$PROFILE" = dev ]; then echo debug; else echo "$PROFILE"; fi)" \
    && install -D -m 0755 -t /out "$out/waiaas-launcher" "$out/waiaas-daemon" \
    && install -m 0644 /etc/ssl/certs/ca-certificates.crt /out/

# ---------------------------------------------------------------------------
# The default: the build stage's binaries and its CA bundle, laid out as
# `prebuilt` lays them out.
FROM runtime
COPY --from=build /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/waiaas-launcher /out/waiaas-daemon /usr/local/bin/
