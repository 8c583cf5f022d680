# syntax=docker/dockerfile:1
# dbwarden's container image: a static-ish Rust binary on distroless.
#
#   docker build -t registry.example.com/dbwarden:0.1.0 .
#
# Build: the locked dependency set (Cargo.lock), release profile, only the
# dbwarden binary. Runtime: distroless cc (glibc, libgcc, CA certificates; no
# shell, no package manager), as the unprivileged user 65532, which the
# Kubernetes manifests (deploy/kubernetes) also require. dbwarden brings its
# own TLS (rustls) and root certificates. Pin the base images by digest in
# your own builds (`FROM image:tag@sha256:...`).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# What `cargo build --bin dbwarden` reads: the manifest, the lock file and the
# sources (.dockerignore keeps target/ and the rest out of the context).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The default build has PostgreSQL, Neo4j and Kubernetes support; a smaller
# PostgreSQL-only image: docker build --build-arg CARGO_FEATURES=--no-default-features .
ARG CARGO_FEATURES=""
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin dbwarden $CARGO_FEATURES \
    && install -D -m 0755 target/release/dbwarden /out/dbwarden

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/dbwarden /usr/local/bin/dbwarden
# /metrics, /livez, /readyz, /api/v1/*: listen on 0.0.0.0:9641 in a container
# (server.listen, or DBWARDEN_SERVER__LISTEN=0.0.0.0:9641).
EXPOSE 9641
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/dbwarden"]
CMD ["run", "--config", "/etc/dbwarden/dbwarden.toml"]
