# syntax=docker/dockerfile:1

# One image for every role: `kivihook ingest | dispatcher | scheduler | all`.
#
#   docker build -t kivihook:0.1.0 .
#   docker run --rm -p 8080:8080 -e KIVIHOOK_AMQP_URL=... -e KIVIHOOK_REDIS_URL=... kivihook:0.1.0 ingest

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and compiled dependencies between builds;
# the binary is copied out because the target/ mount does not outlive this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kivihook \
    && install -D -m 0755 target/release/kivihook /out/kivihook

FROM debian:bookworm-slim AS runtime
# ca-certificates: HTTPS to webhook receivers; curl: the container health check only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 kivihook \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin kivihook
COPY --from=builder /out/kivihook /usr/local/bin/kivihook

USER 10001:10001
ENV KIVIHOOK_BIND=0.0.0.0:8080 \
    KIVIHOOK_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/kivihook"]
CMD ["all"]
