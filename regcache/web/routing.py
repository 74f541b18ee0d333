"""Which registry a pull names: `?ns=` (containerd), the path's first component (CRI-O, podman,
skopeo, crane), or Docker's registry-mirrors (Docker Hub). Pure, so every rule is unit-tested.

Only containerd sends `ns`. Clients configured through registries.conf can only be given a mirror
location, `cache:3000/<registry>`, so they ask for `/v2/<registry>/<repository>/...`. A first
component names a registry when it could not be a Docker Hub namespace: it contains a `.`, is
`localhost`, or is a name the operator gave with `--upstream` (how a registry on a port is
reached, since a path cannot hold `host:5000`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from regcache.errors import BadRequest
from regcache.oci.reference import DOCKER_HUB, parse_registry

NO_REGISTRY_MESSAGE = (
    "no registry named: configure containerd with regcache as a mirror (hosts.toml), which sends "
    "?ns=<registry>, or put the registry first in the path, /v2/<registry>/<repository>/... "
    '(registries.conf mirror location = "cache:3000/<registry>" for CRI-O, podman, skopeo)'
)


@dataclass(frozen=True)
class Route:
    """The origin of a request, and what named it."""

    registry: str
    repo: str
    named_by: Literal["ns", "path", "docker"]

    @property
    def namespace(self) -> str | None:
        """The `OCI-Namespace` answer header: the registry a client scoped its request to.

        Docker's mirror requests name no registry at all, so they get none.
        """
        return None if self.named_by == "docker" else self.registry


def route(name: str, ns: str | None, user_agent: str, upstream_names: Collection[str]) -> Route:
    """(registry, repository) of a pull of `/v2/<name>/...`; BadRequest when none is named.

    `name` is not validated here (the reference parsers do that); `ns` wins when present.
    """
    if ns is not None:
        return Route(parse_registry(ns), name, "ns")
    first, slash, rest = name.partition("/")
    if slash and names_registry(first, upstream_names):
        try:
            registry = parse_registry(first)
        except BadRequest:
            raise BadRequest(
                "NAME_INVALID",
                f"invalid registry {first!r} at the start of the path: want a host name "
                "(reach a registry on a port through an --upstream name)",
            ) from None
        if registry == DOCKER_HUB and "/" not in rest:
            rest = f"library/{rest}"  # docker.io/alpine is docker.io/library/alpine
        return Route(registry, rest, "path")
    # Docker's registry-mirrors only ever mirror Docker Hub and name no registry.
    if user_agent.startswith("docker/"):
        return Route(DOCKER_HUB, name, "docker")
    raise BadRequest("UNSUPPORTED", NO_REGISTRY_MESSAGE)


def names_registry(component: str, upstream_names: Collection[str]) -> bool:
    """Whether a path's first component is a registry rather than a Docker Hub namespace
    (which can hold neither a `.` nor be `localhost`)."""
    host = component.partition(":")[0].lower()
    return "." in host or host == "localhost" or component.lower() in upstream_names
