"""Command line, config file and environment → Settings; logging; serve.

Every option is also a key of the YAML file given with -c (keys are the long names) and an
environment variable REGCACHE_<LONG_NAME>; the command line wins over the environment, which
wins over the file.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Collection, MutableMapping
from pathlib import Path

import configargparse

from regcache import __version__
from regcache.commands import COMMANDS
from regcache.config import OPTIONS, Settings
from regcache.credentials import creds_file_warning
from regcache.errors import ConfigError

log = logging.getLogger("regcache")


def build_parser(
    prog: str = "regcache",
    description: str = "A pull-through, multi-registry image cache for containerd.",
    shown: Collection[str] | None = None,
) -> configargparse.ArgumentParser:
    """The server's parser; an operator command builds on it (same -c, options and REGCACHE_*
    variables), showing in its --help only the options in `shown`."""
    parser = configargparse.ArgumentParser(
        prog=prog,
        description=description,
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
    for option in OPTIONS:
        flags = option.flags.split("/")
        help = option.help if shown is None or option.long in shown else argparse.SUPPRESS
        value = {"type": option.type, "metavar": option.metavar, "choices": option.choices}
        if option.action == "store_true":  # a switch takes no value: no type, metavar or choices
            value = {}
        parser.add_argument(*flags, action=option.action, default=option.default, help=help, **value)
    parser.add_argument("-v", "--version", action="version", version=f"regcache {__version__}")
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Tornado's own access log would repeat ours.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    # botocore's debug output carries credentials: every request's parameters (IRSA's web identity
    # token) and every answer's body (an ECR registry token, the role's keys from STS).
    for name in ("botocore", "aiobotocore"):
        logging.getLogger(name).setLevel(max(logging.INFO, getattr(logging, level.upper())))


def drop_service_link_port(environ: MutableMapping[str, str]) -> str | None:
    """Kubernetes gives every pod in a namespace with a Service named `regcache` the variable
    REGCACHE_PORT=tcp://<ip>:<port> (a "service link"), which is not --port: dropped, so the
    config file's port holds instead of a start-up failure. Returns the value dropped."""
    value = environ.get("REGCACHE_PORT", "")
    if value.startswith("tcp://"):
        del environ["REGCACHE_PORT"]
        return value
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    service_link = drop_service_link_port(os.environ)
    if argv and argv[0] in COMMANDS:
        command = importlib.import_module(f"regcache.commands.{argv[0].replace('-', '_')}")
        return command.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_namespace(args)
        settings.cache_dir.mkdir(parents=True, exist_ok=True)
    except ConfigError as exc:
        parser.exit(2, f"regcache: error: {exc}\n")
    except OSError as exc:
        parser.exit(2, f"regcache: error: --cache-dir {args.cache_dir}: {exc.strerror}\n")
    configure_logging(settings.log_level)
    if service_link is not None:
        log.info("ignoring REGCACHE_PORT=%s: a Kubernetes service link, not a port", service_link)
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
