"""`GET /v2/<name>/tags/list` and `GET /v2/<name>/referrers/<digest>`, through the cache.

The answer is the registry's (or the one the cache kept of it), with one change: a `Link` to the
next page points at the cache, not the registry, so a client paging through a long tag list stays
on the cache and keeps its `ns`.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

from tornado.httputil import HTTPHeaders

from regcache.oci.listings import CACHE_ARGUMENTS, ListRef, parse_referrers_ref, parse_tags_ref
from regcache.upstream.client import UpstreamResponse
from regcache.web.handlers import BaseHandler

_LINK_TARGET = re.compile(r"<([^>]*)>")


def cache_link(link: str, request_path: str, ns: str | None, cache_origin: str) -> str:
    """A registry's `Link` header with every target moved onto the cache.

    Each target keeps its query (the registry's page marker: `last`, `n`, or its own) and gets
    the path the client asked for, plus the client's `ns`; a relative target stays relative and
    an absolute one becomes the cache's absolute URL (scheme and Host as the client reached it).
    """

    def moved(match: re.Match[str]) -> str:
        target = urllib.parse.urlsplit(match.group(1))
        # The registry's query as it wrote it (its page markers may be opaque), minus any ns.
        query = [part for part in target.query.split("&") if part and part.split("=", 1)[0] not in CACHE_ARGUMENTS]
        if ns is not None:
            query.append("ns=" + urllib.parse.quote(ns, safe=":[]"))
        url = request_path + ("?" + "&".join(query) if query else "")
        if target.scheme or target.netloc:
            url = cache_origin + url
        return f"<{url}>"

    return _LINK_TARGET.sub(moved, link)


class ListHandler(BaseHandler):
    """Sends a list answer: the registry's status and headers, its Link moved onto the cache."""

    async def _answer(self, ref: ListRef) -> None:
        answer = await self.services.lists.get(ref, self.client_context())
        self.count(answer.result)
        # A kept answer comes from the cache's own storage, like a manifest hit.
        served_from = "disk" if answer.result == "hit" else "upstream"
        self.pass_through(self._links_moved(answer.response), include_body=True, served_from=served_from)

    def _links_moved(self, response: UpstreamResponse) -> UpstreamResponse:
        """A copy with its Link on the cache (the answer itself may be another client's too)."""
        if "Link" not in response.headers:
            return response
        origin = f"{self.request.protocol}://{self.request.host}"
        ns = self.get_query_argument("ns", None)
        headers = HTTPHeaders()
        for name, value in response.headers.get_all():
            if name.lower() == "link":
                value = cache_link(value, self.request.path, ns, origin)
            headers.add(name, value)
        return dataclasses.replace(response, headers=headers)


class TagListHandler(ListHandler):
    kind = "tags"

    async def get(self, repo: str) -> None:
        origin = self.routed(repo)
        await self._answer(parse_tags_ref(origin.registry, origin.repo, self.request.query))


class ReferrersHandler(ListHandler):
    kind = "referrers"

    async def get(self, repo: str, digest: str) -> None:
        origin = self.routed(repo)
        await self._answer(parse_referrers_ref(origin.registry, origin.repo, digest, self.request.query))
