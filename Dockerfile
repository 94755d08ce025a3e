# One image holding both binaries: `web` (the default command) and `worker`.
#   docker build -t watermark .
#   docker run ... watermark          # web, on 0.0.0.0:8080
#   docker run ... watermark worker   # a worker
# Templates (askama), static files, the logo, the font and the migrations are compiled into the
# binaries, so the runtime stage needs nothing but the two executables and CA certificates.
# Needs BuildKit (the default builder of Docker 23 and later) for the cache mounts.

FROM rust:1.95-bookworm AS builder

# cmake and nasm build the vendored libjpeg-turbo (with its SIMD code) that `turbojpeg` links
# statically; pkg-config is what its build script probes first. Not pinned: Debian stable only
# ships security and bug fixes, and old versions vanish from its mirrors.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake nasm pkg-config \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole workspace: every member (system-tests included) must be present for cargo to load it.
COPY . .

# The registry and target caches survive between builds; the binaries are copied out of the
# cached target folder in the same step, since a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p web -p worker \
    && install -m 0755 target/release/web target/release/worker /usr/local/bin/


FROM debian:bookworm-slim AS runtime

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# An unprivileged user with a fixed id (so volume and policy rules can name it) and no login.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app

COPY --from=builder /usr/local/bin/web /usr/local/bin/worker /usr/local/bin/

# An empty working folder: both binaries look for an optional `.env` here and find none, so the
# settings come from the container's environment only.
WORKDIR /app
USER 10001:10001

# Read by `web` only; the worker ignores them.
ENV HOST=0.0.0.0 PORT=8080
EXPOSE 8080

# Both binaries stop gracefully on SIGTERM (`docker stop`).
CMD ["web"]
