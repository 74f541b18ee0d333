"""Packaging and the shipped files agree with the program.

- The Dockerfile's install steps, run outside Docker (no engine here): a fresh venv, a real
  non-editable `pip install` with dependencies, then the installed program answers --version,
  serves /healthz and exits 0 on SIGTERM.
- conf/regcache.yaml, conf/creds.yaml and conf/hosts.toml are accepted by the real parsers and say
  what the docs say; conf/k8s/ points its probes and ports at routes the app has.
- README.md documents every option the parser has and every metric regcache exports: adding one
  without docs fails here.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

import regcache
from regcache import metrics
from regcache.cli import build_parser
from regcache.config import BUILTIN_UPSTREAMS, Settings, load_creds_file
from regcache.web.app import make_app

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCKERFILE = ROOT / "Dockerfile"
CONF = ROOT / "conf"
K8S = CONF / "k8s"

# Options that are not settings, and so have no config-file key or environment variable.
NOT_SETTINGS = {"help", "version", "config"}


# --- the Dockerfile, run without Docker ------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append((keyword, args))
    return stages


def dockerignore_patterns() -> list[str]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            assert not line.startswith("!"), "exceptions in .dockerignore are not modelled here"
            patterns.append(line.rstrip("/"))
    return patterns


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for our file: a pattern matches the path or one of its parents."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def copy_build_context(dest: Path) -> None:
    """`COPY . .` of the build context as Docker would send it, .dockerignore applied."""
    patterns = dockerignore_patterns()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = Path(dirpath).relative_to(ROOT).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if not ignored(rel_dir + d, patterns)]
        for name in filenames:
            rel = rel_dir + name
            if not ignored(rel, patterns):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / name, target)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env() -> dict[str, str]:
    """The environment minus anything that would make a venv import this checkout or its settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGCACHE_")}
    for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PIP_USER", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(name, None)
    return env


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_dockerfile_steps_install_a_working_regcache(tmp_path: Path) -> None:
    builder, *rest = dockerfile_stages()
    assert rest, "the Dockerfile has a builder stage and a runtime stage"
    runtime = rest[-1]
    assert builder[0][1].startswith("python:3.11-slim") and "AS builder" in builder[0][1]
    assert runtime[0][1].startswith("python:3.11-slim")
    assert ("EXPOSE", "3000") in runtime
    assert ("VOLUME", "/var/cache/regcache") in runtime
    assert ("ENTRYPOINT", '["python", "-m", "regcache"]') in runtime
    assert any(k == "USER" and args.split(":")[0] == "10001" for k, args in runtime)
    env = " ".join(args for k, args in runtime if k == "ENV")
    assert "REGCACHE_CACHE_DIR=/var/cache/regcache" in env
    runtime_apt = " ".join(args for k, args in runtime if k == "RUN" and "apt-get install" in args)
    assert "libcurl4" in runtime_apt.split() and "gcc" not in runtime_apt

    # The builder's own steps: system packages come from the host (scripts/test.sh installs them).
    steps = [args for k, args in builder if k == "RUN" and not args.startswith("apt-get")]
    venv_steps = [s for s in steps if re.search(r"python -m venv (\S+)", s)]
    assert len(venv_steps) == 1, f"one `python -m venv <dir>` step expected, got {steps}"
    image_venv = re.search(r"python -m venv (\S+)", venv_steps[0]).group(1)
    assert any(f"{image_venv}/bin/pip install" in s for s in steps), steps
    workdir = [args for k, args in builder if k == "WORKDIR"]
    assert workdir and ("COPY", ". .") in builder, "the builder copies the context into its WORKDIR"
    if any("--no-binary pycurl" in s for s in steps) and shutil.which("curl-config") is None:
        pytest.fail(
            "building pycurl from source needs curl-config: apt-get install libcurl4-openssl-dev libssl-dev gcc "
            "(./scripts/test.sh installs them)"
        )

    src = tmp_path / "src"
    copy_build_context(src)
    assert (src / "setup.py").exists() and (src / "regcache" / "__init__.py").exists()
    assert not (src / ".git").exists() and not (src / "tests").exists()
    venv = tmp_path / "venv"
    env = clean_env()
    for step in steps:
        command = step.replace(image_venv, str(venv))
        if command.startswith("python "):
            command = shlex.quote(sys.executable) + command[len("python") :]
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", command],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{command!r} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    python = str(venv / "bin" / "python")
    outside = tmp_path / "elsewhere"  # not the checkout: `python -m` puts the cwd on sys.path
    outside.mkdir()
    version = subprocess.run(
        [python, "-m", "regcache", "--version"], cwd=outside, env=env, capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"regcache {regcache.__version__}"
    where = subprocess.run(
        [python, "-c", "import regcache; print(regcache.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), "installed into the venv, not editable"
    script = subprocess.run(
        [str(venv / "bin" / "regcache"), "--version"], cwd=outside, env=env, capture_output=True, text=True, timeout=60
    )
    assert script.stdout.strip() == f"regcache {regcache.__version__}", "the console script works"

    port = free_port()
    log = tmp_path / "regcache.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [python, "-m", "regcache", "-p", str(port), "-d", str(tmp_path / "cache"), "--host", "127.0.0.1"],
            cwd=outside,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline and server.poll() is None:
            status = http_status(f"http://127.0.0.1:{port}/healthz")
            if status is not None:
                break
            time.sleep(0.1)
        assert status == 200, f"/healthz answered {status}:\n{log.read_text()}"
        assert http_status(f"http://127.0.0.1:{port}/readyz") == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = log.read_text()
    assert "listening" in text and "stopped" in text, text


# --- conf/ -------------------------------------------------------------------------------------------


@pytest.fixture
def no_regcache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REGCACHE_"):
            monkeypatch.delenv(name)


def settings_actions() -> list:
    return [a for a in build_parser()._actions if a.dest not in NOT_SETTINGS]


def long_name(action) -> str:
    return next(s for s in action.option_strings if s.startswith("--"))[2:]


@pytest.mark.usefixtures("no_regcache_env")
def test_example_config_is_accepted_and_holds_the_defaults() -> None:
    parser = build_parser()
    from_file = Settings.from_namespace(parser.parse_args(["-c", str(CONF / "regcache.yaml")]))
    assert from_file == Settings.from_namespace(parser.parse_args([]))
    assert from_file == Settings()
    assert (from_file.host, from_file.port, from_file.cache_dir) == ("0.0.0.0", 3000, Path("/tmp/data"))
    assert from_file.cache_manifests is True
    assert from_file.skip_tags is not None and from_file.skip_tags.pattern == "latest"
    assert (from_file.log_level, from_file.upstream_idle_timeout) == ("info", 60.0)
    assert dict(from_file.upstreams) == dict(BUILTIN_UPSTREAMS)
    assert from_file.bucket is None and from_file.upstream_ca is None and not from_file.creds


def test_example_config_names_every_option() -> None:
    text = (CONF / "regcache.yaml").read_text()
    for action in settings_actions():
        name = long_name(action)
        assert re.search(rf"^(# )?{re.escape(name)}:", text, re.MULTILINE), f"conf/regcache.yaml lacks {name}"


@pytest.mark.usefixtures("no_regcache_env")
def test_example_config_lists_work_when_uncommented(tmp_path: Path) -> None:
    """The commented-out repeatable options are valid YAML lists for configargparse."""
    lines = (CONF / "regcache.yaml").read_text().splitlines()
    out, in_list = [], False
    for line in lines:
        if line in ("# upstream:", "# private-registry:"):
            out.append(line[2:])
            in_list = True
        elif in_list and line.startswith("#   - "):
            out.append(line[2:])
        else:
            in_list = False
            out.append(line)
    config = tmp_path / "regcache.yaml"
    config.write_text("\n".join(out) + "\n")
    data = yaml.safe_load(config.read_text())
    assert isinstance(data["upstream"], list) and isinstance(data["private-registry"], list)
    args = build_parser().parse_args(["-c", str(config)])
    settings = Settings.from_namespace(args)
    assert args.upstream == data["upstream"] and len(args.upstream) >= 2
    for item in data["upstream"]:
        name, _, url = item.partition("=")
        assert settings.upstreams[name] == url
    assert settings.upstreams["docker.io"] == BUILTIN_UPSTREAMS["docker.io"]
    assert settings.private_registries == frozenset(data["private-registry"])


def test_example_creds_file_loads_with_longest_prefix_winning() -> None:
    store = load_creds_file(CONF / "creds.yaml")
    hub = store.lookup("docker.io", "registry-1.docker.io", "library/alpine")
    assert hub is not None
    team = store.lookup("ghcr.io", "ghcr.io", "my-org/team-a/tool")
    org = store.lookup("ghcr.io", "ghcr.io", "my-org/other")
    assert team is not None and org is not None and team != org
    assert store.lookup("ghcr.io", "ghcr.io", "my-organisation/app") is None


def test_hosts_toml_points_containerd_at_the_default_port() -> None:
    hosts = tomllib.loads((CONF / "hosts.toml").read_text())
    assert hosts == {"host": {"http://localhost:3000": {"capabilities": ["pull", "resolve"]}}}


# --- conf/k8s ----------------------------------------------------------------------------------------


def k8s(name: str) -> dict:
    documents = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    assert len(documents) == 1, f"{name}: one object expected"
    return documents[0]


def route_target(path: str) -> str:
    app = make_app({})
    for rule in app.wildcard_router.rules:
        if rule.matcher.regex.match(path):
            return rule.target.__name__
    return "NotFoundHandler"


def test_k8s_manifests_have_the_expected_kinds() -> None:
    kinds = {p.name: k8s(p.name)["kind"] for p in K8S.glob("*.yaml")}
    assert kinds == {
        "configmap.yaml": "ConfigMap",
        "configmap-s3.yaml": "ConfigMap",
        "deployment.yaml": "Deployment",
        "deployment-s3.yaml": "Deployment",
        "serviceaccount.yaml": "ServiceAccount",
        "serviceaccount-s3.yaml": "ServiceAccount",
        "service.yaml": "Service",
        "pdb.yaml": "PodDisruptionBudget",
        "ingress.yaml": "Ingress",
        "prefetch-cronjob.yaml": "CronJob",
    }


@pytest.mark.usefixtures("no_regcache_env")
def test_k8s_deployment_matches_the_app(tmp_path: Path) -> None:
    deployment = k8s("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 3000}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["resources"]["requests"] and container["resources"]["limits"]
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz" and probes["readinessProbe"]["path"] == "/readyz"
    for probe in [*probes.values(), container.get("startupProbe", {}).get("httpGet")]:
        if probe is None:
            continue
        assert ports.get(probe["port"], probe["port"]) == 3000
    assert route_target("/healthz") == "HealthHandler" and route_target("/readyz") == "ReadyHandler"

    # The config file comes from the ConfigMap, mounted where the args say.
    args = container["args"]
    config_path = Path(args[args.index("-c") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_volume = next(n for n, path in mounts.items() if Path(path) == config_path.parent)
    configmap = k8s("configmap.yaml")
    assert volumes[config_volume]["configMap"]["name"] == configmap["metadata"]["name"]
    config_file = tmp_path / "regcache.yaml"
    config_file.write_text(configmap["data"][config_path.name])
    settings = Settings.from_namespace(build_parser().parse_args(["-c", str(config_file)]))
    assert settings.port == 3000
    cache_env = {e["name"]: e.get("value") for e in container.get("env", [])}.get(
        "REGCACHE_CACHE_DIR", "/var/cache/regcache"
    )
    assert Path(cache_env) == settings.cache_dir and str(settings.cache_dir) in mounts.values()


@pytest.mark.usefixtures("no_regcache_env")
def test_k8s_s3_deployment_runs_s3_mode_as_the_irsa_service_account(tmp_path: Path, monkeypatch) -> None:
    deployment = k8s("deployment-s3.yaml")
    pod = deployment["spec"]["template"]["spec"]
    account = k8s("serviceaccount-s3.yaml")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = container["args"]
    configmap = k8s("configmap-s3.yaml")
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == configmap["metadata"]["name"]
    config_file = tmp_path / "regcache.yaml"
    config_file.write_text(configmap["data"]["regcache.yaml"])
    settings = Settings.from_namespace(build_parser().parse_args(["-c", str(config_file), *args[2:]]))
    assert settings.bucket == "my-regcache-bucket" and env["AWS_REGION"]
    cache_volume = next(v for v in pod["volumes"] if v["name"] == "cache")
    limit = cache_volume["emptyDir"]["sizeLimit"]
    assert settings.local_cache_size is not None
    assert settings.local_cache_size < int(limit.removesuffix("Gi")) * 2**30


@pytest.mark.usefixtures("no_regcache_env")
def test_k8s_prefetch_cronjob_runs_prefetch_through_the_service() -> None:
    from regcache.commands.prefetch import build_parser as prefetch_parser
    from regcache.commands.prefetch import cache_url, parse_platforms, read_references

    cronjob = k8s("prefetch-cronjob.yaml")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure") and pod["enableServiceLinks"] is False
    (container,) = pod["containers"]
    assert container["image"] == k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]["image"]
    command, *argv = container["args"]
    assert command == "prefetch"
    args = prefetch_parser().parse_args(argv)
    service = k8s("service.yaml")
    via = urllib.parse.urlsplit(cache_url(args.via, args.host, args.port))
    # The Service by name (short, or qualified by its namespace: <name>.<namespace>.svc).
    assert (via.hostname or "").split(".")[0] == service["metadata"]["name"] and via.port == 3000
    assert parse_platforms(args.platform) and read_references(args.images, args.file)


def test_k8s_service_and_ingress_reach_the_pods() -> None:
    pod_labels = k8s("deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    service = k8s("service.yaml")
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["nodePort"] == 30000 and port["targetPort"] in ("http", 3000)

    ingress = k8s("ingress.yaml")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$uri"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends and all(b["name"] == service["metadata"]["name"] for b in backends)


# --- README.md ---------------------------------------------------------------------------------------


def test_readme_documents_every_option() -> None:
    text = README.read_text()
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert f"`{option}`" in text, f"README.md does not document {option}"
        if action.dest not in NOT_SETTINGS:
            env = "REGCACHE_" + long_name(action).upper().replace("-", "_")
            assert f"`{env}`" in text, f"README.md does not name {env}"


def test_readme_documents_every_metric() -> None:
    text = README.read_text()
    names = []
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                names.append(family.name + "_total" if family.type == "counter" else family.name)
    assert "containerd_cache_total" in names
    for name in names:
        assert f"`{name}`" in text, f"README.md does not document the metric {name}"


def test_readme_quick_start_commands() -> None:
    text = README.read_text()
    quick_start = text[text.index("## Quick start") :]
    quick_start = quick_start[: quick_start.index("\n## ", 1)]
    blocks = re.findall(r"```\w*\n(.*?)```", quick_start, re.DOTALL)
    assert [b.strip() for b in blocks] == [
        "./scripts/run.sh",  # run by tests/test_quickstart.py as a new user would
        "./scripts/test.sh",
    ]
