# The tokenquota HTTP service: the wheel built in one stage, installed into a venv
# that the slim runtime stage copies, run as a user without privileges.
#
#   docker build -t tokenquota .
#   docker run -p 8000:8000 -v tokenquota-data:/data tokenquota
#
# BASE is any Debian-like image with python3 (3.11+) and its venv module. The
# published build uses python:3.11-slim; the image test (make image-test) builds
# this same file on a base made here from Debian's packages (docs/deploy.md).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Extra pip options for the wheel step. Empty: dependencies come from PyPI. The
# image test sets "--no-index --find-links /wheelhouse" and mounts a wheelhouse
# prepared on the host, so the build needs no network at all.
ARG PIP_ARGS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python3 -m venv /opt/tokenquota \
 && /opt/tokenquota/bin/pip wheel --wheel-dir /wheels ${PIP_ARGS} ".[postgres,redis]" \
 && /opt/tokenquota/bin/pip install --no-index --find-links /wheels "tokenquota[postgres,redis]" \
 && /opt/tokenquota/bin/tokenquota --help > /dev/null

FROM ${BASE} AS runtime
# A fixed uid, so a bind-mounted /data can be chowned to it ahead of time.
RUN groupadd --gid 10001 tokenquota \
 && useradd --uid 10001 --gid tokenquota --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin tokenquota \
 && mkdir -p /data && chown tokenquota:tokenquota /data
COPY --from=build /opt/tokenquota /opt/tokenquota
# The SQLite default store and the fail-open spool live in the volume, so they
# outlive the container; set TOKENQUOTA_DB to a postgresql:// URL for replicas.
ENV PATH=/opt/tokenquota/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TOKENQUOTA_DB=sqlite:////data/tokenquota.db \
    TOKENQUOTA_SPOOL=/data/tokenquota-spool.db
WORKDIR /data
VOLUME ["/data"]
USER tokenquota:tokenquota
EXPOSE 8000
# No curl in a slim image: the runtime's own Python asks /healthz instead.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TOKENQUOTA_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["tokenquota"]
CMD ["serve", "--host", "0.0.0.0"]
