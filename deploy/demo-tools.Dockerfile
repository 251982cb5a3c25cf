# The one-shot jobs of docker-compose.yml (not part of a real deployment): provisioning the
# consortium's startup kits, writing the FLCHAIN demo hospitals' CSVs, running the demo plan as
# the operator. Torch-free: the coordinator's dependencies plus the `data` extra.
#
#   make wheelhouse
#   docker build -f deploy/demo-tools.Dockerfile -t concordia/demo-tools:0.1.0 .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY wheelhouse/ /wheelhouse/
COPY deploy/requirements/ /tmp/requirements/
RUN python3 -m venv /opt/concordia \
    && /opt/concordia/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
        -r /tmp/requirements/demo-tools.txt \
    && /opt/concordia/bin/pip install --no-cache-dir --no-index --find-links /wheelhouse \
        --no-deps concordia==0.1.0 \
    && /opt/concordia/bin/python -c "import survival.data, fedctl.cli, fedctl.demo"
COPY deploy/demo/compose_jobs.py /opt/concordia/compose_jobs.py

FROM ${BASE_IMAGE} AS demo-tools
# Mount points of the compose volumes, owned by the job user so that new named volumes start
# out writable by it (Docker and podman copy a mount point's owner into an empty volume).
ARG DEMO_SITES="hospital-a hospital-b hospital-c"
RUN groupadd --gid 10001 concordia \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin concordia \
    && mkdir -p /kits/ca /kits/coordinator /kits/operators/operator \
        /kits/operators/healthcheck /kit \
    && for site in ${DEMO_SITES}; do mkdir -p "/kits/sites/${site}" "/data/${site}"; done \
    && chown -R 10001:10001 /kits /data
COPY --from=build /opt/concordia /opt/concordia
RUN printf '#!/bin/sh\nexec /opt/concordia/bin/python /opt/concordia/compose_jobs.py "$@"\n' \
        > /usr/local/bin/concordia-demo \
    && chmod 0755 /usr/local/bin/concordia-demo
ENV PATH=/opt/concordia/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["concordia-demo"]
CMD ["--help"]
