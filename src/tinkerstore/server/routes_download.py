"""Download URLs (0.25 archive, 0.38 external weights) and the signed download endpoints.

Issuing a URL needs the caller's key and read access (owner, or a published checkpoint).
Fetching it needs nothing but the URL: the SDK fetches with plain ``urllib`` and no headers.

Two kinds of URL, chosen by the blob store:

* **Object store (S3):** presigned GET URLs (SigV4) of the objects themselves, verified by the
  object store, so the bytes never pass through a replica. External weights: one per file. The
  0.25 archive: a tar object built once per version (``archives``), 503 + Retry-After until it
  exists. Such a URL works until it expires, or until the sweeper removes the bytes of a deleted
  or overwritten checkpoint (after the grace period).
* **Local files:** URLs of this server's signed endpoints below. They check the MAC and expiry
  once, at the start, then look the version up in the catalog: a URL for a deleted or
  overwritten checkpoint is a 404 from that moment, while a transfer already under way finishes
  (its blobs outlive it by the sweeper's grace period).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

from fastapi import APIRouter, Query, Request
from starlette.responses import JSONResponse, Response

from tinkerstore.errors import CheckpointNotFound, NotFound, Unavailable
from tinkerstore.server import archives
from tinkerstore.server.auth import Caller, Settings, StoreDep
from tinkerstore.server.downloads import ranged_response
from tinkerstore.server.errors import error_response
from tinkerstore.server.routes_checkpoints import checkpoint_path
from tinkerstore.server.settings import ServerSettings
from tinkerstore.server.signing import UrlSigner, archive_path, file_path
from tinkerstore.server.tarstream import LAYOUT_VERSION, TarLayout, TarMember
from tinkerstore.service import Store
from tinkerstore.store.catalog.base import CheckpointRecord
from tinkerstore.store.format import FileEntry, file_key, verified_chunks
from tinkerstore.types import (
    CheckpointArchiveUrlResponse,
    CheckpointKind,
    ExternalWeightsUrlsResponse,
)

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["downloads"])

_GONE_HINT = "ask the API for a fresh download URL"


def _signer(request: Request) -> UrlSigner:
    signer: UrlSigner = request.app.state.signer
    return signer


def _base_url(request: Request, settings: ServerSettings) -> str:
    return settings.public_base_url or str(request.base_url).rstrip("/")


def _expiry(settings: ServerSettings) -> tuple[int, datetime]:
    expires = int(time.time()) + settings.url_lifetime_seconds
    return expires, datetime.fromtimestamp(expires, UTC)


def _wants_json(request: Request) -> bool:
    """The SDK asks for exactly ``application/json`` and accepts a 200 JSON body; anything that
    also accepts other types (a browser, ``curl -L``) gets the 302 it can follow."""
    accept = [p.split(";")[0].strip().lower() for p in request.headers.get("accept", "").split(",")]
    return "application/json" in accept and not (
        {"*/*", "application/x-tar", "text/html"} & set(accept)
    )


@router.get(
    "/training_runs/{run_id}/checkpoints/{kind}/{name}/archive",
    response_model=CheckpointArchiveUrlResponse,
    responses={302: {"description": "Location: the signed archive URL; Expires: its expiry"}},
)
def checkpoint_archive(
    run_id: str,
    kind: CheckpointKind,
    name: str,
    request: Request,
    caller: Caller,
    store: StoreDep,
    settings: Settings,
) -> Response:
    """A signed, expiring URL of the checkpoint as a plain tar (SDK 0.25). On local files it
    answers at once (the archive is streamed on demand); on an object store it is the presigned
    URL of a cached tar object, after 503 + Retry-After while that is first built."""
    record = store.resolve(caller, checkpoint_path(run_id, kind, name))
    expires, expires_at = _expiry(settings)
    key = archives.archive_key(record.blob_prefix)
    url = store.blobs.presign_get(key, settings.url_lifetime_seconds)
    if url is not None:
        builds = archives.for_app(request.app.state, store)
        if builds.ready(record, wait=settings.archive_build_wait_seconds) is None:
            # Returned, not raised: an archive in preparation is not an error worth a log line.
            return error_response(
                Unavailable(
                    f"the archive of {record.run_id}/{kind.value}/{name} is being prepared",
                    hint="retry after the delay in Retry-After (the SDK does so by itself)",
                    retry_after=settings.archive_retry_after_seconds,
                ),
                {"Cache-Control": "no-store"},
            )
    else:
        url = _signer(request).sign_url(
            _base_url(request, settings),
            archive_path(record.version_id),
            record.version_id,
            expires,
        )
    body = CheckpointArchiveUrlResponse(url=url, expires=expires_at).model_dump(mode="json")
    headers = {"Expires": format_datetime(expires_at, usegmt=True), "Cache-Control": "no-store"}
    if _wants_json(request):
        return JSONResponse(body, headers=headers)
    return JSONResponse(body, status_code=302, headers={**headers, "Location": url})


@router.get(
    "/training_runs/{run_id}/checkpoints/{kind}/{name}/external_weights_urls",
    response_model=ExternalWeightsUrlsResponse,
)
def external_weights_urls(
    run_id: str,
    kind: CheckpointKind,
    name: str,
    request: Request,
    caller: Caller,
    store: StoreDep,
    settings: Settings,
) -> ExternalWeightsUrlsResponse:
    """One signed URL per file (SDK 0.38), keyed by its path in the checkpoint. The key set is
    the manifest's, so every re-sign returns the same keys."""
    record = store.resolve(caller, checkpoint_path(run_id, kind, name))
    manifest = store.manifest(record)
    if not manifest.files:
        raise NotFound(f"checkpoint {record.run_id}/{kind.value}/{name} has no files to download")
    expires, expires_at = _expiry(settings)
    base, signer, vid = _base_url(request, settings), _signer(request), record.version_id
    urls = {}
    for f in manifest.files:
        # The object store's own presigned URL where there is one; else one of this server.
        presigned = store.blobs.presign_get(
            file_key(record.blob_prefix, f.path), settings.url_lifetime_seconds
        )
        urls[f.path] = presigned or signer.sign_url(base, file_path(vid, f.path), vid, expires)
    return ExternalWeightsUrlsResponse(urls=urls, expires=expires_at)


def _live_record(store: Store, version_id: str) -> CheckpointRecord:
    version = store.catalog.get_version(version_id)
    record = None
    if version is not None:
        record = store.catalog.get_checkpoint(version.run_id, version.kind, version.name)
    if (
        record is None
        or record.version_id != version_id
        or (record.expires_at is not None and record.expires_at <= store.now())
    ):
        raise CheckpointNotFound(
            "the checkpoint of this download URL was deleted, overwritten or expired",
            hint=_GONE_HINT,
        )
    return record


def _verified_whole(store: Store, record: CheckpointRecord, entry: FileEntry) -> Iterator[bytes]:
    """A whole file, checked against the manifest while it streams. The last chunk is held back
    until size and checksum are confirmed: on a mismatch ``verified_chunks`` raises first, the
    response ends short of its Content-Length, and no client takes damaged bytes for a complete
    file. (A ranged response cannot be verified here; it is served raw.)"""
    held: bytes | None = None
    for chunk in verified_chunks(store.blobs, record.blob_prefix, entry):
        if held is not None:
            yield held
        held = chunk
    if held is not None:
        yield held


_SIG_QUERY = {"exp": Query(default=None), "sig": Query(default=None)}


@router.get("/signed/{version_id}/archive.tar")
@router.head("/signed/{version_id}/archive.tar", include_in_schema=False)
def signed_archive(
    version_id: str,
    request: Request,
    store: StoreDep,
    exp: str | None = _SIG_QUERY["exp"],
    sig: str | None = _SIG_QUERY["sig"],
) -> Response:
    """The checkpoint's files plus ``checkpoint_complete`` as a tar; honours ``Range``."""
    _signer(request).verify(request.method, archive_path(version_id), version_id, exp, sig)
    record = _live_record(store, version_id)
    manifest = store.manifest(record)
    layout = TarLayout(
        (TarMember(f.path, f.size) for f in manifest.files),
        mtime=int(record.created_at.timestamp()),
    )

    entries = {f.path: f for f in manifest.files}

    def read(relpath: str, start: int, end: int) -> Iterator[bytes]:
        entry = entries[relpath]
        if (start, end) == (0, entry.size):
            return _verified_whole(store, record, entry)
        return store.open_range(record, relpath, start, end)

    return ranged_response(
        request,
        total=layout.total_size,
        etag=f'"{version_id}-tar{LAYOUT_VERSION}"',
        media_type="application/x-tar",
        body=lambda start, end: layout.iter_range(start, end, read),
        filename=f"{record.name}.tar",
    )


@router.get("/signed/{version_id}/files/{relpath:path}")
@router.head("/signed/{version_id}/files/{relpath:path}", include_in_schema=False)
def signed_file(
    version_id: str,
    relpath: str,
    request: Request,
    store: StoreDep,
    exp: str | None = _SIG_QUERY["exp"],
    sig: str | None = _SIG_QUERY["sig"],
) -> Response:
    """One file of a checkpoint, raw; honours ``Range``."""
    _signer(request).verify(request.method, file_path(version_id, relpath), version_id, exp, sig)
    record = _live_record(store, version_id)
    try:
        entry = store.manifest(record).entry(relpath)
    except KeyError:
        raise NotFound(
            f"file {relpath!r} is not part of this checkpoint", hint=_GONE_HINT
        ) from None
    return ranged_response(
        request,
        total=entry.size,
        etag=f'"{version_id}"',
        media_type="application/octet-stream",
        body=lambda start, end: (
            _verified_whole(store, record, entry)
            if (start, end) == (0, entry.size)
            else store.open_range(record, relpath, start, end)
        ),
        filename=relpath.rsplit("/", 1)[-1],
    )
