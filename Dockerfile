# switchyard: one static-ish binary in a small runtime image.
#
#   docker build -t switchyard .
#   docker run -p 8080:8080 -v switchyard-data:/data switchyard          # the demo
#   docker run -p 8080:8080 -v switchyard-data:/data -v "$PWD":/project:ro switchyard
#
# The image holds the demo project; mount yours at /project (read-only is
# fine: the process runs as uid 10001 and writes only to /data). The log
# lives in the /data volume. Off loopback the API needs a token: set
# SWITCHYARD_TOKEN, or the default command generates one in /data/api-token.
# .ci/docker-check replays these stages without a Docker engine.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/engine.rs && echo 'fn main() {}' > benches/restart.rs \
 && touch tests/tests.rs \
 && cargo build --release --locked --bin switchyard || true
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin switchyard

FROM debian:bookworm-slim
# The system's roots for https, amqps:// and database TLS.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /project --shell /usr/sbin/nologin switchyard \
 && mkdir -p /data /project \
 && chown switchyard /data
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY examples /project/examples
COPY bindings /project/bindings
COPY switchyard.json /project/switchyard.json
# The demo's own files (its SQLite shop database, dropped CSVs) live here.
RUN mkdir -p /project/demo/inbox && chown -R switchyard /project/demo
USER switchyard
WORKDIR /project
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["switchyard", "health", "--server", "127.0.0.1:8080"]
ENTRYPOINT ["switchyard"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data", "--generate-token"]
