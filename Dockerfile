# syntax=docker/dockerfile:1
#
# The chorus image: the release binary on a distroless base (glibc and
# libgcc_s, which the binary links, plus CA roots and tzdata; no shell, no
# package manager), running as a non-root user.
#
#   docker build -t chorus .
#   docker run -p 8080:8080 chorus demo --listen 0.0.0.0:8080
#   docker run -p 8080:8080 -v "$PWD/config/chorus.toml:/etc/chorus/chorus.toml" chorus
#
# The image ships no config: mount yours at /etc/chorus/chorus.toml.

# The crate version (Cargo.toml). The image's version label says this, and
# the build fails unless `chorus --version` says the same.
ARG CHORUS_VERSION=0.1.0
# The toolchain CI uses (`rustc --version`).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG CHORUS_VERSION
WORKDIR /src
COPY . .
# The same command as CI's release build; `.cargo/config.toml` and pgo/ come
# with the sources, so the binary is optimized with the committed profile
# (pgo/README.md). The registry and target/ live in
# BuildKit caches, so a rebuild recompiles only what changed; the binary is
# copied out of the cache mount before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
    && install -D -m 0755 target/release/chorus /out/chorus
RUN version="$(/out/chorus --version)" \
    && if [ "$version" != "chorus ${CHORUS_VERSION}" ]; then \
         echo "the binary says '$version' but CHORUS_VERSION is ${CHORUS_VERSION}" >&2; exit 1; \
       fi

# Debian 12 (bookworm), like the build stage: the same glibc.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG CHORUS_VERSION
LABEL org.opencontainers.image.title="chorus" \
      org.opencontainers.image.description="A streaming reverse proxy that coalesces identical in-flight LLM requests onto one upstream stream" \
      org.opencontainers.image.version="${CHORUS_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/chorus /usr/local/bin/chorus
# Where `chorus` (= `chorus run`) reads its config; mount it there.
ENV CHORUS_CONFIG=/etc/chorus/chorus.toml
# The distroless "nonroot" user, by number so that Kubernetes' runAsNonRoot
# can verify it.
USER 65532:65532
# 8080: the gateway (server.listen); 9090: /healthz, /readyz, /metrics
# (admin.listen).
EXPOSE 8080 9090
# SIGTERM drains: stop accepting, finish streams for up to shutdown_grace.
STOPSIGNAL SIGTERM
# No shell in the image: the binary checks itself, asking
# http://127.0.0.1:9090/healthz. With the admin listener on another port,
# override it in exec form, e.g. in Compose:
#   healthcheck: {test: ["CMD", "chorus", "health", "--url", "http://127.0.0.1:9191/healthz"]}
# (`docker run --health-cmd` needs a shell, which this image does not have.)
# Kubernetes ignores HEALTHCHECK: deploy/kubernetes uses probes instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["chorus", "health"]
ENTRYPOINT ["chorus"]
