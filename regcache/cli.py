"""Command line, config file and environment → Settings; logging; serve.

Every option is also a key of the YAML file given with -c (keys are the long names) and an
environment variable REGCACHE_<LONG_NAME>; the command line wins over the environment, which
wins over the file.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from pathlib import Path

import configargparse

from regcache import __version__
from regcache.config import (
    DEFAULT_LOCAL_CACHE_SIZE_S3,
    LOG_LEVELS,
    CredentialStore,
    Settings,
    creds_file_warning,
    load_creds_file,
    parse_bool,
    parse_duration,
    parse_size,
    parse_skip_tags,
    parse_upstreams,
)
from regcache.errors import BadRequest, ConfigError
from regcache.oci.reference import parse_registry

log = logging.getLogger("regcache")


def build_parser() -> configargparse.ArgumentParser:
    parser = configargparse.ArgumentParser(
        prog="regcache",
        description="A pull-through, multi-registry image cache for containerd.",
        config_file_parser_class=configargparse.YAMLConfigFileParser,
        auto_env_var_prefix="REGCACHE_",
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "-c",
        "--config",
        is_config_file=True,
        env_var="REGCACHE_CONFIG",
        help="YAML config file; keys are the long option names",
    )
    parser.add_argument(
        "-b",
        "--bucket",
        help="S3 bucket shared by replicas, behind the local disk; credentials, region and endpoint "
        "come from the standard AWS variables (AWS_ENDPOINT_URL_S3 for S3-compatible stores)",
    )
    parser.add_argument("--s3-prefix", default="", help="key prefix for everything regcache stores in the bucket")
    parser.add_argument(
        "--s3-redirect",
        action="store_true",
        help="answer a blob that is only in S3 with a 307 to a presigned URL (not for private registries)",
    )
    parser.add_argument(
        "--local-cache-size",
        metavar="SIZE",
        help="bound the local tier (K/M/G/T suffix), evicting least recently used objects; "
        "default 10G with --bucket, unbounded without",
    )
    parser.add_argument("-d", "--cache-dir", default="/tmp/data", help="local cache directory")
    parser.add_argument("-m", "--cache-manifests", default="true", help="cache manifests: yes/no/true/false")
    parser.add_argument(
        "-f", "--creds-file", help="YAML file of upstream credentials: <registry>[/<prefix>]: {username, password}"
    )
    parser.add_argument("-l", "--log-level", default="info", choices=LOG_LEVELS, help="log level")
    parser.add_argument("-p", "--port", default=3000, type=int, help="port to listen on")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument(
        "--private-registry",
        action="append",
        default=[],
        metavar="REGISTRY",
        help="registry whose manifests are never cached (repeatable; blobs still are)",
    )
    parser.add_argument(
        "-t",
        "--skip-tags",
        default="latest",
        help="regex searched in the tag: matching tags are always fetched and never stored ('' for none)",
    )
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="NS=URL",
        help="endpoint for a registry name (repeatable); built in: docker.io=https://registry-1.docker.io; any other X means https://X",
    )
    parser.add_argument(
        "--upstream-ca", metavar="FILE", help="extra PEM CA bundle trusted for upstream TLS, besides the system's"
    )
    parser.add_argument(
        "--upstream-idle-timeout",
        default=60.0,
        type=float,
        metavar="SECONDS",
        help="abort an upstream download that sends no byte for this long",
    )
    add_reliability_options(parser)
    parser.add_argument("-v", "--version", action="version", version=f"regcache {__version__}")
    return parser


def add_reliability_options(parser: configargparse.ArgumentParser) -> None:
    """Tag freshness and which registries may be reached (issue 5)."""
    parser.add_argument(
        "--tag-ttl",
        default="5m",
        metavar="DURATION",
        help="serve a cached tag this long (30s, 5m, 1h), then revalidate it with a HEAD upstream",
    )
    parser.add_argument(
        "--allow-registry",
        action="append",
        default=[],
        metavar="PATTERN",
        help="glob of ns values served (repeatable; default '*': every registry)",
    )
    parser.add_argument(
        "--max-fills",
        default=128,
        type=int,
        metavar="N",
        help="upstream downloads into the cache at once; more cold blobs get 503 (the registry serves them)",
    )
    parser.add_argument(
        "--max-fill-clients",
        default=256,
        type=int,
        metavar="N",
        help="clients reading one download at once; more get 503",
    )
    parser.add_argument(
        "--client-idle-timeout",
        default=60.0,
        type=float,
        metavar="SECONDS",
        help="close a client connection that sends no request, or takes no byte, for this long",
    )


def reliability_settings(args: configargparse.Namespace) -> dict[str, object]:
    """The Settings fields of add_reliability_options, validated."""
    tag_ttl = parse_duration("--tag-ttl", args.tag_ttl)
    patterns = []
    for pattern in args.allow_registry or ["*"]:
        pattern = pattern.strip().lower()
        if not pattern or any(c.isspace() or c in "/#@" for c in pattern):
            raise ConfigError(f"--allow-registry {pattern!r}: expected a glob of host[:port], e.g. *.example.com")
        patterns.append(pattern)
    for option, value in (("--max-fills", args.max_fills), ("--max-fill-clients", args.max_fill_clients)):
        if value < 1:
            raise ConfigError(f"{option} {value}: must be at least 1")
    if args.client_idle_timeout <= 0:
        raise ConfigError(f"--client-idle-timeout {args.client_idle_timeout}: must be positive")
    return {
        "tag_ttl": tag_ttl,
        "allow_registries": tuple(patterns),
        "max_fills": args.max_fills,
        "max_fill_clients": args.max_fill_clients,
        "client_idle_timeout": args.client_idle_timeout,
    }


def settings_from_args(args: configargparse.Namespace) -> Settings:
    """Validate everything before anything starts; ConfigError names the culprit."""
    bucket = (args.bucket or "").strip() or None
    if bucket is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        raise ConfigError(f"--bucket {bucket!r}: not an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
    if args.s3_redirect and bucket is None:
        raise ConfigError("--s3-redirect: needs --bucket (it redirects to objects in the bucket)")
    if args.s3_prefix and bucket is None:
        raise ConfigError("--s3-prefix: needs --bucket")
    if args.local_cache_size:
        local_cache_size: int | None = parse_size("--local-cache-size", args.local_cache_size)
    else:
        local_cache_size = DEFAULT_LOCAL_CACHE_SIZE_S3 if bucket else None
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be 1-65535")
    if args.upstream_idle_timeout <= 0:
        raise ConfigError(f"--upstream-idle-timeout {args.upstream_idle_timeout}: must be positive")
    private = set()
    for name in args.private_registry:
        try:
            private.add(parse_registry(name.strip()))
        except BadRequest:
            raise ConfigError(f"--private-registry {name!r}: not a registry host[:port]") from None
    upstream_ca = None
    if args.upstream_ca:
        upstream_ca = Path(args.upstream_ca)
        try:
            text = upstream_ca.read_text()
        except OSError as exc:
            raise ConfigError(f"--upstream-ca {upstream_ca}: cannot read: {exc.strerror}") from None
        if "BEGIN CERTIFICATE" not in text:
            raise ConfigError(f"--upstream-ca {upstream_ca}: no PEM certificate in it")
    return Settings(
        host=args.host,
        port=args.port,
        cache_dir=Path(args.cache_dir),
        cache_manifests=parse_bool("--cache-manifests", args.cache_manifests),
        skip_tags=parse_skip_tags(args.skip_tags),
        private_registries=frozenset(private),
        upstreams=parse_upstreams(args.upstream),
        upstream_ca=upstream_ca,
        creds=load_creds_file(Path(args.creds_file)) if args.creds_file else CredentialStore(),
        log_level=args.log_level,
        bucket=bucket,
        s3_prefix=args.s3_prefix.strip("/"),
        s3_redirect=bool(args.s3_redirect),
        local_cache_size=local_cache_size,
        upstream_idle_timeout=args.upstream_idle_timeout,
        **reliability_settings(args),
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Tornado's own access log would repeat ours.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
    except ConfigError as exc:
        parser.exit(2, f"regcache: error: {exc}\n")
    except OSError as exc:
        parser.exit(2, f"regcache: error: --cache-dir {args.cache_dir}: {exc.strerror}\n")
    configure_logging(settings.log_level)
    warning = creds_file_warning(Path(args.creds_file)) if args.creds_file else None
    if warning:
        log.warning("%s", warning)
    from regcache.web.app import serve

    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        log.error("%s", exc)
        return 1
    return 0
