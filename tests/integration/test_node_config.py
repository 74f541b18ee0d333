"""`python -m regcache node-config`: the hosts.toml files it writes send a real containerd through
the cache (and around it when the cache is down), and --restore leaves the hosts dir as it found
it, byte for byte."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.peers.containerd import Containerd
from tests.peers.net import clean_env
from tests.support import ROOT

STATE_DIR = ".regcache-node-config"


@pytest.fixture(scope="module")
def containerd():
    daemon = Containerd().start()
    yield daemon
    daemon.close()


def node_config(*args: str | Path, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*(prefix or []), sys.executable, "-m", "regcache", "node-config", *map(str, args)]
    return subprocess.run(argv, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60, check=False)


def tree(root: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every file and directory under root with its bytes and permission bits."""
    found = {}
    for path in sorted(root.rglob("*")):
        found[path.relative_to(root).as_posix()] = (
            path.read_bytes() if path.is_file() else None,
            path.stat().st_mode & 0o7777,
        )
    return found


def access_lines(cache, ns: str) -> list[str]:
    return [line for line in cache.log().splitlines() if "regcache.access" in line and f"ns={ns}" in line]


def test_default_file_sends_containerd_through_the_cache_and_restore_puts_back_every_byte(
    tmp_path, containerd, cache, upstream
):
    hosts = tmp_path / "certs.d"
    (hosts / "_default").mkdir(parents=True)
    original = b'# the operator\'s own\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull"]'  # no final newline
    (hosts / "_default" / "hosts.toml").write_bytes(original)
    (hosts / "_default" / "hosts.toml").chmod(0o600)
    (hosts / "other.example:5000").mkdir()
    (hosts / "other.example:5000" / "hosts.toml").write_text('server = "https://other.example:5000"\n')
    (hosts / "other.example:5000" / "ca.crt").write_text("not really a certificate\n")
    before = tree(hosts)

    done = node_config("--hosts-dir", hosts, "--mirror", cache.url, "--containerd-config", containerd.config_path)
    assert done.returncode == 0, done.stderr
    written = tomllib.loads((hosts / "_default" / "hosts.toml").read_text())
    assert written == {"host": {cache.url: {"capabilities": ["pull", "resolve"], "dial_timeout": "200ms"}}}
    assert "kept in" in done.stdout and "do not apply until --restore" in done.stdout
    # A registry with its own directory is not covered by _default, and the output says so.
    assert "other.example:5000 has its own hosts.toml" in done.stdout
    # The test daemon's config (CRI disabled) names no config_path: said, not fixed.
    assert "WARNING:" in done.stdout and "sets no config_path" in done.stdout
    assert (containerd.config_path).read_text().count("config_path") == 0

    again = node_config("--hosts-dir", hosts, "--mirror", cache.url, "--containerd-config", containerd.config_path)
    assert again.returncode == 0, again.stderr
    assert "unchanged" in again.stdout and "kept in" not in again.stdout
    assert (hosts / STATE_DIR / "backup" / "_default" / "hosts.toml").read_bytes() == original

    ref = f"{upstream.ns}/{REPO}:1.0"
    try:
        containerd.pull(ref, hosts_dir=hosts)
        assert ref in containerd.images()
        assert access_lines(cache, upstream.ns), "containerd did not ask the cache"
    finally:
        containerd.remove_image(ref)
        containerd.remove_all_content()

    restored = node_config("--hosts-dir", hosts, "--restore")
    assert restored.returncode == 0, restored.stderr
    assert f"restored {hosts / '_default' / 'hosts.toml'}" in restored.stdout
    assert tree(hosts) == before
    twice = node_config("--hosts-dir", hosts, "--restore")
    assert twice.returncode == 0 and "nothing to restore" in twice.stdout
    assert tree(hosts) == before


def test_registry_file_falls_back_to_the_registry_while_the_cache_is_down(tmp_path, containerd, cache, upstream):
    hosts = tmp_path / "certs.d"
    hosts.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{hosts}"\n')

    done = node_config(
        "--hosts-dir", hosts, "--mirror", cache.url, "--registry", upstream.registry.url, "--containerd-config", config
    )
    assert done.returncode == 0, done.stderr
    assert f"containerd reads {hosts}" in done.stdout and "WARNING" not in done.stdout
    written = tomllib.loads((hosts / upstream.ns / "hosts.toml").read_text())
    assert written["server"] == upstream.registry.url
    assert list(written["host"]) == [cache.url]
    assert not (hosts / "_default").exists()

    ref = f"{upstream.ns}/{REPO}:2.0"
    try:
        containerd.pull(ref, hosts_dir=hosts)
        assert access_lines(cache, upstream.ns), "containerd did not ask the cache"
        containerd.remove_image(ref)
        containerd.remove_all_content()
        cache.stop()
        containerd.pull(ref, hosts_dir=hosts)  # from the registry itself, the `server` fallback
        assert ref in containerd.images()
    finally:
        containerd.remove_image(ref)
        containerd.remove_all_content()

    restored = node_config("--hosts-dir", hosts, "--restore")
    assert restored.returncode == 0, restored.stderr
    assert tree(hosts) == {}, "the registry's directory, made by node-config, is gone too"


def test_a_new_registry_list_undoes_the_files_the_old_one_wrote(tmp_path):
    hosts = tmp_path / "certs.d"
    (hosts / "_default").mkdir(parents=True)
    (hosts / "_default" / "hosts.toml").write_text('[host."http://10.1.1.1:5000"]\n')
    (hosts / "docker.io").mkdir()  # an empty directory of the operator's: it stays
    before = tree(hosts)
    assert node_config("--hosts-dir", hosts, "--mirror", "http://127.0.0.1:30000").returncode == 0

    switched = node_config("--hosts-dir", hosts, "--mirror", "http://127.0.0.1:30000", "--registry", "docker.io")
    assert switched.returncode == 0, switched.stderr
    assert tree(hosts)["_default/hosts.toml"] == before["_default/hosts.toml"]
    docker = tomllib.loads((hosts / "docker.io" / "hosts.toml").read_text())
    assert docker["server"] == "https://registry-1.docker.io"

    assert node_config("--hosts-dir", hosts, "--restore").returncode == 0
    assert tree(hosts) == before


def test_a_file_changed_after_node_config_wrote_it_is_left_alone_by_restore(tmp_path):
    hosts = tmp_path / "certs.d"
    (hosts / "_default").mkdir(parents=True)
    (hosts / "_default" / "hosts.toml").write_text("# first\n")
    assert node_config("--hosts-dir", hosts, "--mirror", "http://127.0.0.1:30000").returncode == 0
    (hosts / "_default" / "hosts.toml").write_text("# the operator's newer file\n")

    restored = node_config("--hosts-dir", hosts, "--restore")
    assert restored.returncode == 0
    assert "changed after regcache wrote it" in restored.stdout
    assert (hosts / "_default" / "hosts.toml").read_text() == "# the operator's newer file\n"
    assert (hosts / "_default" / "hosts.toml.before-regcache").read_text() == "# first\n"
    assert not (hosts / STATE_DIR).exists()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "{hosts}"\n', "reads"),
        ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/elsewhere"\n', "'/elsewhere'"),
        # containerd 2.x reads its default dirs when a version 3 config names none: not this one.
        ("version = 3\n", "'/etc/containerd/certs.d:/etc/docker/certs.d'"),
        ('version = 2\nimports = ["conf.d/*.toml"]\n', "reads"),
    ],
)
def test_what_it_says_about_containerd_config(tmp_path, config, expected):
    hosts = tmp_path / "certs.d"
    hosts.mkdir()
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "registry.toml").write_text(
        f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/x:{hosts}"\n'
    )
    containerd_config = tmp_path / "config.toml"
    containerd_config.write_text(config.replace("{hosts}", str(hosts)))
    done = node_config(
        "--hosts-dir", hosts, "--mirror", "http://127.0.0.1:30000", "--containerd-config", containerd_config
    )
    assert done.returncode == 0, done.stderr
    if expected == "reads":
        assert "WARNING" not in done.stdout and f"containerd reads {hosts}" in done.stdout
    else:
        assert f"WARNING: {containerd_config} sets config_path = {expected}, not {hosts}" in done.stdout


BAD_ARGUMENTS = [
    (["--mirror", "localhost:30000"], "--mirror"),
    (["--mirror", "ftp://cache.example:30000"], "--mirror"),
    (["--mirror", "http://cache.example:30000/v2/"], "--mirror"),
    (["--mirror", "http://user:secret@cache.example:30000"], "--mirror"),
    (["--mirror", "http://cache.example:99999"], "--mirror"),
    (["--mirror", "http://$(NODE_IP):30000"], "--mirror"),  # the variable the DaemonSet sets was missing
    (["--mirror", "http://127.0.0.1:30000", "--dial-timeout", "fast"], "--dial-timeout"),
    (["--mirror", "http://127.0.0.1:30000", "--registry", "not a registry"], "--registry"),
    ([], "--mirror"),
]


@pytest.mark.parametrize(("args", "named"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, args, named):
    hosts = tmp_path / "certs.d"
    hosts.mkdir()
    done = node_config("--hosts-dir", hosts, *args)
    assert done.returncode == 2
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("regcache node-config: error: ") and named in done.stderr
    assert tree(hosts) == {}


def test_missing_hosts_dir_or_a_file_in_its_place_is_named(tmp_path):
    for path in (tmp_path / "missing", tmp_path / "a-file"):
        if path.name == "a-file":
            path.write_text("")
        done = node_config("--hosts-dir", path, "--mirror", "http://127.0.0.1:30000")
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
        assert f"--hosts-dir {path}:" in done.stderr
    assert not (tmp_path / "missing").exists()


def test_unwritable_hosts_dir_is_named(tmp_path):
    hosts = tmp_path / "certs.d"
    hosts.mkdir()
    prefix = []
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only mount of its own
        if shutil.which("unshare") is None:
            pytest.skip("unshare (util-linux) is needed to make a read-only dir for root")
        mount = f'mount -t tmpfs -o ro regcache-test {shlex.quote(str(hosts))} && exec "$@"'
        prefix = ["unshare", "--mount", "sh", "-c", mount, "sh"]
        probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            pytest.skip(f"cannot make a private read-only mount here: {probe.stderr.strip()}")
    else:
        hosts.chmod(0o555)
    done = node_config("--hosts-dir", hosts, "--mirror", "http://127.0.0.1:30000", prefix=prefix)
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.splitlines()) == 1 and f"--hosts-dir {hosts}: not writable" in done.stderr


def test_an_unreadable_record_is_named_and_nothing_is_changed(tmp_path):
    hosts = tmp_path / "certs.d"
    (hosts / "_default").mkdir(parents=True)
    (hosts / "_default" / "hosts.toml").write_text("# the operator's\n")
    assert node_config("--hosts-dir", hosts, "--mirror", "http://127.0.0.1:30000").returncode == 0
    (hosts / STATE_DIR / "state.json").write_text("{not json")
    before = tree(hosts)
    for args in (["--restore"], ["--mirror", "http://127.0.0.1:30001"]):
        done = node_config("--hosts-dir", hosts, *args)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
        assert f"{hosts / STATE_DIR / 'state.json'}: not a record regcache can read" in done.stderr
        assert tree(hosts) == before
