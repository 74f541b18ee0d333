"""The reliability and security options: --tag-ttl and --allow-registry, as an operator writes them."""

import pytest

from regcache.cache.policy import Policy
from regcache.cli import build_parser, settings_from_args
from regcache.config import parse_duration
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
