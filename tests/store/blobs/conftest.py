"""Fixtures for the blob store contract: one ``store`` per implementation.

The S3 variant runs against a real server (SeaweedFS: ``source scripts/services.sh start``)
when ``TINKERSTORE_TEST_S3_URL``, ``AWS_ENDPOINT_URL`` and the AWS credentials are set. Without
them it skips loudly, and under ``CI`` it fails: a green CI run must have exercised S3.
Each test gets its own fresh prefix in the bucket, removed afterwards.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinkerstore.store.blobs import FileBlobStore, MemoryBlobStore, open_blobs

S3_ENV = (
    "TINKERSTORE_TEST_S3_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def _require_s3() -> str:
    missing = [name for name in S3_ENV if not os.environ.get(name)]
    if missing:
        msg = (
            f"S3 BLOB STORE TESTS NOT RUN: {', '.join(missing)} unset. "
            "Run `source scripts/services.sh start` to start SeaweedFS and set them."
        )
        if os.environ.get("CI"):
            pytest.fail(msg)
        sys.stderr.write(f"\n*** SKIPPING: {msg} ***\n")
        pytest.skip(msg)
    return os.environ["TINKERSTORE_TEST_S3_URL"].rstrip("/")


@pytest.fixture(scope="session")
def s3_base() -> Any:
    """One S3 store (and so one boto3 client) for the session, built the way users build it."""
    from tinkerstore.store.blobs.s3 import S3BlobStore

    store = open_blobs(_require_s3())
    assert isinstance(store, S3BlobStore)
    return store


def _wipe(store: Any) -> None:
    """Delete every object and abandoned multipart upload under the store's own prefix."""
    client, bucket, prefix = store.client, store.bucket, store.prefix + "/"
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    for up in uploads:
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


@pytest.fixture
def s3_store(s3_base: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    from tinkerstore.store.blobs.s3 import S3BlobStore

    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    prefix = f"{s3_base.prefix}/{name}-{uuid.uuid4().hex[:12]}"
    store = S3BlobStore(s3_base.bucket, prefix, client=s3_base.client)
    yield store
    _wipe(store)


@pytest.fixture
def fs_store(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "root")


@pytest.fixture(params=["memory", "fs", "s3"])
def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "memory":
        return MemoryBlobStore()
    if request.param == "fs":
        return request.getfixturevalue("fs_store")
    return request.getfixturevalue("s3_store")
