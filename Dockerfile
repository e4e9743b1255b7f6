# syntax=docker/dockerfile:1
# Build stage: pingora needs cmake (zlib-ng) to build.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p wsgate -p backend-example

# Runtime stage: just the binaries, run as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin wsgate
COPY --from=build /src/target/release/wsgate /usr/local/bin/wsgate
COPY --from=build /src/target/release/chat-backend /usr/local/bin/chat-backend
COPY config/wsgate.yaml /etc/wsgate/wsgate.yaml
USER wsgate
EXPOSE 8443
ENTRYPOINT ["wsgate"]
CMD ["run", "-c", "/etc/wsgate/wsgate.yaml"]
