"""Users, API keys and the principal a request acts as.

Keys look like ``tml-<43 url-safe characters>`` (the SDK refuses anything not starting with
``tml-``). Only their SHA-256 is stored: a key carries 256 random bits, so a fast hash is as
strong as a slow KDF here, and lookups stay one indexed read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

from tinkerstore.errors import AlreadyExists, InvalidInput, Unauthenticated
from tinkerstore.store.catalog.base import ApiKeyRecord, Catalog, UserRecord
from tinkerstore.types.paths import validate_segment

__all__ = ["KEY_PREFIX", "Principal", "Users", "hash_key"]

KEY_PREFIX = "tml-"
ADMIN_USER = "admin"


@dataclass(frozen=True)
class Principal:
    """Who a request acts as, resolved once per request from its key."""

    user_id: str
    user_name: str
    key_id: int | None = None


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class Users:
    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def create_user(self, name: str, now: datetime) -> UserRecord:
        validate_segment(name, "user name")
        return self._catalog.create_user(name, now)

    def get_or_create_user(self, name: str, now: datetime) -> UserRecord:
        user = self._catalog.get_user_by_name(name)
        if user is not None:
            return user
        try:
            return self.create_user(name, now)
        except AlreadyExists:  # created concurrently by another process
            user = self._catalog.get_user_by_name(name)
            assert user is not None
            return user

    def create_api_key(
        self, user_name: str, now: datetime, label: str = ""
    ) -> tuple[ApiKeyRecord, str]:
        """Create a key (and the user, if new). The plaintext is returned once, never stored."""
        user = self.get_or_create_user(user_name, now)
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        record = self._catalog.add_api_key(user.user_id, hash_key(plaintext), label, now)
        return record, plaintext

    def ensure_admin(self, now: datetime) -> str | None:
        """On a store without users, create ``admin`` and return its first key; else ``None``."""
        if self._catalog.count_users() > 0:
            return None
        _, key = self.create_api_key(ADMIN_USER, now, label="created at first start")
        return key

    def authenticate(self, api_key: str | None) -> Principal:
        if not api_key:
            raise Unauthenticated(
                "no API key given", hint="send your tml-... key in the X-API-Key header"
            )
        if not api_key.startswith(KEY_PREFIX) or len(api_key) > 512:
            raise Unauthenticated(
                "invalid API key",
                hint="keys start with tml-; create one with `tinkerstore keys create`",
            )
        digest = hash_key(api_key)
        record = self._catalog.find_api_key(digest)
        # The lookup is by hash, so timing reveals nothing about the key; compare_digest keeps
        # the final check constant-time anyway.
        if record is None or not hmac.compare_digest(record.key_hash, digest):
            raise Unauthenticated(
                "invalid API key",
                hint="check the key, or create one with `tinkerstore keys create`",
            )
        if record.revoked_at is not None:
            raise Unauthenticated(
                "this API key was revoked", hint="create a new one with `tinkerstore keys create`"
            )
        user = self._catalog.get_user(record.user_id)
        if user is None:
            raise Unauthenticated("invalid API key")
        return Principal(user_id=user.user_id, user_name=user.name, key_id=record.key_id)

    def list_api_keys(self, user_name: str | None = None) -> list[ApiKeyRecord]:
        if user_name is None:
            return self._catalog.list_api_keys()
        user = self._catalog.get_user_by_name(user_name)
        if user is None:
            raise InvalidInput(f"no user named {user_name!r}")
        return self._catalog.list_api_keys(user.user_id)

    def revoke_api_key(self, key_id: int, now: datetime) -> ApiKeyRecord:
        return self._catalog.revoke_api_key(key_id, now)
