# syntax=docker/dockerfile:1
#
# etcdsafe's container image: one fully static binary (glibc, statically linked), etcd's own
# etcdutl and etcdctl for restores, CA certificates, and nothing else (no shell).
#
#   docker build -t registry.example.com/etcdsafe:0.1.0 .
#
# The build command is the one scripts/check-static.sh runs and tests (tests/deploy.rs), so what
# that script proves of the binary (static, runs in an empty root) holds for this image's binary.
# Every base image is pinned by tag; pin by digest too (FROM image:tag@sha256:...) in a release
# pipeline, from `docker buildx imagetools inspect IMAGE:TAG`.

# The Rust toolchain the project builds and tests with (rustc 1.95.0), Debian 12.
ARG RUST_IMAGE=rust:1.95.0-bookworm
# etcd's official release image; 3.5.21 is the etcd of Kubernetes 1.33 (kubeadm). Its etcdutl
# and etcdctl are static Go binaries. Use the minor version your clusters run.
ARG ETCD_IMAGE=gcr.io/etcd-development/etcd:v3.5.21
# Debian 12 distroless: CA certificates, tzdata, /etc/passwd with nonroot (65532), no shell.
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# protoc: etcd-client's build script compiles etcd's protobuf definitions, which import
# google/protobuf/descriptor.proto. That file is in libprotobuf-dev, only a Recommends of
# protobuf-compiler, so both are named (as in scripts/install-deps.sh). Debian 12's packages
# (3.21.12) are not pinned to a revision: security updates replace the old one in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# crt-static with an explicit --target: the binary links glibc statically, while build scripts
# and proc macros (built for the host) stay dynamic, as they must. strip --strip-debug drops the
# release profile's line tables (about 180 MB down to about 38 MB) and keeps the symbols, so a
# panic's backtrace still names its functions.
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && install -D -m 0755 target/x86_64-unknown-linux-gnu/release/etcdsafe /out/etcdsafe \
 && strip --strip-debug /out/etcdsafe
# Refuse a dynamic binary: no program interpreter, no shared library needed. Then run it.
RUN if readelf -lW /out/etcdsafe | grep -q 'INTERP' || readelf -dW /out/etcdsafe | grep -q '(NEEDED)'; then \
      echo "etcdsafe is not statically linked" >&2; exit 1; \
    fi \
 && /out/etcdsafe --version

FROM ${ETCD_IMAGE} AS etcd

FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="etcdsafe" \
      org.opencontainers.image.description="Verified, compressed, encrypted backups of the etcd behind a Kubernetes cluster" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/etcdsafe /etcdsafe
COPY --from=etcd /usr/local/bin/etcdutl /usr/local/bin/etcdctl /usr/local/bin/
# nonroot (65532) by default. The DaemonSet and the static pod run as uid 0 without any
# capability, to read kubeadm's root-only etcd client key and 0400 Secret files: see
# deploy/daemonset.yaml and docs/INSTALL.md.
USER 65532:65532
ENTRYPOINT ["/etcdsafe"]
CMD ["run"]
