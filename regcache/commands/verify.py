"""`regcache verify [--delete]`: re-hash every stored blob and manifest, on the disk and in S3.

An object whose bytes do not hash to the digest its key names is reported (and with --delete
removed from that tier, so the next pull fetches it again); exit code 1 when any was bad. An
object replaced or removed while it was being hashed is not judged: the server may have just
committed a fresh copy.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from dataclasses import dataclass

from regcache.commands.common import command_parser, open_tiers, run_command
from regcache.commands.inventory import content_digest
from regcache.commands.output import human_size, print_json
from regcache.config import Settings
from regcache.oci.digest import Digest
from regcache.storage.base import CHUNK, ObjectInfo, Tier

HASHING_AT_ONCE = 2  # the machine's cores, or S3 connections kept busy


def main(argv: list[str]) -> int:
    parser = command_parser(
        "verify", "Re-hash stored blobs and manifests; report (and remove) those that do not match."
    )
    parser.add_argument("--delete", action="store_true", help="remove each object that does not match its digest")
    parser.add_argument("--tier", choices=("disk", "s3"), help="check only this tier (default: every tier)")
    return run_command("verify", parser, argv, _verify)


@dataclass(frozen=True)
class Finding:
    tier: str
    key: str
    expected: Digest
    actual: str  # the digest the bytes hash to, or why they could not all be read
    size: int
    deleted: bool


@dataclass
class Checked:
    objects: int = 0
    size: int = 0


async def _verify(args: argparse.Namespace, settings: Settings) -> int:
    findings: list[Finding] = []
    checked: dict[str, Checked] = {}
    async with open_tiers(settings) as tiers:
        chosen = [tiers.named(args.tier)] if args.tier else tiers.all
        for tier in chosen:
            checked[tier.name] = Checked()
            await _verify_tier(tier, args.delete, findings, checked[tier.name], report=not args.json)
    if args.json:
        print_json(
            {
                "checked": {name: vars(c) for name, c in checked.items()},
                "bad": [{**vars(f), "expected": str(f.expected)} for f in findings],
            }
        )
    else:
        for name, c in checked.items():
            bad = sum(1 for f in findings if f.tier == name)
            print(f"{name}: {c.objects} objects ({human_size(c.size)}) checked, {bad} bad")
    return 1 if findings else 0


async def _verify_tier(tier: Tier, delete: bool, findings: list[Finding], checked: Checked, report: bool) -> None:
    slots = asyncio.Semaphore(HASHING_AT_ONCE)
    listed = [info for prefix in ("blobs/", "manifests/", "private/") async for info in tier.entries(prefix)]

    async def check(info: ObjectInfo) -> None:
        expected = _expected(info.key)
        if expected is None:
            return  # not a content key (a manifest's metadata, a stray file)
        async with slots:
            actual = await _hash(tier, info.key)
        if actual is None:
            return  # gone meanwhile
        checked.objects += 1
        checked.size += info.size
        if actual == str(expected):
            return
        now = await tier.stat(info.key)
        if now is None or now.modified != info.modified:
            return  # replaced while it was hashed: not the bytes we read
        if delete:
            await tier.delete(info.key)
        finding = Finding(tier.name, info.key, expected, actual, info.size, delete)
        findings.append(finding)
        if report:
            _print_bad(finding)

    await asyncio.gather(*(check(info) for info in listed))


def _expected(key: str) -> Digest | None:
    if key.startswith("private/"):
        key = key.removeprefix("private/").partition("/")[2]
    return content_digest(key, "blobs") or content_digest(key, "manifests")


async def _hash(tier: Tier, key: str) -> str | None:
    """The digest of the object's bytes; None if it is gone; a description if it breaks off."""
    source = await tier.open(key)
    if source is None:
        return None
    hasher = hashlib.sha256()
    try:
        async for chunk in source.chunks():
            # Hashing 1 MiB takes ~1 ms: in a thread, two objects hash on two cores.
            if len(chunk) >= CHUNK:
                await asyncio.to_thread(hasher.update, chunk)
            else:
                hasher.update(chunk)
    except OSError as exc:
        return f"unreadable: {exc}"
    finally:
        await source.aclose()
    return f"sha256:{hasher.hexdigest()}"


def _print_bad(finding: Finding) -> None:
    action = "deleted" if finding.deleted else "kept (--delete removes it)"
    print(f"BAD {finding.tier} {finding.key} ({human_size(finding.size)})")
    print(f"    hashes to {finding.actual}, not {finding.expected}; {action}", flush=True)
