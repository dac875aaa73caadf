# bqsync container image: multi-stage, small non-root runtime.
#
#   docker build -t bqsync .
#   docker run --rm -v $PWD/bqsync.toml:/etc/bqsync/bqsync.toml:ro bqsync work
#
# Not built on the development machines (no Docker engine runs there): kept simple, every step is
# one the project's own scripts run and CI exercises (scripts/setup.sh, cargo build --release).

FROM rust:1.95-bookworm AS build
# npm: scripts/setup.sh fetches the prebuilt libduckdb.so from the npm registry once.
RUN apt-get update && apt-get install -y --no-install-recommends npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN bash scripts/setup.sh \
 && cargo build --release --locked --bin bqsync \
 && mkdir -p /out && cp target/release/bqsync /out/ && cp .deps/duckdb/libduckdb.so /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin bqsync \
 && mkdir -p /etc/bqsync /var/lib/bqsync && chown bqsync:bqsync /var/lib/bqsync
# The binary's rpath points into the build tree; the library goes to a system path instead.
COPY --from=build /out/libduckdb.so /usr/local/lib/libduckdb.so
RUN ldconfig
COPY --from=build /out/bqsync /usr/local/bin/bqsync
COPY schemas /etc/bqsync/schemas
USER 10001:10001
WORKDIR /var/lib/bqsync
# Config from a mounted file, overridable field by field with BQSYNC__SECTION__FIELD variables.
ENV BQSYNC_CONFIG=/etc/bqsync/bqsync.toml \
    BQSYNC__SCHEMAS_DIR=/etc/bqsync/schemas \
    BQSYNC_LOG=info
ENTRYPOINT ["/usr/local/bin/bqsync"]
CMD ["work"]
