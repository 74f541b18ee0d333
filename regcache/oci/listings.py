"""Lists a registry answers about a repository: its tags (`tags/list`) and a manifest's referrers.

Both are small JSON answers that change over time (a push adds a tag or a signature), asked for
with query arguments the cache passes on as they came: `n` and `last` page a tag list (the
distribution spec), `artifactType` filters referrers (OCI distribution spec 1.1). Registries page
with other arguments too (Quay's `next_page`), so every argument but `ns` goes upstream; the
cache keys what it keeps by all of them.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from regcache.errors import BadRequest
from regcache.oci.digest import Digest
from regcache.oci.reference import parse_repo

ListKind = Literal["tags", "referrers"]

# distribution answers a bad `n` with 400 PAGINATION_NUMBER_INVALID; so does the cache, before asking.
_N_RE = re.compile(r"^[0-9]{1,9}$")
MAX_QUERY_LENGTH = 2048
# Arguments that are the cache's own, never the registry's.
CACHE_ARGUMENTS = frozenset(("ns",))


@dataclass(frozen=True)
class ListRef:
    """One list of one repository: the upstream path and the arguments that go with it."""

    registry: str
    repo: str
    kind: ListKind
    subject: Digest | None = None  # the manifest whose referrers are listed
    query: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> str:
        """The path and query to ask the registry, as the distribution spec names them."""
        if self.kind == "tags":
            path = f"/v2/{self.repo}/tags/list"
        else:
            path = f"/v2/{self.repo}/referrers/{self.subject}"
        return path + ("?" + urllib.parse.urlencode(self.query) if self.query else "")

    def __str__(self) -> str:
        """How a log line names it: `tags/list of ghcr.io/team/app?n=50`, `referrers of …@sha256:…`."""
        query = "?" + urllib.parse.urlencode(self.query) if self.query else ""
        subject = f"@{self.subject}" if self.subject is not None else ""
        label = "tags/list" if self.kind == "tags" else "referrers"
        return f"{label} of {self.registry}/{self.repo}{subject}{query}"

    @property
    def name(self) -> str:
        """A file name for the kept answer: the arguments can be anything, so they are hashed."""
        identity = f"{self.subject or ''}?{urllib.parse.urlencode(self.query)}"
        return hashlib.sha256(identity.encode()).hexdigest()


def _passed_on(query: str) -> tuple[tuple[str, str], ...]:
    if len(query) > MAX_QUERY_LENGTH:
        raise BadRequest("UNSUPPORTED", f"query of {len(query)} characters; at most {MAX_QUERY_LENGTH}")
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("UNSUPPORTED", "query arguments are not UTF-8") from None
    # Sorted: `?n=2&last=b` and `?last=b&n=2` are one page, kept once.
    return tuple(sorted((k, v) for k, v in pairs if k not in CACHE_ARGUMENTS))


def parse_tags_ref(registry: str, repo: str, query: str) -> ListRef:
    """`GET /v2/<repo>/tags/list?n=&last=`; 400 for a bad name or a bad `n`."""
    arguments = _passed_on(query)
    for name, value in arguments:
        if name == "n" and not _N_RE.match(value):
            raise BadRequest("PAGINATION_NUMBER_INVALID", f"invalid n {value[:40]!r}: want a number of tags")
    return ListRef(registry, parse_repo(repo), "tags", query=arguments)


def parse_referrers_ref(registry: str, repo: str, digest: str, query: str) -> ListRef:
    """`GET /v2/<repo>/referrers/<digest>?artifactType=`; 400 for a bad name or digest."""
    repo = parse_repo(repo)
    try:
        subject = Digest.parse(digest)
    except BadRequest:
        raise BadRequest(
            "DIGEST_INVALID",
            f"invalid digest {digest[:100]!r} in a referrers request: want <algorithm>:<encoded>,"
            " e.g. sha256:<64 lower-case hex>",
        ) from None
    return ListRef(registry, repo, "referrers", subject=subject, query=_passed_on(query))
