# syntax=docker/dockerfile:1
# One image for both sides of mailfleet: `mailfleet operator ...` (the Helm chart's Deployment)
# and `mailfleet mta --config ...` (the StatefulSets the operator renders).
#
#   make image                       # docker build -t mailfleet:dev .
#   make image IMAGE=registry.example.com/mailfleet:0.1.0
#
# Build stage: wheels for mailfleet and every dependency, so the runtime stage needs no compiler
# and no network beyond what pip already fetched here.
# BASE: any image with Python 3.11 and pip on PATH. Without Docker, hack/image.sh (make node-image)
# follows these steps with buildah on a Debian bookworm base made here by debootstrap.
ARG BASE=python:3.11-slim
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY operator ./operator
COPY mta ./mta
RUN pip wheel --wheel-dir /wheels .

FROM ${BASE}
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels mailfleet \
 && groupadd --gid 10001 mailfleet \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mailfleet \
 && mkdir -p /var/spool/mailfleet \
 && chown 10001:10001 /var/spool/mailfleet
# Numeric, so runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/spool/mailfleet
ENTRYPOINT ["mailfleet"]
CMD ["--help"]
