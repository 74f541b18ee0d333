"""The reliability and security options: --tag-ttl and --allow-registry, as an operator writes them."""

import pytest

from regcache.cache.policy import Policy
from regcache.cli import build_parser, settings_from_args
from regcache.config import creds_file_warning, load_creds_file, parse_duration
from regcache.errors import ConfigError


def settings(*argv):
    return settings_from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    "text, seconds", [("300", 300.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), ("0", 0.0)]
)
def test_durations(text, seconds):
    assert parse_duration("--tag-ttl", text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "1d", "m"])
def test_bad_durations_name_the_option(text):
    with pytest.raises(ConfigError, match="--tag-ttl"):
        settings(f"--tag-ttl={text}")


def test_defaults():
    s = settings()
    assert s.tag_ttl == 300.0 and s.allow_registries == ("*",)


def test_allow_registry_is_repeatable_and_lower_cased():
    s = settings("--allow-registry", "Docker.io", "--allow-registry", "*.example.com")
    assert s.allow_registries == ("docker.io", "*.example.com")
    with pytest.raises(ConfigError, match="--allow-registry"):
        settings("--allow-registry", "ghcr.io/org")


def test_a_tag_is_fresh_for_its_ttl_only():
    policy = Policy(tag_ttl=60.0)
    assert policy.tag_is_fresh(1000.0, 1059.0)
    assert not policy.tag_is_fresh(1000.0, 1060.0)
    assert not policy.tag_is_fresh(None, 1000.0), "a pointer without a time is revalidated"
    assert not policy.tag_is_fresh(5000.0, 1000.0), "a pointer from the future is revalidated"
    assert not Policy(tag_ttl=0.0).tag_is_fresh(1000.0, 1000.0)


@pytest.mark.parametrize(
    "text, words",
    [
        ("docker.io: {username: a, password: b}\nghcr.io: {username: u}\n", "line 2: entry 'ghcr.io' has no password"),
        ("docker.io:\n  username: a\n  password: b\n\nquay.io: nope\n", "line 5: entry 'quay.io' must be a mapping"),
        ("a: {username: u, password: p}\nb: [unclosed\n", "line 3: not valid YAML"),
        ("a:\n  username: u\n   password: p\n", "line 3: not valid YAML"),
        ("x: {username: u, password: p, token: t}\n", "line 1: entry 'x' has unknown keys"),
    ],
)
def test_a_malformed_creds_file_names_the_line(tmp_path, text, words):
    path = tmp_path / "creds.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_creds_file(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_a_world_readable_creds_file_gets_a_warning(tmp_path):
    path = tmp_path / "creds.yaml"
    path.write_text("docker.io: {username: u, password: p}\n")
    path.chmod(0o644)
    warning = creds_file_warning(path)
    assert warning is not None and "chmod 600" in warning and str(path) in warning
    path.chmod(0o640)
    assert creds_file_warning(path) is None
