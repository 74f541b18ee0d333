"""Which registry a pull names: ns, the path's first component, or Docker's registry-mirrors."""

import pytest

from regcache.errors import BadRequest
from regcache.web.routing import Route, route

UPSTREAMS = frozenset({"docker.io", "registry.lan", "myregistry"})
CONTAINERD = "containerd/v2.0.0"
DOCKER = "docker/27.0.1 go/go1.22"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("ghcr.io/org/app", Route("ghcr.io", "org/app", "path")),
        ("quay.io/prometheus/node-exporter", Route("quay.io", "prometheus/node-exporter", "path")),
        ("docker.io/library/alpine", Route("docker.io", "library/alpine", "path")),
        ("docker.io/alpine", Route("docker.io", "library/alpine", "path")),
        ("docker.io/bitnami/redis", Route("docker.io", "bitnami/redis", "path")),
        ("localhost/app", Route("localhost", "app", "path")),
        ("registry.lan/app", Route("registry.lan", "app", "path")),
        ("myregistry/team/app", Route("myregistry", "team/app", "path")),
        ("Registry.Lan/app", Route("registry.lan", "app", "path")),
    ],
)
def test_a_registry_first_in_the_path_names_the_origin(name, expected):
    assert route(name, None, CONTAINERD, UPSTREAMS) == expected


def test_only_docker_io_one_component_names_get_library():
    assert route("ghcr.io/app", None, "", UPSTREAMS).repo == "app"
    assert route("myregistry/app", None, "", UPSTREAMS).repo == "app"


def test_ns_wins_and_the_whole_path_is_the_repository():
    assert route("ghcr.io/org/app", "quay.io", CONTAINERD, UPSTREAMS) == Route("quay.io", "ghcr.io/org/app", "ns")
    assert route("test/app", "127.0.0.1:5000", CONTAINERD, UPSTREAMS) == Route("127.0.0.1:5000", "test/app", "ns")
    # ns is never rewritten: containerd already says library/.
    assert route("alpine", "docker.io", CONTAINERD, UPSTREAMS).repo == "alpine"


def test_docker_registry_mirrors_mean_docker_hub():
    assert route("library/alpine", None, DOCKER, UPSTREAMS) == Route("docker.io", "library/alpine", "docker")
    # A Docker Hub namespace is never a registry: it has no dot and is no --upstream name.
    assert route("bitnami/redis", None, DOCKER, UPSTREAMS).registry == "docker.io"


def test_a_path_registry_wins_over_dockers_user_agent():
    assert route("ghcr.io/org/app", None, DOCKER, UPSTREAMS) == Route("ghcr.io", "org/app", "path")


@pytest.mark.parametrize("name", ["library/alpine", "test/app", "alpine", "ghcr.io", "otherhost/app"])
def test_no_registry_named_is_a_400_naming_both_ways(name):
    with pytest.raises(BadRequest) as info:
        route(name, None, CONTAINERD, UPSTREAMS)
    assert info.value.status == 400
    assert "ns" in info.value.message and "hosts.toml" in info.value.message
    assert "/v2/<registry>/<repository>" in info.value.message and "registries.conf" in info.value.message


def test_upstream_names_name_registries_only_when_configured():
    with pytest.raises(BadRequest):
        route("myregistry/app", None, CONTAINERD, frozenset({"docker.io"}))


def test_an_invalid_registry_in_the_path_is_named():
    with pytest.raises(BadRequest) as info:
        route("my_org.example/app", None, CONTAINERD, UPSTREAMS)
    assert info.value.status == 400 and "'my_org.example'" in info.value.message


def test_an_invalid_ns_is_still_refused():
    with pytest.raises(BadRequest) as info:
        route("test/app", "not a host", CONTAINERD, UPSTREAMS)
    assert "ns" in info.value.message


def test_the_namespace_header_names_registries_clients_chose():
    assert route("ghcr.io/org/app", None, "", UPSTREAMS).namespace == "ghcr.io"
    assert route("org/app", "quay.io", "", UPSTREAMS).namespace == "quay.io"
    assert route("library/alpine", None, DOCKER, UPSTREAMS).namespace is None
