"""Whether containerd reads the hosts dir at all.

containerd reads hosts.toml files only when its CRI config names the directory (`config_path`),
and where that key lives depends on the config's version. regcache only reads the config, with
its `imports`, to say so: editing it needs a containerd restart, which is the operator's call.
"""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

# The CRI plugins whose `registry` table holds `config_path`, by containerd config version (3: containerd 2.x).
_CRI_PLUGINS = ("io.containerd.cri.v1.images", "io.containerd.grpc.v1.cri", "cri")
# containerd 2.x reads these when a version 3 config sets no config_path.
_V3_DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d:/etc/docker/certs.d"


def containerd_reads(config: Path, hosts_dir: Path) -> tuple[bool, str]:
    """Whether containerd's CRI plugin reads `hosts_dir`, and a line that says why (or why not)."""
    if not config.is_file():
        return False, (
            f"no containerd config at {config}: containerd 1.x then reads no hosts dir (2.x reads "
            f"/etc/containerd/certs.d); pass --containerd-config if it is elsewhere"
        )
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return False, f"cannot read containerd config {config}: {exc}"
    found = _config_path(data)
    for pattern in data.get("imports", []):  # drop-in files override the main one
        for name in sorted(glob.glob(str(config.parent / pattern))):
            try:
                found = _config_path(tomllib.loads(Path(name).read_text())) or found
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                continue
    if found is None and data.get("version") == 3:
        found = _V3_DEFAULT_CONFIG_PATH
    if found is None:  # a version 1 or 2 config: its CRI plugin is io.containerd.grpc.v1.cri
        return False, (
            f"{config} sets no config_path, so containerd does not read {hosts_dir}: add "
            f'`config_path = "{hosts_dir}"` under [plugins."io.containerd.grpc.v1.cri".registry] and restart '
            "containerd (this command never edits it)"
        )
    dirs = [Path(d) for d in found.split(":") if d]
    if hosts_dir.resolve() not in [d.resolve() for d in dirs]:
        return False, f"{config} sets config_path = {found!r}, not {hosts_dir}: containerd does not read these files"
    return True, f"containerd reads {hosts_dir} (config_path = {found!r} in {config})"


def _config_path(data: dict[str, object]) -> str | None:
    plugins = data.get("plugins")
    if not isinstance(plugins, dict):
        return None
    for plugin in _CRI_PLUGINS:
        section = plugins.get(plugin, {})
        registry = section.get("registry", {}) if isinstance(section, dict) else {}
        if isinstance(registry, dict) and isinstance(registry.get("config_path"), str):
            return registry["config_path"]
    return None
