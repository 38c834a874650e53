# Décroché controller image: the `ivr` command on Python 3.11.
#
# Built by docker-compose.yml with the repository root as context:
#   docker build -f docker/controller.Dockerfile -t decroche .
# Only pyproject.toml, README.md and ivr/ go in (controller.Dockerfile.dockerignore).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY ivr ./ivr
RUN pip install . \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/decroche --create-home decroche \
    && rm -rf /src

# Working directory = where the Redis spool file lives (config.toml spool_path).
USER decroche
WORKDIR /var/lib/decroche
# FastAGI, dashboard.
EXPOSE 4573 8080

ENTRYPOINT ["ivr"]
CMD ["--log-format", "json", "run", "--config", "/etc/decroche/config.toml"]
