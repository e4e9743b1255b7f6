# syntax=docker/dockerfile:1
# Build stage: pingora needs cmake (zlib-ng) to build.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p wsgate -p backend-example

# Runtime stage: just the binaries, run as a non-root user (uid 10001).
# /etc/wsgate is root's and read-only to it; /var/lib/wsgate is the one
# directory it owns, where the default config's development certificate and
# admin token are created at the first start. tests/e2e/image.rs reads the
# useradd, install -d, COPY of the config, USER and CMD lines below and
# runs the binary in the same layout: keep their shape.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin wsgate \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/wsgate
COPY --from=build /src/target/release/wsgate /usr/local/bin/wsgate
COPY --from=build /src/target/release/chat-backend /usr/local/bin/chat-backend
COPY deploy/docker/wsgate.yaml /etc/wsgate/wsgate.yaml
USER 10001:10001
VOLUME ["/var/lib/wsgate"]
EXPOSE 8443
ENTRYPOINT ["wsgate"]
CMD ["run", "-c", "/etc/wsgate/wsgate.yaml"]
