"""The Helm chart conf/helm/regcache, rendered as `helm install` would and checked as a cluster would.

- `helm lint --strict` and `helm template` with the default values and with every values file in
  the chart's ci/ folder (chart-testing's convention), and every rendered object validated
  against the Kubernetes OpenAPI schemas of the oldest and newest versions the chart supports
  (kubernetes-validate, offline). The Prometheus Operator's kinds have no schema there: their
  fields are checked against the objects they point at instead.
- What the objects say works with regcache: its own parser accepts the rendered config file and
  every option reaches it; ports, probes, selectors, mounts and Secrets line up.
- conf/k8s/ is the chart's rendering (minus Helm's bookkeeping labels): `python -m tests.helm_chart`
  rewrites it.

The node configuration DaemonSets and the prefetch CronJob: tests/test_helm_node_jobs.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import yaml

from regcache.config import OPTIONS, Settings, load_creds_file
from tests.helm_chart import (
    CHART,
    CI_VALUES,
    K8S,
    KUBERNETES_VERSIONS,
    MONITORING,
    OPERATOR_KINDS,
    RAW_MANIFESTS,
    container,
    find,
    helm_binary,
    helm_bookkeeping_removed,
    kubernetes_validate,
    pod_of,
    raw_manifests,
    regcache_settings,
    render,
    run_helm,
    selects,
)


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> str:
    return helm_binary(tmp_path_factory)


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


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    found = []
    for obj in objects:
        spec = obj.get("spec", {})
        spec = spec.get("jobTemplate", {}).get("spec", spec)  # a CronJob's pods
        if "template" in spec:
            found.append((f"{obj['kind']} {obj['metadata']['name']}", spec["template"]["spec"]))
    return found


@pytest.mark.parametrize("values", VALUES, ids=lambda v: v or "defaults")
def test_no_pod_gets_service_links(helm: str, values: str | None) -> None:
    """A Service named regcache would give its namespace's pods REGCACHE_PORT=tcp://<ip>:<port>,
    a variable regcache reads as --port."""
    specs = pod_specs(render(helm, values))
    assert specs
    for name, spec in specs:
        assert spec.get("enableServiceLinks") is False, f"{name} gets service links"


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


# --- conf/k8s -----------------------------------------------------------------------------------------


def test_conf_k8s_is_the_charts_rendering(helm: str) -> None:
    assert {p.name for p in K8S.glob("*.yaml")} == set(RAW_MANIFESTS)
    for file, expected in raw_manifests(helm).items():
        (actual,) = [d for d in yaml.safe_load_all((K8S / file).read_text()) if d]
        assert helm_bookkeeping_removed(actual) == expected, (
            f"conf/k8s/{file} differs from the chart's rendering: run `python -m tests.test_helm`"
        )
