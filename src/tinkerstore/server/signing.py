"""Signed, expiring, unauthenticated download URLs served by this server.

The SDK fetches archive and external-weights URLs with plain ``urllib`` and no credentials, so a
URL must carry its own authority. It is an HMAC-SHA256, under the store's shared secret, over the
method, the logical path, the checkpoint *version id* and the expiry. The version id is part of
the path as well, so a URL dies with the version it was issued for: after a delete or an
overwrite it no longer names a live checkpoint, and no URL can be bent to another checkpoint
without breaking the MAC. Verification compares in constant time, and checks the MAC before the
expiry so a tampered ``exp`` reads as tampering, not as an expired link.

Only the start of a download is checked: a transfer that began before ``exp`` runs to the end.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

from tinkerstore.errors import SignatureInvalid, UrlExpired

__all__ = ["SIGNED_PREFIX", "UrlSigner", "archive_path", "file_path"]

SIGNED_PREFIX = "/api/v1/signed"
_DOMAIN = b"tinkerstore-signed-url-v1"


def archive_path(version_id: str) -> str:
    return f"{SIGNED_PREFIX}/{version_id}/archive.tar"


def file_path(version_id: str, relpath: str) -> str:
    return f"{SIGNED_PREFIX}/{version_id}/files/{relpath}"


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the URL-signing secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, method: str, path: str, version_id: str, expires: int) -> str:
        message = b"\n".join(
            [
                _DOMAIN,
                method.upper().encode(),
                path.encode(),
                version_id.encode(),
                str(expires).encode(),
            ]
        )
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign_url(self, base_url: str, path: str, version_id: str, expires: int) -> str:
        """``base_url`` (scheme, host and any prefix) + the percent-encoded ``path`` + query."""
        query = urlencode({"exp": expires, "sig": self._mac("GET", path, version_id, expires)})
        return f"{base_url.rstrip('/')}{quote(path, safe='/:@')}?{query}"

    def verify(
        self,
        method: str,
        path: str,
        version_id: str,
        expires: str | None,
        signature: str | None,
        *,
        now: float | None = None,
    ) -> None:
        """Raise ``SignatureInvalid`` or ``UrlExpired``; return quietly if the URL is good."""
        # HEAD is a GET without a body: the same URL answers both.
        method = "GET" if method.upper() == "HEAD" else method
        if (
            not expires
            or not signature
            or not (expires.isascii() and expires.isdigit())  # "²".isdigit() is True
            or len(expires) > 12
        ):
            raise SignatureInvalid(
                "this download URL is not signed (missing or malformed exp/sig)",
                hint="ask the API for a fresh download URL",
            )
        expected = self._mac(method, path, version_id, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise SignatureInvalid(
                "the signature of this download URL does not match",
                hint="the URL was altered or belongs to another checkpoint; ask for a fresh one",
            )
        if int(expires) <= (time.time() if now is None else now):
            raise UrlExpired(
                "this download URL has expired",
                hint="ask the API for a fresh download URL (they live 15 minutes by default)",
            )
