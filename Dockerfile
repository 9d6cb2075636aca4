# syntax=docker/dockerfile:1
# The kacme image: one static binary, /kacme, on distroless/static, as the non-root user 65532.
# The operator runs `kacme controller`; HTTP-01 solver Pods run the same image with `solver ...` arguments.
#
#   docker build -t ghcr.io/kacme/kacme:0.1.0 .        # tag = the crate version = the chart's appVersion
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/kacme/kacme:0.1.0 --push .

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
ARG TARGETARCH
# aws-lc-rs (the only crypto provider) compiles C: musl-gcc links it statically.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    case "${TARGETARCH:-amd64}" in \
      amd64) target=x86_64-unknown-linux-musl ;; \
      arm64) target=aarch64-unknown-linux-musl ;; \
      *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac; \
    rustup target add "$target"; \
    cargo build --release --locked --bin kacme --target "$target"; \
    install -D -m 0755 "target/$target/release/kacme" /out/kacme

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /out/kacme /kacme
USER 65532:65532
# /metrics, /healthz and /readyz of `kacme controller`; 8089 is where `kacme solver` listens.
EXPOSE 9402 8089
ENTRYPOINT ["/kacme"]
