# Build with the official Rust image (it has the C toolchain, pkg-config and OpenSSL headers that
# the bundled librdkafka build needs), run on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin traceloom

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 traceloom \
 && mkdir -p /var/lib/traceloom/data \
 && chown -R traceloom /var/lib/traceloom
COPY --from=build /src/target/release/traceloom /usr/local/bin/traceloom
COPY pipelines /etc/traceloom/pipelines
USER traceloom
# Relative paths in pipeline files (./data/lake) land here; mount a volume on ./data.
WORKDIR /var/lib/traceloom
EXPOSE 4317 4318 8888
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD ["traceloom", "health", "--admin", "127.0.0.1:8888"]
ENTRYPOINT ["traceloom", "--log-format", "json"]
CMD ["run", "--config", "/etc/traceloom/pipelines/docker.yaml"]
