"""Byte-range responses for downloads: 200, 206 or 416, streamed, with a known length.

A resumed download sends ``Range: bytes=<n>-``; ``If-Range`` with our ETag makes the resume safe
(the ETag names the checkpoint version, and a version's bytes never change). Several ranges in
one header are answered with the whole body, which RFC 9110 allows and no client here needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tinkerstore.errors import RangeNotSatisfiable
from tinkerstore.server.errors import error_response

__all__ = ["Body", "parse_range", "ranged_response"]

# body(start, end) yields the bytes [start, end) of the resource
Body = Callable[[int, int], Iterator[bytes]]
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, total: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range, ``None`` for "send everything".

    Raises ``RangeNotSatisfiable`` for a well-formed range outside the resource; a malformed or
    multi-range header is ignored (whole body), as RFC 9110 permits.
    """
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or total == 0:
            raise _unsatisfiable(header, total)
        return max(total - n, 0), total
    start = int(first)
    end = total if last == "" else int(last) + 1
    if last != "" and end <= start:
        return None  # "bytes=5-3" is invalid syntax: ignore it
    if start >= total:
        raise _unsatisfiable(header, total)
    return start, min(end, total)


def _unsatisfiable(header: str, total: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"range {header.strip()!r} is outside the {total}-byte resource",
        hint="resume from an offset below the total size, or download from the start",
    )


def ranged_response(
    request: Request,
    *,
    total: int,
    etag: str,
    media_type: str,
    body: Body,
    filename: str | None = None,
) -> Response:
    headers = {"Accept-Ranges": "bytes", "ETag": etag}
    if filename is not None:
        safe = filename.encode("ascii", "replace").decode().replace('"', "_")
        headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        range_header = None  # the client's partial copy is of another version: start over
    try:
        span = parse_range(range_header, total)
    except RangeNotSatisfiable as exc:
        return error_response(exc, {**headers, "Content-Range": f"bytes */{total}"})
    status = 200
    start, end = 0, total
    if span is not None:
        start, end = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    # A sync iterator: Starlette pulls each chunk in a worker thread, so blocking reads of the
    # blob store never stall the event loop, and only one chunk is in memory at a time.
    return StreamingResponse(
        body(start, end), status_code=status, headers=headers, media_type=media_type
    )
