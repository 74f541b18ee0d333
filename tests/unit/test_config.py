"""Options and files an operator writes: what is accepted, and the message when it is not."""

import os
import re
from dataclasses import fields

import pytest

from regcache.cache.policy import Policy
from regcache.cli import build_parser
from regcache.config import (
    OPTIONS,
    CredentialStore,
    Settings,
    load_creds_file,
    parse_bool,
    parse_duration,
    parse_upstreams,
)
from regcache.credentials import Credentials, creds_file_warning
from regcache.errors import ConfigError


@pytest.fixture
def no_regcache_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("REGCACHE_"):
            monkeypatch.delenv(key)


def settings(*argv):
    return Settings.from_namespace(build_parser().parse_args(list(argv)))


@pytest.mark.usefixtures("no_regcache_env")
def test_defaults_match_the_documented_ones():
    s = settings()
    assert (s.host, s.port, str(s.cache_dir)) == ("0.0.0.0", 3000, "/tmp/data")
    assert s.cache_manifests is True
    assert s.skip_tags is not None and s.skip_tags.search("latest")
    assert s.endpoint("docker.io") == "https://registry-1.docker.io"
    assert s.endpoint("ghcr.io") == "https://ghcr.io"
    assert s.bucket is None and not s.creds


@pytest.mark.usefixtures("no_regcache_env")
def test_tag_ttl_and_allow_registry_defaults():
    s = settings()
    assert s.tag_ttl == 300.0 and s.allow_registries == ("*",)


@pytest.mark.usefixtures("no_regcache_env")
@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.long)
def test_the_parser_and_settings_share_each_options_default(option):
    parsed = build_parser().parse_args([])
    assert getattr(parsed, option.dest) == option.default, "the parser (and --help) must use the table's default"
    assert getattr(Settings.from_namespace(parsed), option.field) == getattr(Settings(), option.field)


def test_every_settings_field_is_an_option():
    assert sorted(f.name for f in fields(Settings)) == sorted(option.field for option in OPTIONS)


def test_environment_variables_set_options(monkeypatch, tmp_path):
    monkeypatch.setenv("REGCACHE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("REGCACHE_PORT", "4001")
    monkeypatch.setenv("REGCACHE_CACHE_MANIFESTS", "no")
    s = settings()
    assert (s.cache_dir, s.port, s.cache_manifests) == (tmp_path, 4001, False)
    # The command line wins over the environment.
    assert settings("-p", "4002").port == 4002


def test_config_file_keys_are_long_names(tmp_path):
    path = tmp_path / "regcache.yaml"
    path.write_text(
        "port: 4010\ncache-dir: /var/tmp/rc\nskip-tags: nightly\n"
        "upstream:\n  - a.test=http://127.0.0.1:1\n  - b.test=https://b.example\n"
        "private-registry:\n  - a.test\n"
    )
    s = settings("-c", str(path))
    assert s.port == 4010 and str(s.cache_dir) == "/var/tmp/rc"
    assert s.skip_tags.pattern == "nightly"
    assert s.endpoint("a.test") == "http://127.0.0.1:1" and s.endpoint("b.test") == "https://b.example"
    assert s.private_registries == {"a.test"}


def test_unknown_options_stop_start_up(capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--no-such-option"])
    assert info.value.code == 2
    assert "--no-such-option" in capsys.readouterr().err


def test_unknown_config_file_keys_stop_start_up(tmp_path, capsys):
    path = tmp_path / "regcache.yaml"
    path.write_text("prot: 3000\n")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-c", str(path)])
    assert "prot" in capsys.readouterr().err


def test_malformed_port_names_it(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-p", "http"])
    assert re.search(r"-p/--port.*invalid int value", capsys.readouterr().err)


def test_upstream_map_overrides_and_adds():
    ups = parse_upstreams(["registry.example.test=http://127.0.0.1:5000/", "docker.io=https://mirror.example"])
    assert ups["registry.example.test"] == "http://127.0.0.1:5000"
    assert ups["docker.io"] == "https://mirror.example"


@pytest.mark.parametrize(
    "item, words",
    [
        ("noequals", "NS=URL"),
        ("=http://x", "NS=URL"),
        ("a=", "NS=URL"),
        ("a=ftp://x", "http:// or https://"),
        ("a=http://", "http:// or https://"),
        ("a=http://user:pw@x", "credentials"),
    ],
)
def test_bad_upstream_entries_name_the_entry(item, words):
    with pytest.raises(ConfigError) as info:
        parse_upstreams([item])
    assert item in str(info.value) and words in str(info.value)


@pytest.mark.parametrize("text, value", [("yes", True), ("TRUE", True), ("no", False), ("false", False), ("0", False)])
def test_bool_values(text, value):
    assert parse_bool("--cache-manifests", text) is value


def test_bad_bool_names_the_option():
    with pytest.raises(ConfigError, match="--cache-manifests.*maybe"):
        parse_bool("--cache-manifests", "maybe")


def test_skip_tags_is_searched_and_empty_disables():
    s = settings("-t", "^dev-|-rc")
    assert s.skip_tags.search("dev-123") and s.skip_tags.search("1.0-rc1") and not s.skip_tags.search("1.0")
    assert settings("-t", "").skip_tags is None
    with pytest.raises(ConfigError, match="--skip-tags"):
        settings("-t", "(")


def test_skip_repos_is_off_by_default_and_set_like_the_other_options(monkeypatch, tmp_path, no_regcache_env):
    assert settings().skip_repos is None
    assert settings("--skip-repos", r"^ghcr\.io/org/").skip_repos.search("ghcr.io/org/app")
    monkeypatch.setenv("REGCACHE_SKIP_REPOS", "/nightly-")
    assert settings().skip_repos.pattern == "/nightly-"
    monkeypatch.delenv("REGCACHE_SKIP_REPOS")
    path = tmp_path / "regcache.yaml"
    path.write_text("skip-repos: ^quay\\.io/\n")
    assert settings("-c", str(path)).skip_repos.search("quay.io/team/app")
    with pytest.raises(ConfigError, match="--skip-repos"):
        settings("--skip-repos", "[")


@pytest.mark.parametrize(
    "text, seconds", [("300", 300.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), ("0", 0.0)]
)
def test_durations(text, seconds):
    assert parse_duration("--tag-ttl", text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "-1s", "1d", "m"])
def test_bad_durations_name_the_option(text):
    with pytest.raises(ConfigError, match="--tag-ttl"):
        settings(f"--tag-ttl={text}")


def test_a_tag_is_fresh_for_its_ttl_only():
    policy = Policy(tag_ttl=60.0)
    assert policy.tag_is_fresh(1000.0, 1059.0)
    assert not policy.tag_is_fresh(1000.0, 1060.0)
    assert not policy.tag_is_fresh(None, 1000.0), "a pointer without a time is revalidated"
    assert not policy.tag_is_fresh(5000.0, 1000.0), "a pointer from the future is revalidated"
    assert not Policy(tag_ttl=0.0).tag_is_fresh(1000.0, 1000.0)


def test_allow_registry_is_repeatable_and_lower_cased():
    s = settings("--allow-registry", "Docker.io", "--allow-registry", "*.example.com")
    assert s.allow_registries == ("docker.io", "*.example.com")
    with pytest.raises(ConfigError, match="--allow-registry"):
        settings("--allow-registry", "ghcr.io/org")


def test_private_registries_are_normalised():
    assert settings("--private-registry", "GHCR.io", "--private-registry", "r.example:5000").private_registries == {
        "ghcr.io",
        "r.example:5000",
    }
    with pytest.raises(ConfigError, match="--private-registry"):
        settings("--private-registry", "not a host")


def test_s3_mode_bounds_the_local_tier_by_default_and_disk_mode_does_not():
    s3 = settings("-b", "my-bucket", "--s3-prefix", "/team-a/", "--s3-redirect")
    assert (s3.bucket, s3.s3_prefix, s3.s3_redirect) == ("my-bucket", "team-a", True)
    assert s3.local_cache_size == 10 * 2**30
    assert settings().local_cache_size is None
    assert settings("--local-cache-size", "512M").local_cache_size == 512 * 2**20
    assert settings("-b", "my-bucket", "--local-cache-size", "1.5G").local_cache_size == int(1.5 * 2**30)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["-b", "My_Bucket"], "--bucket 'My_Bucket'"),
        (["--s3-redirect"], "--s3-redirect: needs --bucket"),
        (["--s3-prefix", "x"], "--s3-prefix: needs --bucket"),
        (["--local-cache-size", "ten gigs"], "--local-cache-size 'ten gigs'"),
        (["--local-cache-size", "0"], "--local-cache-size '0'"),
    ],
)
def test_bad_s3_settings_are_refused_naming_the_option(argv, named):
    with pytest.raises(ConfigError) as refused:
        settings(*argv)
    assert named in str(refused.value)


def test_creds_longest_prefix_wins_and_both_registry_spellings_match(tmp_path):
    path = tmp_path / "creds.yaml"
    path.write_text(
        "docker.io: {username: hub, password: p1}\n"
        "ghcr.io: {username: all, password: p2}\n"
        "ghcr.io/my-org: {username: org, password: p3}\n"
        "ghcr.io/my-org/team: {username: team, password: p4}\n"
    )
    store = load_creds_file(path)
    assert store.lookup("docker.io", "registry-1.docker.io", "library/alpine").username == "hub"
    assert store.lookup("ghcr.io", "ghcr.io", "other/app").username == "all"
    assert store.lookup("ghcr.io", "ghcr.io", "my-org/app").username == "org"
    assert store.lookup("ghcr.io", "ghcr.io", "my-org/team/app").username == "team"
    assert store.lookup("ghcr.io", "ghcr.io", "my-organisation/app").username == "all"
    assert store.lookup("quay.io", "quay.io", "x") is None


def test_creds_by_endpoint_host():
    store = CredentialStore({"registry-1.docker.io": Credentials("u", "p")})
    assert store.lookup("docker.io", "registry-1.docker.io", "library/alpine").username == "u"


@pytest.mark.parametrize(
    "text, words",
    [
        ("ghcr.io: {username: u}\n", "'ghcr.io' has no password"),
        ("ghcr.io: {password: p}\n", "'ghcr.io' has no username"),
        ("ghcr.io: just-a-string\n", "'ghcr.io' must be a mapping"),
        ("- a\n- b\n", "expected a mapping"),
        ("a: [unclosed\n", "not valid YAML"),
        ("ghcr.io: {username: u, password: p, token: t}\n", "unknown keys"),
    ],
)
def test_bad_creds_files_name_the_problem(tmp_path, text, words):
    path = tmp_path / "creds.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_creds_file(path)
    assert words in str(info.value)
    assert str(path) in str(info.value)


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


def test_missing_creds_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        settings("-f", str(tmp_path / "nope.yaml"))


def test_a_world_readable_creds_file_gets_a_warning(tmp_path):
    path = tmp_path / "creds.yaml"
    path.write_text("docker.io: {username: u, password: p}\n")
    path.chmod(0o644)
    warning = creds_file_warning(path)
    assert warning is not None and "chmod 600" in warning and str(path) in warning
    path.chmod(0o640)
    assert creds_file_warning(path) is None


def test_credentials_never_show_in_repr():
    assert "s3cret" not in repr(Credentials("user", "s3cret"))
