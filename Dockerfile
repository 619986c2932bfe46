# syntax=docker/dockerfile:1
# cache-layer image: build on Debian bookworm, run on distroless Debian 12 (same glibc).
#
#   docker build -t cache-layer:0.1.0 .
#
# Stage 1 compiles only the dependencies against stub sources, so that layer is reused
# until Cargo.toml or Cargo.lock change; stage 2 builds the real sources on top of it.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build
# Symbols stripped from the binaries (about 3 MB off cache-layer), so the runtime image stays under
# 40 MB (docs/deploy.md). A panic's backtrace then shows addresses, not function names. Set before
# the dependency layer, so that both builds use the same profile.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols

# Dependency layer: one stub per target path the manifest declares (lib, every [[bin]],
# [[test]], [[bench]]...), because Cargo refuses a manifest whose target files are missing.
COPY Cargo.toml Cargo.lock ./
RUN set -eu; \
    sed -n 's/^path *= *"\(.*\)"/\1/p' Cargo.toml > /tmp/target-paths; \
    while read -r target; do \
        mkdir -p "$(dirname "$target")"; \
        echo 'fn main() {}' > "$target"; \
    done < /tmp/target-paths; \
    : > src/lib.rs; \
    cargo build --release --locked --bin cache-layer --bin cache-layer-loadtest; \
    rm -rf src

# The disk tier's directory (DISK_CACHE_DIR=/var/cache/cache-layer in docker-compose.yml), made
# here because the runtime image has no shell; copied below owned by the runtime user, so a named
# volume mounted there starts out writable by it (Docker and podman copy the ownership of the
# image's directory into a new, empty volume). Its own step, so the dependency layer stays cached.
RUN mkdir -p /build/disk-cache

# Real sources. The stubs of targets outside src/ stay, as the manifest still names them;
# touching the sources makes sure Cargo sees them as newer than the stub build.
COPY src ./src
RUN find src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin cache-layer --bin cache-layer-loadtest \
    && test -x target/release/cache-layer \
    && test -x target/release/cache-layer-loadtest

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="cache-layer" \
      org.opencontainers.image.description="Read-through cache service: memory tier, Redis tier, coalesced origin fetches, OpenTelemetry" \
      org.opencontainers.image.licenses="MIT"
# The load test too, for runs from inside a cluster:
#   kubectl run loadtest --rm -i --restart=Never --image=<this image> --command -- \
#     cache-layer-loadtest --url http://<service>:5000 --pattern zipf --rate 500 -c 8 --duration 30s
COPY --from=builder /build/target/release/cache-layer-loadtest /usr/local/bin/cache-layer-loadtest
COPY --from=builder /build/target/release/cache-layer /usr/local/bin/cache-layer
COPY --from=builder --chown=65532:65532 /build/disk-cache /var/cache/cache-layer
ENV LISTEN_ADDR=0.0.0.0:5000 \
    LOG_FORMAT=json \
    RUST_LOG=info
# distroless "nonroot" is uid/gid 65532; named numerically so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 5000
# The image has no curl: the binary probes its own /livez.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/cache-layer", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/cache-layer"]
