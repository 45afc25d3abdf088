"""Blob stores: the ``BlobStore`` interface, its three implementations, and ``open_blobs``.

``S3BlobStore`` is imported lazily (``boto3`` is the ``s3`` extra), so importing this package
never needs it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from tinkerstore.errors import InvalidInput
from tinkerstore.store.blobs.base import BlobStore, BlobWriter, check_key
from tinkerstore.store.blobs.fs import FileBlobStore
from tinkerstore.store.blobs.memory import MemoryBlobStore

if TYPE_CHECKING:
    from tinkerstore.store.blobs.s3 import S3BlobStore

__all__ = [
    "BlobStore",
    "BlobWriter",
    "FileBlobStore",
    "MemoryBlobStore",
    "S3BlobStore",
    "check_key",
    "open_blobs",
]

_URL_HINT = "use file:///absolute/path, memory:// or s3://bucket/prefix"


def __getattr__(name: str) -> Any:
    if name == "S3BlobStore":
        from tinkerstore.store.blobs.s3 import S3BlobStore

        return S3BlobStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_blobs(url: str, **opts: Any) -> BlobStore:
    """Open the blob store a URL names.

    - ``file:///abs/path``: ``FileBlobStore`` rooted there (created if missing).
    - ``memory://``: a fresh ``MemoryBlobStore`` (gone with the process).
    - ``s3://bucket/prefix``: ``S3BlobStore``. The endpoint is ``opts["endpoint_url"]``, else
      ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (boto3's own variables), else AWS itself;
      credentials and region come the usual boto3 way (environment, config files, roles).
      Other ``opts`` go to ``S3BlobStore`` (``part_size``, ``region_name``, ``client``...).
    """
    parts = urlsplit(url)
    if parts.scheme == "memory":
        if parts.netloc or parts.path or opts:
            raise InvalidInput(f"blob store URL {url!r}: memory:// takes no path or options")
        return MemoryBlobStore()
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/") or opts:
            raise InvalidInput(
                f"blob store URL {url!r} is not a local absolute path",
                hint="write file:///absolute/path (three slashes)",
            )
        return FileBlobStore(path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise InvalidInput(f"blob store URL {url!r} names no bucket", hint=_URL_HINT)
        try:
            from tinkerstore.store.blobs.s3 import S3BlobStore
        except ImportError as exc:
            raise InvalidInput(
                f"blob store URL {url!r} needs boto3, which is not installed",
                hint="pip install 'tinkerstore[s3]'",
            ) from exc
        endpoint = (
            opts.pop("endpoint_url", None)
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        return S3BlobStore(parts.netloc, unquote(parts.path), endpoint_url=endpoint, **opts)
    raise InvalidInput(f"unknown blob store URL {url!r}", hint=_URL_HINT)
