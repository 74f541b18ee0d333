"""Single-flight: concurrent callers with the same key share one call's result or error.

Used wherever many requests may need the same upstream answer at once (a manifest, a token, a
private-registry access check), so the registry is asked once, not once per client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Future[V]] = {}

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        """`call()`'s result, or that of the call already running for `key`."""
        pending = self._pending.get(key)
        if pending is not None:
            # Shielded: a waiter that is cancelled must not cancel the call others wait on.
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            result = await call()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: other waiters may not exist
            raise
        finally:
            del self._pending[key]
        future.set_result(result)
        return result
