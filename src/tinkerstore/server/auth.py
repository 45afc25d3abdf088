"""Who is calling: ``X-API-Key`` → ``Principal``, resolved once per request.

Route handlers never check ownership themselves: they pass the principal to the service, whose
one access function answers "not found" for anything the principal may not see.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from tinkerstore.server.client_version import ClientCapabilities, capabilities_for
from tinkerstore.server.settings import ServerSettings
from tinkerstore.service import Principal, Store

__all__ = ["Caller", "Caps", "Settings", "StoreDep", "authenticate", "get_settings", "get_store"]

# Declared as a security scheme so /openapi.json shows which endpoints need a key; auto_error is
# off because a missing key must give our own 401 JSON body, not FastAPI's 403.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


def authenticate(
    request: Request, api_key: Annotated[str | None, Depends(_api_key_header)]
) -> Principal:
    """Sync on purpose: FastAPI runs it in a worker thread, off the event loop (it reads the
    catalog). Raises ``Unauthenticated`` (401 JSON) for a missing, unknown or revoked key."""
    return get_store(request).authenticate(api_key)


Caller = Annotated[Principal, Depends(authenticate)]
Caps = Annotated[ClientCapabilities, Depends(capabilities_for)]
StoreDep = Annotated[Store, Depends(get_store)]
Settings = Annotated[ServerSettings, Depends(get_settings)]
