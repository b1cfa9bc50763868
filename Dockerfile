# wodrop container image: a venv in /opt/wodrop, run as a non-root user, share + state as volumes.
#
#   docker build -t wodrop .
#   docker run -d --name wodrop --user 10001:10001 \
#     -v /srv/wodrop:/data/share -v wodrop-state:/data/state \
#     -e CUSTOMER_API_KEY -e WODROP__API__URL=https://api.<site-id>.customers.deepomatic.com wodrop
#
# BASE must provide `python3` (>= 3.11) with the venv module: the official python:3.12-slim, or a
# Debian bookworm with python3 + python3-venv (what .ci/container-test builds when no registry is
# reachable). The build needs PyPI (or PIP_INDEX_URL) and no compiler: every dependency has wheels.
ARG BASE=python:3.12-slim

# ---- build: resolve and install into a self-contained venv -------------------------------------------
FROM ${BASE} AS build
SHELL ["/bin/sh", "-eu", "-c"]
# Optional pip settings for networks with a package mirror or TLS interception, e.g.
#   --build-arg PIP_INDEX_URL=https://<mirror>/simple --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# They exist in this build stage only: nothing of them reaches the final image or its history.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LANG=C.UTF-8
WORKDIR /src
RUN python3 -m venv /opt/wodrop
# Dependencies first, from pyproject.toml alone: this layer stays cached while only daemon/ changes.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /tmp/requirements.txt \
 && /opt/wodrop/bin/pip install --no-cache-dir -r /tmp/requirements.txt
# Then the package itself. README.md is optional for the build (the glob needs one match: pyproject).
COPY pyproject.toml README.md* ./
COPY daemon/ daemon/
# pip itself is not needed at run time (the final image never installs anything): drop it.
RUN /opt/wodrop/bin/pip install --no-cache-dir --no-deps . \
 && /opt/wodrop/bin/wodrop --version \
 && /opt/wodrop/bin/python -m pip uninstall --yes --quiet pip setuptools

# ---- runtime: the venv only, no build tools ----------------------------------------------------------
FROM ${BASE}
ARG UID=10001
ARG GID=10001
ENV PATH=/opt/wodrop/bin:$PATH \
    WODROP_CONFIG=/etc/wodrop/wodrop.yaml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
# A fixed UID/GID so files written on the share have a known owner. To match the share's owner
# instead, run with `--user <uid>:<gid>` (any UID works: nothing in the image needs this user's name).
RUN groupadd --system --gid "${GID}" wodrop \
 && useradd --system --uid "${UID}" --gid wodrop --home-dir /data/state --no-create-home \
        --shell /usr/sbin/nologin wodrop \
 && mkdir -p /data/share/inbox /data/share/processing /data/share/done /data/share/failed /data/state \
 && chown -R "${UID}:${GID}" /data \
 && chmod 0750 /data/state
COPY --from=build /opt/wodrop /opt/wodrop
COPY config/docker.yaml /etc/wodrop/wodrop.yaml
USER ${UID}:${GID}
WORKDIR /data/state
VOLUME ["/data/share", "/data/state"]
# status.listen is 0.0.0.0:9410 in /etc/wodrop/wodrop.yaml (publish it with -p 127.0.0.1:9410:9410).
EXPOSE 9410
# `wodrop healthcheck` reads the config `run` reads (this file, one mounted over it, WODROP__* variables)
# and asks /healthz on its status.listen (0.0.0.0 asked on 127.0.0.1): exit 0 healthy, 1 not, one line why.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/opt/wodrop/bin/wodrop", "healthcheck"]
# Exec form: wodrop is PID 1 and receives SIGTERM itself (it drains and exits 0 within ~10 s; give
# `docker stop -t 30` for big chunks on slow links). It starts no long-lived children, so no init
# process is needed; `docker run --init` does no harm.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/wodrop/bin/wodrop"]
CMD ["run"]
