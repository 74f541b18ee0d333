"""The walk containerd makes to pull an image, made through the cache: resolve the reference,
fetch the index and the manifests of the platforms asked for, then every config and layer.

Each image is walked in a thread of its own; blobs go to one shared pool of `jobs` threads (as
containerd's max_concurrent_downloads, 3 by default), and a blob two images share is fetched
once. The states below are written by those threads and only read by the progress display.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from regcache.commands.prefetch.client import Answer, CacheClient, PrefetchError
from regcache.oci import mediatypes
from regcache.oci.digest import Digest
from regcache.oci.platforms import Platform
from regcache.oci.reference import ImageReference

SINGLE_MANIFEST_TYPES = frozenset((mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST))
# Layers containerd does not fetch from the registry either (they name their own URLs).
_FOREIGN_MARKERS = ("foreign", "nondistributable")
# Configs are read, not only drained: a single-platform image says its platform there.
CONFIG_KEPT = 1 << 20


@dataclass
class BlobState:
    """One config or layer: how far it got and what the cache said about it."""

    digest: str
    size: int
    received: int = 0
    cache: str | None = None  # hit, miss or skip from the cache's header; None: not said
    body: bytes = b""  # a config's bytes
    done: bool = False

    def set_received(self, count: int) -> None:
        self.received = count


@dataclass
class ImageState:
    """One image of the run, from waiting to done or failed."""

    reference: ImageReference
    phase: str = "waiting"  # waiting, resolving, manifests, blobs, done, failed
    digest: str | None = None
    platforms: list[str] = field(default_factory=list)
    blobs: dict[str, BlobState] = field(default_factory=dict)
    tag_cache: str | None = None  # what the cache said about the tag itself
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed")

    @property
    def total_bytes(self) -> int:
        return sum(blob.size for blob in list(self.blobs.values()))

    @property
    def received_bytes(self) -> int:
        return sum(blob.size if blob.done else blob.received for blob in list(self.blobs.values()))

    def blobs_with(self, result: str) -> list[BlobState]:
        return [blob for blob in list(self.blobs.values()) if blob.cache == result]


class Prefetcher:
    """Walks images through the cache; `platforms` None means every platform of an index."""

    def __init__(self, client: CacheClient, platforms: list[Platform] | None, jobs: int) -> None:
        self._client = client
        self._platforms = platforms
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="prefetch-blob")
        self._lock = threading.Lock()
        self._fetches: dict[tuple[str, str], tuple[BlobState, Future[None]]] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def pull(self, state: ImageState) -> None:
        """Walk one image; failures end up in `state.error`, never raised."""
        try:
            self._pull(state)
        except PrefetchError as exc:
            state.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a thread's boundary: the image fails, the run goes on
            state.error = f"internal error: {type(exc).__name__}: {exc}"
        state.phase = "done" if state.error is None else "failed"

    def _pull(self, state: ImageState) -> None:
        state.phase = "resolving"
        digest, media_type = self._resolve(state)
        state.digest = digest
        state.phase = "manifests"
        pending: list[Future[None]] = []
        missing = self._walk(state, digest, media_type, pending, top=True)
        state.phase = "blobs"
        errors = []
        for fetch in pending:
            try:
                fetch.result()
            except PrefetchError as exc:
                errors.append(str(exc))
        if not state.platforms:
            state.platforms = _config_platform(state)
        if errors:
            raise PrefetchError(errors[0] if len(errors) == 1 else f"{errors[0]} (and {len(errors) - 1} more)")
        if missing:
            raise PrefetchError("; ".join(missing))
        not_stored = state.blobs_with("skip")
        if not_stored:
            raise PrefetchError(
                f"the cache passed {len(not_stored)} blob(s) through without storing them "
                "(its storage is failing: see its /readyz and log)"
            )

    def _resolve(self, state: ImageState) -> tuple[str, str]:
        """The digest and media type the reference names: a HEAD, as containerd resolves."""
        ref = state.reference
        head = self._client.manifest(ref.registry, ref.repo, ref.reference, method="HEAD")
        if not head.ok:
            # A HEAD has no body to say why: ask again with a GET for the error message.
            raise PrefetchError(self._client.manifest(ref.registry, ref.repo, ref.reference).reason())
        if ref.tag is not None:
            state.tag_cache = head.cache_result
        digest = str(ref.digest) if ref.digest is not None else head.headers.get("Docker-Content-Digest")
        if digest:
            return digest, _media_type(head)
        got = self._client.manifest(ref.registry, ref.repo, ref.reference)
        if not got.ok:
            raise PrefetchError(got.reason())
        return str(Digest.of(got.body)), _media_type(got)

    def _walk(
        self,
        state: ImageState,
        digest: str,
        media_type: str,
        pending: list[Future[None]],
        top: bool = False,
    ) -> list[str]:
        """Fetch a manifest by digest and what it names; what is missing (a platform asked for
        that an index lacks) comes back in words."""
        ref = state.reference
        answer = self._client.manifest(ref.registry, ref.repo, digest, media_type=media_type)
        if not answer.ok:
            raise PrefetchError(f"manifest {digest}: {answer.reason()}")
        if str(Digest.of(answer.body)) != digest:
            raise PrefetchError(f"manifest {digest}: the cache sent bytes of another digest")
        try:
            document = json.loads(answer.body)
        except ValueError:
            raise PrefetchError(f"manifest {digest} is not JSON") from None
        kind = str(document.get("mediaType") or _media_type(answer))
        if kind in mediatypes.INDEX_TYPES or (isinstance(document.get("manifests"), list) and kind == ""):
            entries = document.get("manifests") or []
            chosen, missing = self._select(entries)
            missing_words = []
            if missing:
                offered = sorted({str(p) for p in map(Platform.of_descriptor, entries) if p is not None})
                shown = ", ".join(str(p) for p in missing)
                missing_words.append(
                    f"its index has no {shown} (only {', '.join(offered) or 'entries without a platform'})"
                )
            for entry in chosen:
                platform = Platform.of_descriptor(entry)
                if top and platform is not None:
                    state.platforms.append(str(platform))
                missing_words += self._walk(state, str(entry["digest"]), str(entry.get("mediaType") or ""), pending)
            return missing_words
        if kind not in SINGLE_MANIFEST_TYPES and not isinstance(document.get("layers"), list):
            raise PrefetchError(f"manifest {digest}: unsupported media type {kind or 'none'} (schema 1 is not pulled)")
        config = document.get("config")
        if isinstance(config, dict):
            pending.append(self._fetch(state, config, keep=CONFIG_KEPT))
        for layer in document.get("layers") or []:
            if isinstance(layer, dict) and not any(m in str(layer.get("mediaType", "")) for m in _FOREIGN_MARKERS):
                pending.append(self._fetch(state, layer))
        return []

    def _select(self, entries: Iterable[object]) -> tuple[list[dict], list[Platform]]:
        """The index entries of the platforms asked for (the first that matches each), and the
        platforms no entry matches."""
        usable = [e for e in entries if isinstance(e, dict) and isinstance(e.get("digest"), str)]
        if self._platforms is None:
            return usable, []
        chosen: list[dict] = []
        missing: list[Platform] = []
        for platform in self._platforms:
            match = next((e for e in usable if Platform.of_descriptor(e) == platform), None)
            if match is None:
                missing.append(platform)
            elif match not in chosen:
                chosen.append(match)
        return chosen, missing

    def _fetch(self, state: ImageState, descriptor: dict, keep: int = 0) -> Future[None]:
        """A blob's download, started now or already under way for another image."""
        ref = state.reference
        digest = str(descriptor.get("digest", ""))
        size = descriptor.get("size")
        key = (ref.registry, digest)
        with self._lock:
            known = self._fetches.get(key)
            if known is None:
                blob = BlobState(digest, size if isinstance(size, int) else 0)
                media_type = str(descriptor.get("mediaType") or "")
                known = blob, self._pool.submit(self._drain, ref, blob, media_type, keep)
                self._fetches[key] = known
        state.blobs.setdefault(digest, known[0])
        return known[1]

    def _drain(self, ref: ImageReference, blob: BlobState, media_type: str, keep: int) -> None:
        answer = self._client.drain_blob(ref.registry, ref.repo, blob.digest, media_type, blob.set_received, keep)
        blob.cache = answer.cache_result
        if answer.status == 307:
            # The cache sends it from its S3 tier: stored there already, nothing to warm.
            blob.done = True
            return
        if not answer.ok:
            raise PrefetchError(f"blob {blob.digest}: {answer.reason()}")
        if blob.size and answer.received != blob.size:
            raise PrefetchError(f"blob {blob.digest}: got {answer.received} of {blob.size} bytes")
        blob.body = answer.body
        blob.done = True


def _config_platform(state: ImageState) -> list[str]:
    """A single-platform image's platform, from its config (none when it does not say)."""
    for blob in state.blobs.values():
        if blob.body:
            try:
                config = json.loads(blob.body)
            except ValueError:
                continue
            if isinstance(config, dict) and isinstance(config.get("architecture"), str):
                platform = Platform.normalised(
                    str(config.get("os") or "linux"), config["architecture"], str(config.get("variant") or "")
                )
                return [str(platform)]
    return []


def _media_type(answer: Answer) -> str:
    return (answer.headers.get("Content-Type") or "").split(";", 1)[0].strip()
