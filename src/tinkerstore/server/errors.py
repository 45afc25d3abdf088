"""The ONE place where errors become HTTP responses.

Every error body has the same shape, ``{"detail": <message (hint)>, "code": <stable code>}``:
the SDK prints ``detail`` and the CLI reads it. Rules from the wire protocol that this module
enforces for every route at once:

* never an empty-body 400 (the SDK reads it as a proxy rejection and retries 16 times);
* never 409 for "already exists"/"already public" (``AlreadyExists`` is a 400);
* malformed input is a 400 that names the field and what was wrong, never a 500;
* anything unexpected is a 500 with a JSON body; the traceback goes to the log only.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tinkerstore.errors import TinkerstoreError, Unavailable

__all__ = ["error_response", "install_error_handlers", "validation_detail"]

log = logging.getLogger("tinkerstore.server")

_HTTP_CODES = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
}


def error_response(exc: TinkerstoreError, headers: dict[str, str] | None = None) -> JSONResponse:
    all_headers = dict(headers or {})
    if isinstance(exc, Unavailable):
        all_headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=all_headers)


def validation_detail(errors: Any) -> str:
    """One readable line per problem, e.g. ``body.ttl_seconds: Input should be a valid integer``."""
    parts = []
    for err in list(errors)[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = err.get("msg", "invalid value")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"


async def _tinkerstore_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TinkerstoreError)
    if exc.status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc, exc_info=exc)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        {"detail": validation_detail(exc.errors()), "code": "invalid_input"}, status_code=400
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail else "request failed"
    code = _HTTP_CODES.get(exc.status_code, "error")
    return JSONResponse(
        {"detail": detail, "code": code}, status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("%s %s crashed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": "internal server error (see the server log)", "code": "internal"},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TinkerstoreError, _tinkerstore_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
