"""What the operator's commands share: the server's configuration, the tiers it names, one-line
errors.

A command reads the same -c file, options and REGCACHE_* variables as the server (its parser is
the server's, with the command's own arguments added), so `regcache ls` inside the pod sees what
the server serves. Tiers are opened as the server opens them, except that nothing is created
(a missing cache dir is an error) and reads do not count as uses.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import configargparse

from regcache.cli import build_parser
from regcache.config import Settings
from regcache.errors import ConfigError
from regcache.storage.base import Tier, TierUnavailable
from regcache.storage.disk import DiskTier
from regcache.storage.replicator import pending_uploads
from regcache.storage.s3 import S3Tier

# The server options a command's --help shows; the others are accepted (a shared config file
# has them) but hidden.
STORAGE_OPTIONS = frozenset(("--cache-dir", "--bucket", "--s3-prefix", "--log-level"))


class CommandError(Exception):
    """What stops a command: exit code 2 and one line naming the problem."""


def command_parser(name: str, description: str) -> configargparse.ArgumentParser:
    return build_parser(prog=f"regcache {name}", description=description, shown=STORAGE_OPTIONS)


@dataclass
class Tiers:
    """The tiers a command works on, in lookup order: the local disk, then the bucket."""

    all: list[Tier]
    # Keys committed locally and not yet in S3 (the replicator's markers): never removed.
    pending: frozenset[str]

    def named(self, name: str) -> Tier:
        for tier in self.all:
            if tier.name == name:
                return tier
        raise CommandError(f"no tier {name!r} here (tiers: {', '.join(t.name for t in self.all)})")


@asynccontextmanager
async def open_tiers(settings: Settings) -> AsyncIterator[Tiers]:
    """The configured tiers, checked: a missing cache dir is a CommandError, an unusable bucket a
    ConfigError."""
    root = settings.cache_dir
    if not root.is_dir():
        raise CommandError(f"--cache-dir {root}: no such directory (is this the cache dir the server uses?)")
    disk = DiskTier(root, record_use=False)
    if settings.bucket is None:
        yield Tiers([disk], frozenset())
        return
    shared = await S3Tier.open_checked(settings.bucket, settings.s3_prefix)
    try:
        yield Tiers([disk, shared], pending_uploads(root))
    finally:
        await shared.close()


# A command's work, once its arguments and the server's settings are parsed: returns the exit code.
CommandBody = Callable[[argparse.Namespace, Settings], Awaitable[int]]


def run_command(name: str, parser: configargparse.ArgumentParser, argv: list[str], body: CommandBody) -> int:
    """Parse and check the options (every command takes --json, after its own), run `body`; every
    failure an operator can cause or fix (options, references, the cache dir, the bucket) ends as
    one line and exit code 2."""
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_namespace(args)
        # The tiers log for a server ("serving from local disk…"); a command reports failures itself.
        logging.basicConfig(
            level=logging.DEBUG if settings.log_level == "debug" else logging.ERROR,
            format="%(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        return asyncio.run(body(args, settings))
    except (CommandError, ConfigError) as exc:
        print(f"regcache {name}: error: {exc}", file=sys.stderr)
        return 2
    except TierUnavailable as exc:
        where = f" (bucket {settings.bucket!r})" if settings.bucket else ""
        print(f"regcache {name}: error: {exc}{where}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `regcache ls | head`: the reader has what it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"regcache {name}: error: {exc.filename or settings.cache_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
