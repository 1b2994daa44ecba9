# bbr-extproc (the default target) and bbr-gateway (`--target bbr-gateway`)
# as container images: a static binary on a minimal base, run as user
# 65532, no shell. The bbr-extproc image also carries the Envoy dynamic
# module, /libbbr_envoy.so (the chart's bbr.mode module mounts the image
# into the gateway's Envoy).
#
#   buildah bud --build-arg BBR_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t bbr-extproc .
#   docker build --build-arg BBR_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t bbr-extproc .
#   docker build --target bbr-gateway -t bbr-gateway .
#
# BASE_IMAGE may be any image that can run a static binary: the default
# distroless static (nonroot), or scratch. scripts/build-image.sh builds the
# same final image without a registry (binary built on the host, then
# `buildah from scratch`). This file builds for the platform it runs on;
# scripts/build-release.sh builds linux/amd64 and linux/arm64 (cross-
# compiled, no emulation) under one manifest list, and is the supported
# way to do so (`docker buildx --platform` over this file is untried).

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# .git is not copied into the build: the commit that --version prints
# comes from this argument.
ARG BBR_GIT_COMMIT=unknown
ENV BBR_GIT_COMMIT=${BBR_GIT_COMMIT} \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
COPY . .
# glibc and OpenSSL (the build image's libssl-dev) linked statically
# (crt-static, OPENSSL_STATIC): the binary needs nothing from the base
# image, not even a libc.
RUN target="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS="-C target-feature=+crt-static" OPENSSL_STATIC=1 \
    cargo build --release --locked -p bbr-extproc --target "$target" \
 && cp "target/$target/release/bbr-extproc" /bbr-extproc
# The dynamic module (a shared library: glibc linked dynamically, as Envoy
# loads it), carried by the image for the chart's module mode, which mounts
# the image into the gateway's Envoy (bbr.mode module). Built against this
# image's glibc (2.36): Envoys with that or a newer one load it.
RUN target="$(uname -m)-unknown-linux-gnu" \
 && cargo build --release --locked -p bbr-envoy --target "$target" \
 && cp "target/$target/release/libbbr_envoy.so" /libbbr_envoy.so

# bbr-gateway links no OpenSSL: glibc alone, statically.
FROM ${RUST_IMAGE} AS build-gateway
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /src
COPY . .
RUN target="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p bbr-gateway --target "$target" \
 && cp "target/$target/release/bbr-gateway" /bbr-gateway

FROM ${BASE_IMAGE} AS bbr-gateway
ARG BBR_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="bbr-gateway" \
      org.opencontainers.image.description="HTTP gateway routing LLM inference requests to model pools on the model named in the body" \
      org.opencontainers.image.source="https://github.com/bbr-rs/bbr" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${BBR_GIT_COMMIT}"
COPY --from=build-gateway --chown=65532:65532 /bbr-gateway /bbr-gateway
USER 65532:65532
# Clients, and /healthz, /readyz and /metrics unless --admin-listen moves them.
EXPOSE 8080
ENTRYPOINT ["/bbr-gateway"]
# Arguments given to the container replace these: repeat --listen.
CMD ["--listen", "0.0.0.0:8080"]

# The last stage: what a build without --target makes.
FROM ${BASE_IMAGE} AS bbr-extproc
ARG BBR_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="bbr-extproc" \
      org.opencontainers.image.description="Envoy ext_proc server routing LLM inference requests on the model named in the body" \
      org.opencontainers.image.source="https://github.com/bbr-rs/bbr" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${BBR_GIT_COMMIT}"
COPY --from=build --chown=65532:65532 /bbr-extproc /bbr-extproc
COPY --from=build --chown=65532:65532 /libbbr_envoy.so /libbbr_envoy.so
USER 65532:65532
# ext_proc gRPC, grpc.health.v1 (plaintext), Prometheus /metrics.
EXPOSE 9004 9005 9090
ENTRYPOINT ["/bbr-extproc"]
