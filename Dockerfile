# syntax=docker/dockerfile:1
# The model-traffic-operator image: `make image` (IMAGE=registry/name:tag to name it).
#
# Both stages use the same base, pinned by its exact version tag (Python 3.11.15 on Debian 13 "trixie",
# the slim variant). A tag can be re-pushed; to make the build reproducible bit for bit, pin the digest
# as well when publishing (Renovate or Dependabot keep tag and digest current):
#   docker buildx imagetools inspect python:3.11.15-slim-trixie   ->   FROM python:3.11.15-slim-trixie@sha256:<digest>
# tests/test_image.py checks this file (pinned FROMs, the lock installed with its hashes, non-root numeric
# USER, no build tools in the final stage, ENTRYPOINT = the console script) and runs that entrypoint from
# the wheel built and installed the same way.

# --- builder: the project's wheel and its dependencies as wheels ---------------------------------------
FROM python:3.11.15-slim-trixie AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# requirements/ is the lock (`make lock`): every version pinned with its hashes, checked on download. First pip
# and the build backend (build.txt), then the dependencies (runtime.txt), as binary wheels only, so nothing is
# compiled and no compiler is needed here either; then the project's own wheel, resolving and fetching nothing.
COPY requirements/build.txt requirements/runtime.txt requirements/
RUN pip install --root-user-action=ignore --require-hashes -r requirements/build.txt
RUN pip wheel --wheel-dir /wheels --only-binary=:all: --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel --wheel-dir /wheels --no-deps --no-build-isolation .

# --- final: only the installed wheels, run as a non-root user ------------------------------------------
FROM python:3.11.15-slim-trixie
LABEL org.opencontainers.image.title="model-traffic-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs LLM traffic declaratively on Envoy AI Gateway, Envoy Gateway and KServe" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing is written at run time: bytecode is compiled when pip installs (below), never on import, so the
# container runs with readOnlyRootFilesystem. prometheus-client keeps its metrics in memory
# (PROMETHEUS_MULTIPROC_DIR stays unset); kopf and the Kubernetes client write no files in-cluster.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The wheels come in through a bind mount, so they are not left in a layer; only the locked versions are
# there, so that is what pip installs. Then the packaging tools (pip, setuptools, wheel) go too: nothing can
# be built or installed in the running container.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --root-user-action=ignore --no-index --find-links=/wheels model-traffic-operator \
    && pip uninstall --yes setuptools wheel pip
# 65532: the customary non-root uid/gid ("nonroot" of distroless images); numeric, so Kubernetes'
# runAsNonRoot can verify it without an /etc/passwd entry.
USER 65532:65532
# Metrics (MTO_METRICS_PORT) and kopf's liveness endpoint (/healthz, MTO_LIVENESS_PORT).
EXPOSE 8080 8081
ENTRYPOINT ["model-traffic-operator"]
CMD ["run"]
