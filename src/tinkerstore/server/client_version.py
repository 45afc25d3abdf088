"""Which SDK is calling, read once per request into a small capabilities value.

Serializers consult ``ClientCapabilities`` instead of scattering version checks. The SDK sends
``X-Stainless-Package-Version`` on every request; ``User-Agent: AsyncTinker/Python <ver>`` is the
fallback. An unknown client gets the most conservative capabilities: a 0.25 client fails strict
validation on a single ``checkpoint_type: "external"``, so only a client *known* to be 0.38 or
newer sees external checkpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import HTTPConnection

__all__ = ["EXTERNAL_MIN_VERSION", "ClientCapabilities", "capabilities_for", "parse_version"]

EXTERNAL_MIN_VERSION = (0, 38)
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")
_USER_AGENT = re.compile(r"AsyncTinker/Python\s+(\S+)")


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    match = _VERSION.match(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


@dataclass(frozen=True)
class ClientCapabilities:
    version: tuple[int, int, int] | None

    @property
    def knows_external(self) -> bool:
        """Whether ``checkpoint_type: "external"`` passes this client's strict validation."""
        return self.version is not None and self.version[:2] >= EXTERNAL_MIN_VERSION


def capabilities_for(request: HTTPConnection) -> ClientCapabilities:
    version = parse_version(request.headers.get("x-stainless-package-version"))
    if version is None:
        agent = _USER_AGENT.search(request.headers.get("user-agent", ""))
        version = parse_version(agent.group(1)) if agent else None
    return ClientCapabilities(version=version)
