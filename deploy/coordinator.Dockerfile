# The Concordia coordinator: gRPC over mutual TLS, SQLite store, no torch.
#
#   make wheelhouse
#   docker build -f deploy/coordinator.Dockerfile -t concordia/coordinator:0.1.0 .
#
# Installs offline from ./wheelhouse (no network during the build). Nothing secret is baked in:
# at run time mount the coordinator's startup kit read-only at /kit, a writable volume at /state
# (the SQLite store) and, for the gRPC health check, a probe kit at /probe (see
# deploy/healthcheck.py and docs/deploy.md). Runs as uid 10001 and works with a read-only root
# filesystem (give it a tmpfs at /tmp).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY wheelhouse/ /wheelhouse/
COPY deploy/requirements/coordinator.txt /tmp/requirements.txt
# The package's own dependencies include torch and opacus (for the site agent): install the
# coordinator's real dependencies explicitly, then concordia itself without dependencies, and
# fail the build if torch got in anyway.
RUN python3 -m venv /opt/concordia \
    && /opt/concordia/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
        -r /tmp/requirements.txt \
    && /opt/concordia/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
        --no-deps concordia==0.1.0 \
    && if /opt/concordia/bin/python -c "import torch" 2>/dev/null; then \
        echo "torch must not be in the coordinator image" >&2; exit 1; fi \
    && /opt/concordia/bin/python -c "import coordinator.server, fedctl.cli; fedctl.cli.build_parser()"
COPY deploy/healthcheck.py /opt/concordia/healthcheck.py

FROM ${BASE_IMAGE} AS coordinator
LABEL org.opencontainers.image.title="concordia-coordinator" \
      org.opencontainers.image.description="Concordia coordinator (federated survival analysis)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 concordia \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin concordia \
    && mkdir -p /kit /probe /state \
    && chown 10001:10001 /state
COPY --from=build /opt/concordia /opt/concordia
ENV PATH=/opt/concordia/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONCORDIA_SERVER_LISTEN=0.0.0.0:50051 \
    CONCORDIA_STORE_PATH=/state/coordinator.sqlite
USER 10001:10001
WORKDIR /state
VOLUME ["/state"]
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["python", "/opt/concordia/healthcheck.py", "coordinator"]
ENTRYPOINT ["python", "-m", "coordinator"]
CMD ["--config", "/kit/coordinator.toml"]
