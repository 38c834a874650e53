# SIP test caller for docker-compose.sip-test.yml: Debian's packaged sipp.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends sip-tester \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["sipp"]
