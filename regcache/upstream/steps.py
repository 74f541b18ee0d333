"""What to do with each answer of a logical request: follow it, authenticate, or act on it.

Pure: no sockets, no clock, so every rule is unit-tested on its own. Redirects are followed here,
not by curl, so that an Authorization header never goes to another origin (a CDN, a presigned S3
URL); a 401 is answered with configured credentials once, and only on the registry's own origin.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace

from regcache.upstream.proxy import origin_of

REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Follow:
    url: str
    method: str


@dataclass(frozen=True)
class Authenticate:
    challenge: str


@dataclass(frozen=True)
class Final:
    """This answer is the request's answer."""


Step = Follow | Authenticate | Final


@dataclass(frozen=True)
class Progress:
    """Where a logical request stands between its exchanges."""

    origin: str  # scheme://host of the registry's endpoint
    url: str
    method: str
    has_credentials: bool = False
    redirects: int = 0
    auth_retried: bool = False

    @property
    def same_origin(self) -> bool:
        return origin_of(self.url) == self.origin

    def after(self, step: Step) -> Progress:
        if isinstance(step, Follow):
            return replace(self, url=step.url, method=step.method, redirects=self.redirects + 1)
        if isinstance(step, Authenticate):
            return replace(self, auth_retried=True)
        return self


def next_step(status: int, headers: Mapping[str, str], progress: Progress) -> Step:
    location = headers.get("Location")
    if status in REDIRECT_STATUSES and location and progress.redirects < MAX_REDIRECTS:
        method = "GET" if status == 303 and progress.method != "HEAD" else progress.method
        return Follow(urllib.parse.urljoin(progress.url, location), method)
    if status == 401 and progress.has_credentials and not progress.auth_retried and progress.same_origin:
        return Authenticate(headers.get("WWW-Authenticate", ""))
    return Final()
