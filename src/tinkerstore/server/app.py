"""The ASGI application: ``create_app(settings, store)``, plus a factory for ``uvicorn``.

Everything the app needs hangs off ``app.state`` (store, settings, URL signer, futures engine),
built here from explicit arguments: no globals, so tests build as many apps as they like.

The lifespan runs the store's start-up repair, then the sweeper every
``sweep_interval_seconds`` in a background task, and on shutdown stops both and fails any
queued futures (so no poll waits forever on work that will never run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI

from tinkerstore.server import (
    routes_checkpoints,
    routes_download,
    routes_futures,
    routes_session,
    routes_training,
)
from tinkerstore.server.bodylimit import BodyLimitMiddleware
from tinkerstore.server.errors import install_error_handlers
from tinkerstore.server.futures import FutureEngine
from tinkerstore.server.settings import ServerSettings
from tinkerstore.server.signing import UrlSigner
from tinkerstore.service import Store
from tinkerstore.trainer.backend import Backend

__all__ = ["create_app"]

log = logging.getLogger("tinkerstore.server")


async def _sweep_forever(store: Store, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            report = await anyio.to_thread.run_sync(store.sweep)
            if report.errors:
                log.warning("sweep finished with errors: %s", report.errors)
        except Exception:  # a failed pass must not end the loop; the next one retries
            log.exception("sweep failed")


def create_app(settings: ServerSettings, store: Store, backend: Backend | None = None) -> FastAPI:
    futures = FutureEngine(
        store.catalog,
        gap_timeout=settings.future_gap_timeout_seconds,
        recheck=settings.future_recheck_seconds,
        clock=store.now,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(lambda: store.recover(sole_writer=settings.sole_writer))
        sweeper = None
        if settings.sweep_interval_seconds > 0:
            sweeper = asyncio.create_task(_sweep_forever(store, settings.sweep_interval_seconds))
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            await futures.aclose()

    app = FastAPI(
        title="tinkerstore",
        summary="A self-hostable, Tinker-compatible weights and checkpoints service",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.settings = settings
    app.state.signer = UrlSigner(settings.signing_secret or store.signing_secret())
    app.state.futures = futures
    # Training models live in this process; torch loads on the first training request.
    app.state.training = routes_training.TrainingHolder(store, backend)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    routers = (routes_session, routes_futures, routes_checkpoints, routes_download, routes_training)
    for module in routers:
        app.include_router(module.router)
    return app
