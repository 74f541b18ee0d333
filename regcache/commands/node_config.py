"""`python -m regcache node-config`: point a node's containerd at the cache, and undo it.

It writes `<hosts-dir>/_default/hosts.toml` (or one `<registry>/hosts.toml` per --registry)
that lists the cache first and the registry after it (`regcache.nodeconfig.hosts_toml`), keeps
the files it replaces so that `--restore` puts them back byte for byte
(`regcache.nodeconfig.hosts_dir`), and says whether containerd's config reads that dir
(`regcache.nodeconfig.containerd_config`). A run with other registries first restores the files
the new list drops, so the files on a node are always those of the last run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regcache.errors import ConfigError
from regcache.nodeconfig.containerd_config import containerd_reads
from regcache.nodeconfig.hosts_dir import HostsDir
from regcache.nodeconfig.hosts_toml import DEFAULT_HOST_DIR, parse_dial_timeout, parse_mirror, parse_registry

PROG = "regcache node-config"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Write containerd hosts.toml files that send pulls to regcache first, with the registry "
        "itself as fallback; --restore puts back what was there before.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--hosts-dir", required=True, help="containerd's hosts dir, as its config_path names it")
    parser.add_argument("--mirror", metavar="URL", help="the cache as this node reaches it, e.g. http://10.0.0.7:30000")
    parser.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="NAME|URL",
        help="write <NAME>/hosts.toml for this registry only (repeatable); a URL names its endpoint. "
        "Default: _default/hosts.toml, for every registry without a directory of its own",
    )
    parser.add_argument("--dial-timeout", default="200ms", help="how long containerd waits to connect to the cache")
    parser.add_argument(
        "--containerd-config",
        default="/etc/containerd/config.toml",
        type=Path,
        help="checked for config_path, never changed",
    )
    parser.add_argument("--restore", action="store_true", help="undo what earlier runs wrote")
    return parser


def configure(hosts: HostsDir, args: argparse.Namespace) -> list[str]:
    """Make the hosts dir hold exactly the files these arguments ask for; the lines to print."""
    mirror = parse_mirror(args.mirror)
    dial_timeout = parse_dial_timeout(args.dial_timeout)
    wanted = {f.path: f for f in map(parse_registry, args.registry or [DEFAULT_HOST_DIR])}
    said = []
    with hosts.locked(create=True):
        for path in [p for p in hosts.files if p not in wanted]:
            said.append(hosts.restore(path))
        for hosts_file in wanted.values():
            said.append(hosts.install(hosts_file, hosts_file.render(mirror, dial_timeout)))
        if f"{DEFAULT_HOST_DIR}/hosts.toml" in wanted:
            for name in hosts.own_dirs_of_other_registries():
                said.append(
                    f"note: {name} has its own hosts.toml, so pulls from {name} do not use the cache "
                    f"(add --registry {name} to cover it)"
                )
    reads, why = containerd_reads(args.containerd_config, Path(args.hosts_dir))
    said.append(why if reads else f"WARNING: {why}")
    return said


def restore(hosts: HostsDir) -> list[str]:
    with hosts.locked(create=False):
        if not hosts.files:
            return [f"nothing to restore in {hosts.root}: regcache has not configured it"]
        return [hosts.restore(path) for path in list(hosts.files)]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.restore and not args.mirror:
            raise ConfigError("--mirror URL is required (or --restore)")
        hosts = HostsDir(Path(args.hosts_dir))
        said = restore(hosts) if args.restore else configure(hosts, args)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: error: {exc.filename or args.hosts_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    for line in said:
        print(f"node-config: {line}", flush=True)
    return 0
