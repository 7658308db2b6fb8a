# syntax=docker/dockerfile:1
# The smart-operator image: a static (musl) binary on an empty base, running as an unprivileged user.
#
#   docker build -t <registry>/<org>/smart-operator:<version> .
#
# The result holds the binary, the CA certificates it verifies auth servers against (reqwest reads the
# system store; a SmartAuthServer's tls.caBundle replaces it per server) and a passwd entry for user
# 65532. No shell, no package manager, no libc. The Helm chart runs it with a read-only root filesystem.
#
# hack/image builds this file's final stage as it is, with the `build` stage replaced by the binary,
# passwd and group built on the host (buildah --build-context build=<dir>): keep the final stage's
# inputs under /out and /etc/ssl/certs, and the passwd/group entries as `echo '...' > /out/<file>`.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
# musl-dev links the static binary (ring compiles a little C with the image's gcc); binutils has the
# readelf check below. rustls does TLS, so no OpenSSL is needed.
RUN apk add --no-cache musl-dev binutils ca-certificates
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Cargo.toml declares bench targets; cargo refuses a manifest whose target files are missing.
COPY benches ./benches
COPY src ./src
# On Alpine the host target is *-unknown-linux-musl, which links statically by default, so the same
# Dockerfile builds amd64 and arm64 images natively. The caches speed up rebuilds; the binary is copied
# out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin smart-operator \
    && install -D -m 0755 target/release/smart-operator /out/smart-operator
# Refuse a dynamically linked binary: the runtime image has no loader or libc.
RUN if readelf -l /out/smart-operator | grep -q 'program interpreter'; then \
      echo 'smart-operator is not statically linked' >&2; exit 1; \
    fi \
    && /out/smart-operator version
RUN echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' > /out/passwd \
    && echo 'nonroot:x:65532:' > /out/group

FROM scratch
LABEL org.opencontainers.image.title="smart-operator" \
      org.opencontainers.image.description="Kubernetes operator that registers SMART on FHIR OAuth clients declaratively" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/smart-operator/smart-operator"
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/passwd /etc/passwd
COPY --from=build /out/group /etc/group
COPY --from=build /out/smart-operator /smart-operator
USER 65532:65532
# /metrics, /livez and /readyz (--metrics-address).
EXPOSE 8080
ENTRYPOINT ["/smart-operator"]
CMD ["run"]
