"""The Starlette baseline of the download benchmark: one file through ``FileResponse``.

Run as ``BENCH_FILE=/path uvicorn bench.fileserver:app``; what a minimal Python file server on
the same ASGI stack as ours (uvicorn + Starlette) achieves.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse
from starlette.routing import Route

__all__ = ["app"]


async def _file(request: Request) -> FileResponse:
    return FileResponse(os.environ["BENCH_FILE"], media_type="application/octet-stream")


async def _health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/file", _file), Route("/health", _health)])
