# ztr: secrets from AWS Secrets Manager into containers (ztr, ztr-run, /entrypoint.sh).
#   docker build -t ztr .
#   docker build --build-arg BASE_IMAGE=IMAGE -t ztr .   # any Debian-based IMAGE with python3 and python3-venv
# The package goes into a venv at /opt/ztr, so a base whose system Python is externally managed
# (PEP 668, Debian) works as well as the python images. The final stage runs as UID 65532.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# WHEELS: a directory of wheels to install from instead of PyPI (offline builds; tests/image/run.sh
# mounts one with `buildah build --volume`, since pip in the build cannot verify PyPI's TLS there).
ARG WHEELS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY sidecar ./sidecar
# Runtime dependencies only (botocore, tenacity, prometheus-client). pip, setuptools and wheel leave
# the venv: nothing installs at run time. Then botocore's data (models of 400+ services, ~23 MB) is
# cut to what ztr needs, by ztr itself from the installed botocore: `sidecar.clients generate` writes
# the selection ztr loads (the models of the services it and botocore's credential chain call, and
# endpoints.json cut to them) under /opt/ztr/share/ztr, `prune-botocore-data` deletes every other
# service from botocore/data (the shared files stay whole, so botocore alone still works for the
# selected services), and `verify` fails the build if the selection does not match botocore.
# Bytecode: compiled here, because the running image is read-only and non-root; as unchecked-hash
# .pyc, so imports never stat a source file to validate it (nothing in the image ever changes).
RUN python3 -m venv /opt/ztr \
 && if [ -n "$WHEELS" ]; then set -- --no-index --find-links "$WHEELS"; fi \
 && /opt/ztr/bin/python3 -m pip install --no-cache-dir --no-compile "$@" . \
 && /opt/ztr/bin/python3 -m pip uninstall --yes --quiet pip setuptools wheel \
 && /opt/ztr/bin/python3 -m sidecar.clients generate \
 && /opt/ztr/bin/python3 -m sidecar.clients prune-botocore-data \
 && /opt/ztr/bin/python3 -m sidecar.clients verify \
 && /opt/ztr/bin/python3 -m compileall -f -q -j 0 --invalidation-mode unchecked-hash /opt/ztr/lib \
 && /opt/ztr/bin/ztr --version

FROM ${BASE_IMAGE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ztr" \
      org.opencontainers.image.description="Secrets from AWS Secrets Manager into containers: exec-wrapper, init container and sidecar, kept current on rotation." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# A fixed numeric user, so Kubernetes runAsNonRoot can check it and --owner 65532 matches.
RUN groupadd --gid 65532 ztr \
 && useradd --no-log-init --uid 65532 --gid 65532 --home-dir /nonexistent \
      --no-create-home --shell /usr/sbin/nologin ztr \
 && install -d -o 65532 -g 65532 -m 0700 /secrets
# On Fargate a task volume mounted here starts as a copy of this directory, owner included, so
# ztr (65532) can write /secrets/app.env; an unlisted path would be root-owned (ecs/fargate-init.json).
VOLUME ["/secrets"]
COPY --from=build /opt/ztr /opt/ztr
COPY --chmod=0755 entrypoint.sh /entrypoint.sh
ENV PATH="/opt/ztr/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
STOPSIGNAL SIGTERM
ENTRYPOINT ["/entrypoint.sh"]
