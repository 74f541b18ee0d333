"""The one table from domain errors to HTTP status and OCI error code."""

from __future__ import annotations

import json

from tornado.web import HTTPError

from regcache.errors import (
    BadRequest,
    DigestMismatch,
    ListTooLarge,
    ManifestTooLarge,
    Offline,
    Overloaded,
    SizeMismatch,
    StorageError,
    UpstreamError,
)

_HTTP_CODES = {
    400: "UNSUPPORTED",
    404: "NAME_UNKNOWN",
    416: "RANGE_INVALID",
}


def error_for(exc: BaseException | None, status: int) -> tuple[int, str, str]:
    """(status, OCI code, message) for an exception; never a traceback, never a credential."""
    if isinstance(exc, BadRequest):
        return exc.status, exc.code, exc.message
    if isinstance(exc, Offline):
        # A 404 makes containerd try its next host (the registry itself, where it can reach one).
        code = {"manifest": "MANIFEST_UNKNOWN", "blob": "BLOB_UNKNOWN"}.get(exc.kind, "NAME_UNKNOWN")
        return 404, code, str(exc)
    if isinstance(exc, DigestMismatch):
        return 502, "DIGEST_INVALID", str(exc)
    if isinstance(exc, SizeMismatch):
        return 502, "SIZE_INVALID", str(exc)
    if isinstance(exc, ManifestTooLarge):
        return 502, "MANIFEST_INVALID", str(exc)
    if isinstance(exc, ListTooLarge):
        return 502, "UNAVAILABLE", str(exc) + "; ask the registry itself"
    if isinstance(exc, UpstreamError):
        return 502, "UNAVAILABLE", str(exc)
    if isinstance(exc, (Overloaded, StorageError)):
        # 503 sends containerd to the next host (the registry itself) at once.
        return 503, "UNAVAILABLE", str(exc)
    if status == 405 or (isinstance(exc, HTTPError) and exc.status_code == 405):
        return 405, "UNSUPPORTED", "method not allowed: regcache is a pull-only mirror"
    if isinstance(exc, HTTPError):
        code = exc.status_code
        message = exc.log_message or exc.reason or "error"
        if exc.args:
            message = exc.log_message % exc.args if exc.log_message else message
        return code, _HTTP_CODES.get(code, "UNKNOWN"), message
    return (status if status >= 400 else 500), "UNKNOWN", "internal error"


def error_body(code: str, message: str, detail: object = None) -> bytes:
    entry: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        entry["detail"] = detail
    return json.dumps({"errors": [entry]}).encode()
