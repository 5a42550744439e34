# syntax=docker/dockerfile:1
# Build: the offline query data in .sqlx/ means no database is needed to compile.
FROM rust:1.95-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY . .
RUN cargo build --release --locked -p portcullis \
 && cp target/release/portcullis /usr/local/bin/portcullis

# Run: a small Debian image with the binary, as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/portcullis --create-home portcullis \
 && install -d -o portcullis -g portcullis -m 0700 /var/lib/portcullis/shared
COPY --from=build /usr/local/bin/portcullis /usr/local/bin/portcullis
USER portcullis
WORKDIR /var/lib/portcullis
ENV PORTCULLIS_LISTEN=0.0.0.0:8080 \
    PORTCULLIS_ADMIN_LISTEN=0.0.0.0:9464 \
    PORTCULLIS_DATA_DIR=/var/lib/portcullis
EXPOSE 8080 9464
# /healthz answers on the main port whichever plane the process runs.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["portcullis"]
CMD ["serve"]
