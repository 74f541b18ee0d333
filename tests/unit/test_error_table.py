"""The one table from domain errors to what the client hears: status, OCI code, a message."""

import json

import pytest
from tornado.web import HTTPError

from regcache.errors import (
    BadRequest,
    DigestMismatch,
    ListTooLarge,
    ManifestTooLarge,
    SizeMismatch,
    StorageError,
    UpstreamError,
)
from regcache.web.errors import error_body, error_for


@pytest.mark.parametrize(
    "exc, status, code, words",
    [
        (BadRequest("NAME_INVALID", "invalid repository name 'X'"), 400, "NAME_INVALID", "'X'"),
        (UpstreamError("ghcr.io", "connection refused"), 502, "UNAVAILABLE", "ghcr.io"),
        (DigestMismatch("ghcr.io", "sha256:aa", "sha256:bb"), 502, "DIGEST_INVALID", "sha256:bb"),
        (SizeMismatch("ghcr.io", 10, 5), 502, "SIZE_INVALID", "announced 10"),
        (ManifestTooLarge("ghcr.io", 5_000_000, 4_194_304), 502, "MANIFEST_INVALID", "exceeds"),
        (ListTooLarge("docker.io", "tags", 16_777_216), 502, "UNAVAILABLE", "ask the registry itself"),
        (StorageError("cache storage unavailable"), 503, "UNAVAILABLE", "storage"),
        (HTTPError(404, "no such endpoint: %s", "/x"), 404, "NAME_UNKNOWN", "/x"),
        (HTTPError(405), 405, "UNSUPPORTED", "pull-only"),
        (RuntimeError("secret internals"), 500, "UNKNOWN", "internal error"),
    ],
)
def test_errors_map_to_status_code_and_message(exc, status, code, words):
    got_status, got_code, message = error_for(exc, 500)
    assert (got_status, got_code) == (status, code)
    assert words in message
    assert "secret internals" not in message


def test_error_body_is_the_oci_format():
    body = json.loads(error_body("BLOB_UNKNOWN", "blob unknown", {"digest": "sha256:aa"}))
    assert body == {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown", "detail": {"digest": "sha256:aa"}}]}
