"""The SSRF guard: which ns values are served and which addresses regcache may connect to."""

import asyncio

import pytest

from regcache.cli import build_parser
from regcache.config import Settings
from regcache.errors import BadRequest, UpstreamError
from regcache.upstream.guard import AddressGuard, is_internal, split_host

DNS = {
    "public.test": ["192.0.2.10"],
    "loopback.test": ["127.0.0.2"],
    "mixed.test": ["192.0.2.11", "::1"],
    "metadata.test": ["169.254.169.254"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "v6.test": ["2001:db8::5"],
    "internal.example": ["127.0.0.1"],
    "localhost": ["127.0.0.1", "::1"],
}


def guard(*argv: str) -> tuple[AddressGuard, list[str]]:
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        if host not in DNS:
            raise OSError(-2, "Name or service not known")
        return DNS[host]

    return AddressGuard(Settings.from_namespace(build_parser().parse_args(list(argv))), resolve), asked


def pin(g: AddressGuard, url: str, proxied: bool = False) -> list[str]:
    return asyncio.run(g.pin("reg.test", url, proxied))


def denied(call) -> str:
    with pytest.raises(BadRequest) as info:
        call()
    assert info.value.status == 403 and info.value.code == "DENIED"
    return info.value.message


@pytest.mark.parametrize(
    "address, internal",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("169.254.169.254", True),
        ("fe80::1", True),
        ("0.0.0.0", True),
        ("::", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("10.0.0.5", False),
        ("192.0.2.1", False),
        ("2001:db8::1", False),
        ("not-an-address", True),
    ],
)
def test_internal_addresses(address, internal):
    assert is_internal(address) is internal


@pytest.mark.parametrize(
    "netloc, expected",
    [("ghcr.io", ("ghcr.io", None)), ("R.example:5000", ("r.example", 5000)), ("[::1]:5000", ("::1", 5000))],
)
def test_split_host(netloc, expected):
    assert split_host(netloc) == expected


@pytest.mark.parametrize("ns", ["127.0.0.1:5000", "10.0.0.5", "[::1]:5000", "169.254.169.254", "[fe80::1]"])
def test_ip_literal_ns_is_refused_unless_named(ns):
    g, _ = guard()
    assert "IP address" in denied(lambda: g.check_registry(ns))
    named, _ = guard("--upstream", f"{ns}=http://{ns}")
    named.check_registry(ns)


def test_allow_registry_globs():
    g, _ = guard("--allow-registry", "docker.io", "--allow-registry", "*.example.com")
    g.check_registry("docker.io")
    g.check_registry("registry.example.com:5000")
    assert "--allow-registry" in denied(lambda: g.check_registry("ghcr.io"))
    assert "--allow-registry" in denied(lambda: g.check_registry("example.com"))
    # Naming a registry with --upstream does not get it past --allow-registry.
    g, _ = guard("--allow-registry", "docker.io", "--upstream", "lan.test=http://10.0.0.5")
    denied(lambda: g.check_registry("lan.test"))


@pytest.mark.parametrize("host", ["loopback.test", "mixed.test", "metadata.test", "mapped.test"])
def test_names_resolving_to_internal_addresses_are_refused(host):
    g, _ = guard()
    message = denied(lambda: pin(g, f"https://{host}/v2/x/blobs/y"))
    assert host in message and "--upstream" in message


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/x", "http://[::1]/x", "http://169.254.169.254/latest/meta-data/", "http://0.0.0.0/"]
)
def test_internal_ip_literals_are_refused_as_connection_targets(url):
    g, asked = guard()
    denied(lambda: pin(g, url))
    assert asked == []


def test_public_names_are_pinned_to_the_checked_addresses():
    g, asked = guard()
    assert pin(g, "https://public.test/v2/") == ["public.test:443:192.0.2.10"]
    assert pin(g, "http://v6.test:5000/v2/") == ["v6.test:5000:[2001:db8::5]"]
    assert pin(g, "https://public.test/v2/other") == ["public.test:443:192.0.2.10"]
    assert asked == ["public.test", "v6.test"], "answers are cached"
    assert pin(g, "https://192.0.2.99/x") == [], "public IP literals (a CDN) need no resolution"


def test_hosts_named_by_an_upstream_entry_are_trusted_and_not_resolved():
    g, asked = guard(
        "--upstream", "internal.example=http://internal.example:5000", "--upstream", "lan=http://127.0.0.1:9"
    )
    assert pin(g, "http://internal.example:5000/v2/") == []
    assert pin(g, "http://127.0.0.1:7000/redirected") == [], "the entry's URL host is named too"
    assert asked == []
    denied(lambda: pin(g, "http://localhost:7000/x"))


def test_through_a_proxy_only_literals_are_checked():
    g, asked = guard()
    assert pin(g, "https://loopback.test/v2/", proxied=True) == []
    assert asked == []
    denied(lambda: pin(g, "http://127.0.0.1/", proxied=True))


def test_a_name_that_does_not_resolve_is_an_upstream_error():
    g, _ = guard()
    with pytest.raises(UpstreamError, match="cannot resolve nowhere.test"):
        pin(g, "https://nowhere.test/v2/")
