"""conf/monitoring: the Prometheus alerting rules and the Grafana dashboard.

- `promtool check rules` on the rules and `promtool test rules` on their unit tests
  (regcache-rules.test.yaml), where every alert is shown firing.
- Every PromQL expression of the dashboard is valid PromQL (promtool checks it as a rule).
- Every metric name the dashboard and the rules use is one a running regcache exports, with a
  sample: two real regcache processes are pulled from (hits, misses, evictions, a digest
  mismatch, a 429, a stale tag, an unreachable registry, a download that breaks off and resumes;
  and one in S3 mode whose bucket cannot be reached) and their /metrics are read. Every label a
  query selects or groups by is one those series carry (or a label Prometheus adds to every
  target). `up` is Prometheus's own, not regcache's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FakeHandler, digest_of, serve, serve_ranges
from tests.peers.seaweed import SeaweedS3
from tests.support import read_blob, request, wait_until

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "conf" / "monitoring"
RULES = MONITORING / "regcache-rules.yaml"
RULE_TESTS = MONITORING / "regcache-rules.test.yaml"
DASHBOARD = MONITORING / "regcache-dashboard.json"
PROMETHEUS_OWN = {"up"}
# Labels Prometheus (and the Prometheus Operator) put on every series of a target.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# What the issue asks the alerts to cover.
ALERTS = {
    "RegcacheDown",
    "RegcacheNotReady",
    "RegcacheHitRatioLow",
    "RegcacheVerificationFailures",
    "RegcacheRegistryErrors",
    "RegcacheRegistryRateLimited",
    "RegcacheS3Unavailable",
    "RegcacheUploadBacklogGrowing",
    "RegcacheDiskNearlyFull",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found: apt-get install prometheus (or run scripts/install-test-deps.sh as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_promtool(*args: str | Path, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # panels of a collapsed row
    return found


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: {query!r}"
            exprs.append(match.group(1))
    return exprs


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables as Prometheus would receive them."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "6h").replace("$__interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords,
    label names (inside braces and grouping clauses) or durations."""
    expr = as_promql(expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        name, call = match.groups()
        if not call and name not in _KEYWORDS:
            names.add(name)
    return names


def used_metric_names() -> set[str]:
    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    return set().union(*(metric_names(e) for e in exprs))


# --- the rules -----------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    done = run_promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_rule_unit_tests_pass_and_show_every_alert_firing() -> None:
    done = run_promtool("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fired = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"] if not case["exp_alerts"]}
    alerts = {rule["alert"] for rule in rules()}
    assert fired == alerts, f"alerts without a firing test: {alerts - fired}"
    assert quiet == alerts, f"alerts without a quiet test: {alerts - quiet}"


def test_rules_cover_what_operators_need_to_hear_about() -> None:
    alerts = {rule["alert"]: rule for rule in rules()}
    assert ALERTS <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests notice a rule that no longer fires (they are not vacuous)."""
    broken = RULES.read_text().replace("> 5\n", "> 500\n")  # the rate-limit threshold
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path)
    done = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0 and "RegcacheRegistryRateLimited" in done.stdout + done.stderr


# --- the dashboard ---------------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard_with_a_datasource_variable() -> None:
    board = dashboard()
    assert board["uid"] == "regcache" and board["title"] == "regcache" and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels():
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    group = {
        "name": "dashboard",
        "rules": [{"record": f"dashboard:query{i}", "expr": as_promql(e)} for i, e in enumerate(exprs)],
    }
    (tmp_path / "dashboard-queries.yaml").write_text(yaml.safe_dump({"groups": [group]}))
    done = run_promtool("check", "rules", tmp_path / "dashboard-queries.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    text = "\n".join(dashboard_exprs())
    for needed in (
        'containerd_cache_total{namespace=~"$namespace", job=~"$job", instance=~"$instance", result="hit"}',
        "regcache_served_bytes_total",
        "regcache_fills_in_flight",
        "regcache_fill_joins_total",
        "regcache_upstream_requests_total",
        'status=~"5..|429|error"',
        "regcache_upstream_response_seconds_bucket",
        "regcache_stale_served_total",
        "regcache_verification_failures_total",
        'tier="s3"',
        "regcache_s3_uploads_pending",
        "regcache_local_bytes",
        "regcache_local_evictions_total",
        "regcache_overloaded_total",
    ):
        assert needed in text, needed


# --- every name is one regcache exports ---------------------------------------------------------------


def series_labels(metrics_text: str) -> dict[str, set[str]]:
    """Every sampled series name on /metrics and the label names its samples carry."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def labels_used(expr: str) -> list[tuple[str, set[str]]]:
    """(label, the metric names it may come from) for every label an expression selects on, groups
    by or matches on: a selector's labels belong to its metric, a grouping's to any in the query."""
    expr = as_promql(expr)
    names = metric_names(expr)
    used = []
    for name, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", re.sub(r'"(?:[^"\\]|\\.)*"', '""', matchers)):
            used.append((label, {name}))
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        for label in re.findall(r"\w+", clause):
            used.append((label, names))
    return used


def error(status: int):
    def behaviour(h: FakeHandler) -> None:
        h.send_json(status, b'{"errors":[{"code":"X","message":"upstream says no"}]}')

    return behaviour


def pull_everything_the_dashboard_shows(make_regcache, fake) -> str:
    """A disk-mode regcache through hits, misses, an eviction, a stale tag, a digest mismatch, a
    429, an unreachable registry and a resumed download; its /metrics afterwards."""
    ttl = 1.0
    cache = make_regcache(
        *fake.upstream_arg(),
        "--upstream",
        "unreachable.test=http://127.0.0.1:1",
        "--tag-ttl",
        f"{ttl}s",
        "--local-cache-size",
        "3M",
    )
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}).encode()
    fake.routes["/v2/mon/app/manifests/1.0"] = serve(
        manifest, "application/vnd.oci.image.manifest.v1+json", Docker_Content_Digest=digest_of(manifest)
    )
    blobs = [os.urandom(2 << 20), os.urandom(2 << 20)]
    for blob in blobs:
        fake.routes[f"/v2/mon/app/blobs/{digest_of(blob)}"] = serve(blob)
    real, lie = os.urandom(1 << 20), os.urandom(1 << 20)
    fake.routes[f"/v2/mon/app/blobs/{digest_of(real)}"] = serve(lie)
    broken = os.urandom(1 << 20)
    fake.routes[f"/v2/mon/app/blobs/{digest_of(broken)}"] = serve_ranges(broken, [300_000])
    fake.routes["/v2/mon/app/manifests/limited"] = error(429)

    assert cache.manifest(fake.ns, "mon/app", "1.0").status == 200  # miss
    assert cache.manifest(fake.ns, "mon/app", "1.0").status == 200  # hit
    time.sleep(ttl + 0.2)  # past the TTL, with the registry failing: the stored tag is served stale
    fake.routes["/v2/mon/app/manifests/1.0"] = error(503)
    assert cache.manifest(fake.ns, "mon/app", "1.0").status == 200
    for blob in (blobs[0], blobs[0], blobs[1]):  # miss, hit from disk, miss that evicts the first
        assert cache.blob(fake.ns, "mon/app", digest_of(blob)).body == blob
    _, _, complete = read_blob(cache, fake.ns, "mon/app", digest_of(real))
    assert not complete, "bytes that are not the digest: cut off before the end"
    assert cache.blob(fake.ns, "mon/app", digest_of(broken)).body == broken  # resumed with a Range
    assert cache.manifest(fake.ns, "mon/app", "limited").status == 503  # the registry said 429
    assert cache.manifest("unreachable.test", "mon/app", "1.0").status in (502, 503)

    metrics = cache.metrics()
    assert metrics[f'regcache_upstream_requests_total{{registry="{fake.ns}",status="429"}}'] >= 1
    assert metrics['regcache_upstream_requests_total{registry="unreachable.test",status="error"}'] >= 1
    assert metrics["regcache_local_evictions_total"] >= 1
    assert metrics[f'regcache_fill_resumes_total{{registry="{fake.ns}"}}'] == 1
    return request(f"{cache.url}/metrics").body.decode()


def pull_while_the_bucket_is_down(make_regcache, fake, scratch: Path) -> str:
    """An S3-mode regcache (SeaweedFS): one blob uploaded, then S3 goes away and the next blob's
    lookup and upload fail while pulls go on; its /metrics then."""
    blobs = [os.urandom(256 << 10), os.urandom(256 << 10)]
    for blob in blobs:
        fake.routes[f"/v2/mon/s3/blobs/{digest_of(blob)}"] = serve(blob)
    with SeaweedS3(scratch / "weed") as s3:
        env = {
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_REGION": s3.region,
            "AWS_ENDPOINT_URL_S3": s3.endpoint,
        }
        cache = make_regcache(*fake.upstream_arg(), "--bucket", s3.bucket("regcache-monitoring"), env=env)
        assert cache.blob(fake.ns, "mon/s3", digest_of(blobs[0])).body == blobs[0]
        assert wait_until(lambda: cache.metrics().get('regcache_s3_uploads_total{result="uploaded"}', 0) >= 1, 30)
    assert cache.blob(fake.ns, "mon/s3", digest_of(blobs[1])).body == blobs[1]
    assert wait_until(lambda: cache.metrics()["regcache_s3_uploads_pending"] >= 1, 30), cache.log()
    metrics = cache.metrics()
    assert sum(v for k, v in metrics.items() if k.startswith("regcache_tier_errors_total{") and 'tier="s3"' in k)
    return request(f"{cache.url}/metrics").body.decode()


def test_every_metric_and_label_the_dashboard_and_rules_use_is_exported_by_regcache(
    make_regcache, fake, scratch
) -> None:
    used = used_metric_names()
    assert {"containerd_cache_total", "regcache_upstream_response_seconds_bucket", "up"} <= used
    assert len(used) >= 15, used

    series: dict[str, set[str]] = {}
    for text in (
        pull_everything_the_dashboard_shows(make_regcache, fake),
        pull_while_the_bucket_is_down(make_regcache, fake, scratch),
    ):
        for name, labels in series_labels(text).items():
            series.setdefault(name, set()).update(labels)
    missing = used - PROMETHEUS_OWN - set(series)
    assert not missing, f"used by the dashboard or the rules, never exported with a sample by regcache: {missing}"

    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    for expr in exprs:
        for label, names in labels_used(expr):
            carried = set().union(*(series.get(n, set()) for n in names - PROMETHEUS_OWN)) | TARGET_LABELS
            assert label in carried or label == "le" or names <= PROMETHEUS_OWN, (
                f"{label!r} is on no series of {sorted(names)} (query: {expr})"
            )
