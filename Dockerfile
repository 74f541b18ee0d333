# regcache: a pull-through registry cache for containerd.
#
#   docker build -t regcache .
#   docker run -d -p 3000:3000 -v regcache-data:/var/cache/regcache regcache
#   docker run --rm regcache --help
#
# Options go after the image name, or as REGCACHE_<LONG_NAME> environment variables, or in a YAML
# file mounted into the container and named with -c. REGCACHE_CACHE_DIR is set below, and the
# environment wins over the config file: to move the cache, set the variable or pass -d.
#
# Bookworm (Debian 12) is pinned so that the runtime package is called libcurl4 (Debian 13 renamed
# it libcurl4t64) and so that the image matches the system the test suite runs on.

# --- builder: compile pycurl against Debian's libcurl and install regcache into a venv ---------
FROM python:3.11-slim-bookworm AS builder

RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libcurl4-openssl-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The steps below are also run outside Docker by tests/test_packaging.py: keep them plain
# commands, one per RUN, with the venv at /opt/regcache.
RUN python -m venv /opt/regcache
# pycurl is built from source so that it links the system's libcurl (security updates come with
# the base image), not the copy bundled in its binary wheel.
RUN /opt/regcache/bin/pip install --no-binary pycurl .
RUN /opt/regcache/bin/python -m regcache --version

# --- runtime: Python, libcurl and the venv; no compiler ------------------------------------------
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends libcurl4 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 regcache \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin regcache \
    && mkdir -p /var/cache/regcache \
    && chown 10001:10001 /var/cache/regcache

COPY --from=builder /opt/regcache /opt/regcache

ENV PATH=/opt/regcache/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    REGCACHE_CACHE_DIR=/var/cache/regcache

USER 10001:10001
EXPOSE 3000
VOLUME /var/cache/regcache
ENTRYPOINT ["python", "-m", "regcache"]
