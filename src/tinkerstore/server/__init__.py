"""The Tinker-compatible HTTP server: ``create_app(settings, store)`` builds the ASGI app."""

from tinkerstore.server.app import create_app
from tinkerstore.server.futures import FutureEngine, FutureResult
from tinkerstore.server.settings import ServerSettings

__all__ = ["FutureEngine", "FutureResult", "ServerSettings", "create_app"]
