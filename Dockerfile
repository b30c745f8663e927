# paxoskv server image.
#
#   make image                                  tag paxoskv:dev (IMAGE=...), picks the base
#   docker build --build-arg BASE_IMAGE=paxoskv-base:bookworm -t paxoskv:dev .
#
# BASE_IMAGE must provide `python3` (>= 3.11) with the venv module and a POSIX sh. The default
# is the official python:3.11-slim; where no registry is reachable, deploy/base-image/build.sh
# makes an equivalent Debian bookworm base with debootstrap (Debian's python3 is 3.11).
# No `# syntax=` line on purpose: it would make BuildKit pull a frontend image.
ARG BASE_IMAGE=python:3.11-slim

# ---- build: a self-contained virtualenv in /opt/paxoskv ---------------------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# build/docker-ca-bundle.crt is optional: deploy/scripts/build-image.sh puts the host's CA bundle
# there when the host reaches PyPI through a TLS-inspecting proxy. It stays in this stage; the
# runtime image never sees it. (The [t] glob lets the COPY succeed when the file is absent.)
COPY pyproject.toml constraints.txt build/docker-ca-bundle.cr[t] ./
# Dependencies first, from pyproject.toml alone, so editing the code does not reinstall them:
# install a stub package with the real metadata, then replace it with the real one below.
# constraints.txt pins every runtime dependency to the versions tested together. The k8s extra
# (the `kubernetes` client) is for --follow-replicas, which the chart turns on.
RUN python3 -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
 && if [ -f docker-ca-bundle.crt ]; then export PIP_CERT=/src/docker-ca-bundle.crt; fi \
 && python3 -m venv /opt/paxoskv \
 && mkdir -p paxoskv && touch paxoskv/__init__.py README.md \
 && /opt/paxoskv/bin/pip install -q -c constraints.txt '.[k8s]' \
 && /opt/paxoskv/bin/pip uninstall -q -y paxoskv \
 && rm -rf paxoskv build *.egg-info
COPY . .
# `pip install .` byte-compiles everything it installs, so the read-only root filesystem at
# runtime never needs a __pycache__ write. The tests / tooling extras are not installed.
RUN if [ -f docker-ca-bundle.crt ]; then export PIP_CERT=/src/docker-ca-bundle.crt; fi; \
    test -f README.md || touch README.md; \
    /opt/paxoskv/bin/pip install -q --no-deps . \
 && /opt/paxoskv/bin/paxoskv --version

# ---- runtime ------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG UID=10001
# A passwd entry for the numeric user keeps tools that look up the user (getpass, id, ps) happy;
# written directly so the base needs no useradd.
RUN echo "paxoskv:x:${UID}:${UID}:paxoskv:/data:/usr/sbin/nologin" >>/etc/passwd \
 && echo "paxoskv:x:${UID}:" >>/etc/group \
 && mkdir -p /data \
 && chown ${UID}:${UID} /data \
 && chmod 0750 /data
COPY --from=build /opt/paxoskv /opt/paxoskv
ENV PATH=/opt/paxoskv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/data \
    PAXOSKV_DATA_DIR=/data \
    PAXOSKV_LISTEN=0.0.0.0:7000
# Only /data (the acceptor's volume) and /tmp are meant to be writable: run the container with
# a read-only root, e.g.  docker run --read-only --tmpfs /tmp -v pkv:/data paxoskv:dev serve
# (the chart sets readOnlyRootFilesystem and mounts an emptyDir on /tmp).
USER ${UID}:${UID}
WORKDIR /data
EXPOSE 7000
# For plain `docker run`; Kubernetes ignores it and uses the chart's probes. /healthz = process
# alive only (never quorum), so this never restarts a healthy node during a partition. It asks
# the plain metrics port when there is one, else the client port (https under TLS: the check
# talks to its own process on loopback, so it does not verify the certificate).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import os,ssl,sys,urllib.request as u; e=os.environ.get; m=e('PAXOSKV_METRICS_LISTEN'); s='https' if e('PAXOSKV_TLS_CERT_FILE') and not m else 'http'; p=(m or e('PAXOSKV_LISTEN','0.0.0.0:7000')).rsplit(':',1)[1]; sys.exit(0 if u.urlopen('%s://127.0.0.1:%s/healthz' % (s, p), timeout=2, context=ssl._create_unverified_context()).status == 200 else 1)"]
# aiohttp's runner handles SIGTERM as PID 1 (graceful shutdown), so no init shim is needed.
ENTRYPOINT ["paxoskv"]
CMD ["serve"]
# OCI labels, last so that a new revision does not invalidate the cached layers above.
# deploy/scripts/build-image.sh passes the version from pyproject.toml and the git commit.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="paxoskv" \
      org.opencontainers.image.description="A replicated key-value store in which every key is its own single-decree Paxos register (CASPaxos)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
