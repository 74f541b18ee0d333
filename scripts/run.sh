#!/usr/bin/env bash
# Run regcache from this checkout, on a stock Debian 12 / Ubuntu python3: the first run makes a
# virtual environment in .venv and installs regcache (editable) and its dependencies into it, so
# the system's Python is never touched (PEP 668 refuses `pip install .` there, and pip may not
# even be installed); later runs start at once, and reinstall only when setup.py changes.
#
#   ./scripts/run.sh                          # python -m regcache -c conf/regcache.yaml
#   ./scripts/run.sh -p 3001 -d /var/tmp/rc   # other arguments go to regcache instead
#   ./scripts/run.sh node-config --help       # so do its commands
#   PYTHON=python3.12 ./scripts/run.sh        # another interpreter (3.11 or later)
#
# Debian's python3 has no venv support until python3.X-venv is installed: as root this script
# installs it with apt-get, otherwise it says which package to install.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
say() { echo "run.sh: $*" >&2; }
die() { say "$*"; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "$PY not found: apt-get install python3 (regcache needs Python 3.11 or later)"
version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PY is Python $version; regcache needs 3.11 or later (Ubuntu 22.04: apt-get install python3.11 python3.11-venv, then PYTHON=python3.11 $0)"

# A usable venv: its python runs and has pip. A half-made one (an earlier run without ensurepip)
# or one whose interpreter went away (a Python upgrade) is made again.
usable() { [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }

if ! usable; then
    if ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
        package="python$version-venv"
        if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
            say "$PY cannot make a virtual environment without $package: apt-get install $package"
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
        else
            die "$PY cannot make a virtual environment (no ensurepip): sudo apt-get install $package, then run $0 again"
        fi
    fi
    say "making a virtual environment in $VENV with $PY (Python $version)"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV" || { rm -rf "$VENV"; die "$PY -m venv $VENV failed (see above)"; }
fi

# Installed for this setup.py? (The install is editable: code changes need no reinstall.)
stamp=$VENV/.regcache-install
wanted=$(cat setup.py pyproject.toml | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [[ ! -f $stamp || $(cat "$stamp") != "$wanted" ]]; then
    say "installing regcache and its dependencies into $VENV (the first time takes a minute)"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .; then
        die "pip install failed (see above). Without network access to PyPI it cannot work; if pycurl \
failed to build (no binary wheel for this machine): apt-get install gcc libcurl4-openssl-dev libssl-dev"
    fi
    echo "$wanted" >"$stamp"
fi

if (($# == 0)); then
    set -- -c conf/regcache.yaml
fi
exec "$VENV/bin/python" -m regcache "$@"
