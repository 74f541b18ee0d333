"""The chart's jobs on the nodes and on a schedule, rendered by helm and checked with the commands
they run: the node-config DaemonSet (the real `node-config` command line, run here against a
directory), its uninstall hook, and the prefetch CronJob.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from regcache.commands import node_config
from tests.helm_chart import CHART, ROOT, find, helm_binary, pod_of, render, run_helm, selects


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> str:
    return helm_binary(tmp_path_factory)


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


# --- prefetch ---------------------------------------------------------------------------------------


def test_prefetch_cron_job_pulls_the_listed_images_through_the_service(helm: str) -> None:
    objects = render(helm, "prefetch-values.yaml")
    cron = find(objects, "CronJob", "regcache-prefetch")
    assert cron["spec"]["schedule"] == "30 2 * * 1-5" and cron["spec"]["timeZone"] == "Etc/UTC"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (job,) = pod["containers"]
    assert job["image"] == "registry.example.com/regcache:0.1.0", "the regcache image, whose entrypoint is regcache"
    assert job["args"] == [
        "prefetch",
        "--via",
        "http://regcache.regcache.svc:3000",
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        "docker.io/library/alpine:3.19",
        "ghcr.io/example/app:1.4.2",
    ]
    # --via names the cache's own Service and port.
    service = find(objects, "Service", "regcache")
    (port,) = service["spec"]["ports"]
    assert f"http://{service['metadata']['name']}.regcache.svc:{port['port']}" == job["args"][2]
    assert pod["securityContext"]["runAsNonRoot"] is True and job["securityContext"]["readOnlyRootFilesystem"]
    labels = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert not selects(service["spec"]["selector"], labels), "a prefetch pod is no backend of the cache"


def test_prefetch_is_off_by_default_and_needs_images(helm: str) -> None:
    assert not [o for o in render(helm) if o["kind"] == "CronJob"]
    done = run_helm(helm, "template", "regcache", str(CHART), "--set", "prefetch.enabled=true")
    assert done.returncode != 0 and "prefetch.images: list at least one image" in done.stderr
    objects = render(
        helm, None, "prefetch.enabled=true", "prefetch.images={docker.io/library/redis:7}", "prefetch.via=http://c:80"
    )
    (job,) = find(objects, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert job["args"] == ["prefetch", "--via", "http://c:80", "docker.io/library/redis:7"]


def test_prefetch_cron_job_uses_options_the_prefetch_command_has(helm: str) -> None:
    """Once the prefetch command is on the branch, its --help must know what the chart passes."""
    from regcache.commands import COMMANDS

    if "prefetch" not in COMMANDS:
        pytest.skip("no prefetch command on this branch yet (the chart only renders its CronJob)")
    done = subprocess.run(
        [sys.executable, "-m", "regcache", "prefetch", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for option in ("--via", "--platform"):
        assert option in done.stdout, f"prefetch --help does not mention {option}"
