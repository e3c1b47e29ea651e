# switchyard: one static-ish binary in a small runtime image.
#
#   docker build -t switchyard .
#   docker run -p 8080:8080 -v switchyard-data:/data -v "$PWD":/project switchyard
#
# The project (switchyard.json, workflows/, bindings/) is mounted at /project;
# the log lives in the /data volume.

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
RUN useradd --system --uid 10001 --home-dir /project --shell /usr/sbin/nologin switchyard \
 && mkdir -p /data /project \
 && chown switchyard /data
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY examples/workflows /project/examples/workflows
COPY switchyard.json /project/switchyard.json
USER switchyard
WORKDIR /project
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["switchyard", "health", "--server", "127.0.0.1:8080"]
ENTRYPOINT ["switchyard"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"]
