# bqsync worker image for users with Docker: the same layout scripts/image.sh builds with podman
# (which CI checks): FROM scratch, one static musl binary built with `--no-default-features
# --features gcp` (Pub/Sub, BigQuery, GCS; no DuckDB), CA certificates, non-root user 10001.
#
#   docker build -t bqsync .
#   docker run --rm -v $PWD/bqsync.toml:/etc/bqsync/bqsync.toml:ro bqsync work
#
# The embedded default (DuckDB, the SQLite-file bus) is a desktop build: `cargo build --release`.

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools ca-certificates \
 && rm -rf /var/lib/apt/lists/* && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
ENV CC_x86_64_unknown_linux_musl=musl-gcc
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --no-default-features --features gcp --bin bqsync \
 && mkdir -p /rootfs/usr/local/bin /rootfs/etc/ssl/certs /rootfs/etc/bqsync /rootfs/var/lib /rootfs/tmp /state \
 && strip -o /rootfs/usr/local/bin/bqsync target/x86_64-unknown-linux-musl/release/bqsync \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
 && cp -r schemas /rootfs/etc/bqsync/schemas \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nbqsync:x:10001:10001:bqsync:/var/lib/bqsync:/sbin/nologin\n' >/rootfs/etc/passwd \
 && printf 'root:x:0:\nbqsync:x:10001:\n' >/rootfs/etc/group \
 && chmod 1777 /rootfs/tmp && touch /state/.keep

FROM scratch
COPY --from=build /rootfs/ /
COPY --from=build --chown=10001:10001 /state/ /var/lib/bqsync/
USER 10001:10001
WORKDIR /var/lib/bqsync
# Config from a mounted file, overridable field by field with BQSYNC__SECTION__FIELD variables.
ENV BQSYNC_CONFIG=/etc/bqsync/bqsync.toml \
    BQSYNC__SCHEMAS_DIR=/etc/bqsync/schemas \
    BQSYNC_LOG=info \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
ENTRYPOINT ["/usr/local/bin/bqsync"]
CMD ["work"]
