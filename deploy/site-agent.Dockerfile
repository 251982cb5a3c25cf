# The Concordia site agent, run by each hospital next to its data: outbound connections only.
#
#   make wheelhouse
#   docker build -f deploy/site-agent.Dockerfile -t concordia/site-agent:0.1.0 .
#
# Installs offline from ./wheelhouse (torch 2.13.0 CPU build; no network during the build).
# Nothing secret is baked in: at run time mount the site's startup kit read-only at /kit, its
# data read-only at /data and a writable volume at /state (privacy ledger, audit log, secure
# aggregation sessions: keep it for the life of the site). Runs as uid 10001 and works with a
# read-only root filesystem (give it a tmpfs at /tmp).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY wheelhouse/ /wheelhouse/
RUN python3 -m venv /opt/concordia \
    && /opt/concordia/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
        concordia==0.1.0 torch==2.13.0 \
    && /opt/concordia/bin/python -c "import site_agent.agent, torch, opacus, dp_accounting"
COPY deploy/healthcheck.py /opt/concordia/healthcheck.py

FROM ${BASE_IMAGE} AS site-agent
LABEL org.opencontainers.image.title="concordia-site-agent" \
      org.opencontainers.image.description="Concordia site agent (federated survival analysis)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 concordia \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin concordia \
    && mkdir -p /kit /data /state \
    && chown 10001:10001 /state
COPY --from=build /opt/concordia /opt/concordia
ENV PATH=/opt/concordia/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CONCORDIA_SITE_STATE_DIR=/state
USER 10001:10001
WORKDIR /state
VOLUME ["/state"]
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/opt/concordia/healthcheck.py", "site"]
ENTRYPOINT ["python", "-m", "site_agent"]
CMD ["--config", "/kit/site.toml"]
