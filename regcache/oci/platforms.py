"""Platforms (os/architecture/variant) as containerd names and normalises them, and which
entries of an image index a platform selects."""

from __future__ import annotations

import platform as host_platform
from dataclasses import dataclass

from regcache.errors import BadRequest

# GOARCH names for what Python's platform.machine() and distributions call them.
_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
}
_KNOWN_OS = frozenset(("linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos"))
_KNOWN_ARCHITECTURES = frozenset(
    ("386", "amd64", "arm", "arm64", "ppc64", "ppc64le", "s390x", "riscv64", "mips64", "mips64le", "loong64", "wasm")
)
# Variants that mean the architecture's baseline, which containerd writes as none.
_BASELINE_VARIANTS = {"amd64": ("v1",), "arm64": ("8", "v8", "v8.0")}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`linux/amd64`, `linux/arm/v7`, an architecture alone (`arm64`: on Linux) or an OS
        alone (`linux`: this machine's architecture), as containerd's platforms.Parse."""
        parts = text.strip().lower().split("/")
        if len(parts) == 1:
            if parts[0] in _KNOWN_OS:
                return cls.normalised(parts[0], cls.host().architecture, cls.host().variant)
            if parts[0] not in _KNOWN_ARCHITECTURES and parts[0] not in _ARCH_ALIASES:
                raise BadRequest("PLATFORM_INVALID", f"invalid platform {text!r}: not an OS or architecture")
            parts = ["linux", *parts]
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise BadRequest("PLATFORM_INVALID", f"invalid platform {text!r}: want os/architecture[/variant]")
        return cls.normalised(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def normalised(cls, os_name: str, architecture: str, variant: str = "") -> Platform:
        architecture, implied = _ARCH_ALIASES.get(architecture.lower(), (architecture.lower(), ""))
        variant = (variant or implied).lower()
        if variant in _BASELINE_VARIANTS.get(architecture, ()):
            variant = ""
        if architecture == "arm":
            variant = variant or "v7"
            if variant.isdigit():
                variant = f"v{variant}"
        return cls(os_name.lower(), architecture, variant)

    @classmethod
    def of_descriptor(cls, descriptor: object) -> Platform | None:
        """The `platform` of an index entry, None when it has none (or not a usable one)."""
        if not isinstance(descriptor, dict):
            return None
        spec = descriptor.get("platform")
        if not isinstance(spec, dict):
            return None
        os_name, architecture = spec.get("os"), spec.get("architecture")
        if not isinstance(os_name, str) or not isinstance(architecture, str):
            return None
        variant = spec.get("variant")
        return cls.normalised(os_name, architecture, variant if isinstance(variant, str) else "")

    @classmethod
    def host(cls) -> Platform:
        """The platform containerd on this machine pulls by default (nodes run Linux)."""
        return cls.normalised("linux", host_platform.machine())

    def __str__(self) -> str:
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)
