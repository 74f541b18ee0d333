"""`python -m regcache prefetch IMAGE... [-f FILE] [--platform P ...] [--via URL]`: pull images
through a running cache as containerd would, so the cache holds them before anyone asks.

Exit status: 0 when every image is in the cache, 1 when any failed (each with its reason) or the
cache cannot be reached, 2 for a bad command line, reference, platform or file, 130 when
interrupted.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import configargparse

from regcache.commands.prefetch.client import CacheClient, PrefetchError
from regcache.commands.prefetch.report import Progress, summary_table, totals_line
from regcache.commands.prefetch.walk import ImageState, Prefetcher
from regcache.config import OPTIONS
from regcache.errors import BadRequest, ConfigError
from regcache.oci.platforms import Platform
from regcache.oci.reference import ImageReference, parse_image_reference

# Images walked at once; their blobs share the --jobs pool.
IMAGES_AT_ONCE = 4
REDRAW_EVERY = 0.2


def build_parser() -> configargparse.ArgumentParser:
    parser = configargparse.ArgumentParser(
        prog="regcache prefetch",
        description="Pull images through a running regcache as containerd would, so that it holds "
        "their manifests, configs and layers.",
        config_file_parser_class=configargparse.YAMLConfigFileParser,
        auto_env_var_prefix="REGCACHE_",
        # The server's config file: only its host and port matter here.
        ignore_unknown_config_file_keys=True,
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image reference, e.g. alpine:3.20")
    parser.add_argument(
        "-f", "--file", action="append", default=[], metavar="FILE",
        help="file of image references, one a line ('#' comments; '-' for stdin); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
        help="platform to fetch from a multi-platform image (repeatable, or comma-separated); "
        "'all' for every one; default: this machine's, as containerd pulls",
    )  # fmt: skip
    parser.add_argument(
        "--via", default=None, metavar="URL",
        help="the cache to pull through; default http://127.0.0.1:<port> from --port or the config",
    )  # fmt: skip
    parser.add_argument("-j", "--jobs", type=int, default=3, metavar="N", help="blobs downloaded at once")
    parser.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS",
        help="give up on a request when the cache sends nothing for this long",
    )  # fmt: skip
    parser.add_argument("-c", "--config", is_config_file=True, env_var="REGCACHE_CONFIG", help="regcache's YAML config")
    for option in OPTIONS:
        if option.long in ("--host", "--port"):
            # As text: the port is only needed, and checked, when --via is not given (a service
            # link's REGCACHE_PORT=tcp://… was already dropped by cli.main).
            parser.add_argument(*option.flags.split("/"), default=str(option.default), help=f"regcache's {option.help}")
    return parser


def cache_url(via: str | None, host: str, port: str) -> str:
    """The URL to pull through: --via, or regcache's own --host/--port (a wildcard host is
    reached on loopback)."""
    if via is None:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--port {port!r}: not a port number; give the cache with --via URL")
        shown = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        return f"http://{shown}:{port}"
    parts = urllib.parse.urlsplit(via.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"--via {via!r}: expected http://host:port or https://host:port")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"--via {via!r}: bad port") from None
    return f"{parts.scheme}://{parts.netloc}"


def parse_platforms(values: list[str]) -> list[Platform] | None:
    """The platforms asked for; None means every platform ('all')."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        return [Platform.host()]
    if "all" in names:
        return None
    try:
        return list(dict.fromkeys(Platform.parse(name) for name in names))
    except BadRequest as exc:
        raise ConfigError(f"--platform: {exc.message}") from None


def read_references(images: list[str], files: list[str]) -> list[ImageReference]:
    """Every reference from the command line and the files, normalised, duplicates dropped."""
    given: list[tuple[str, str]] = [("", image) for image in images]
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
        except OSError as exc:
            raise ConfigError(f"-f {name}: cannot read: {exc.strerror}") from None
        for number, line in enumerate(text.splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if entry:
                given.append((f"{name}:{number}: ", entry))
    references: list[ImageReference] = []
    for where, text in given:
        try:
            reference = parse_image_reference(text)
        except BadRequest as exc:
            raise ConfigError(f"{where}{exc.message}") from None
        if reference not in references:
            references.append(reference)
    if not references:
        raise ConfigError("no image given: name images, or a file of them with -f")
    return references


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        references = read_references(args.images, args.file)
        platforms = parse_platforms(args.platform)
        via = cache_url(args.via, args.host, args.port)
        if args.jobs < 1 or args.timeout <= 0:
            raise ConfigError("--jobs must be at least 1 and --timeout positive")
    except ConfigError as exc:
        parser.exit(2, f"regcache prefetch: error: {exc}\n")
    client = CacheClient(via, args.timeout)
    try:
        client.ping()
    except PrefetchError as exc:
        sys.stderr.write(f"regcache prefetch: error: {exc} (is regcache running there? --via names it)\n")
        return 1
    states = [ImageState(reference) for reference in references]
    try:
        run(client, states, platforms, args.jobs)
    except KeyboardInterrupt:
        sys.stderr.write("regcache prefetch: interrupted\n")
        return 130
    sys.stdout.write(summary_table(states))
    sys.stdout.write(totals_line(states))
    return 1 if any(state.phase == "failed" for state in states) else 0


def run(client: CacheClient, states: list[ImageState], platforms: list[Platform] | None, jobs: int) -> None:
    """Walk every image, drawing progress on stderr until all have finished."""
    progress = Progress(sys.stderr, live=sys.stderr.isatty())
    prefetcher = Prefetcher(client, platforms, jobs)
    images = ThreadPoolExecutor(max_workers=min(IMAGES_AT_ONCE, len(states)), thread_name_prefix="prefetch-image")
    try:
        walks = [images.submit(prefetcher.pull, state) for state in states]
        while not all(walk.done() for walk in walks):
            progress.update(states)
            time.sleep(REDRAW_EVERY)
        progress.update(states)
    except BaseException:
        client.cancelled.set()  # the threads stop at their next chunk
        raise
    finally:
        images.shutdown(wait=True, cancel_futures=True)
        prefetcher.close()
