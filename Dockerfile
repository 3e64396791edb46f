# Build with the official Rust image, run on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin traceloom

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 traceloom
COPY --from=build /src/target/release/traceloom /usr/local/bin/traceloom
COPY pipelines /etc/traceloom/pipelines
USER traceloom
EXPOSE 4317 4318 8888
ENTRYPOINT ["traceloom", "--log-format", "json"]
CMD ["run", "--config", "/etc/traceloom/pipelines/docker.yaml"]
