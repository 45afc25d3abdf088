"""The BlobStore contract (``tinkerstore.store.blobs.base``), run against every implementation.

``store`` is parametrized over memory / fs / s3 (see ``conftest.py``); tests named ``test_fs_*``
and ``test_s3_*`` cover what only one implementation promises (fsync order, disk full, orphan
temp files, presigned URLs, multipart uploads).
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from tinkerstore.errors import InvalidInput, InvalidPath, StorageFull, Unavailable
from tinkerstore.store.blobs import FileBlobStore, MemoryBlobStore, open_blobs

MiB = 1024 * 1024


def pattern(n: int, seed: int = 0) -> bytes:
    """Bytes that differ at every offset (a misplaced chunk shows), cheap to make."""
    block = hashlib.sha256(seed.to_bytes(8, "little")).digest() * 4099  # 131168 B, odd period
    reps = n // len(block) + 1
    return (block * reps)[:n]


def read_all(store: Any, key: str, start: int = 0, end: int | None = None) -> bytes:
    chunks = list(store.open_range(key, start, end))
    assert all(0 < len(c) <= MiB for c in chunks), [len(c) for c in chunks]
    return b"".join(chunks)


def tree(path: Path) -> dict[str, bytes | None]:
    """Every path under ``path`` with its bytes (files) or None (dirs)."""
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(path.rglob("*"))
    }


@contextmanager
def s3_calls(store: Any) -> Iterator[list[str]]:
    """Record the name of every S3 API call the store's client makes."""
    calls: list[str] = []

    def hook(**kwargs: Any) -> None:
        calls.append(kwargs["model"].name)

    events = store.client.meta.events
    events.register("before-call.s3", hook)
    try:
        yield calls
    finally:
        events.unregister("before-call.s3", hook)


@contextmanager
def no_calls() -> Iterator[list[str]]:
    yield []


# -- writing -----------------------------------------------------------------------------------


def test_write_commit_read_back(store: Any) -> None:
    data = pattern(3 * MiB + 17)
    w = store.writer("v/one/files/adapter_model.safetensors")
    # bytes, memoryview and a memoryview over a buffer we overwrite right after: the store must
    # have taken its copy (or written it out) by the time write() returns.
    w.write(data[:10])
    w.write(memoryview(data)[10 : 2 * MiB])
    scratch = bytearray(data[2 * MiB :])
    w.write(memoryview(scratch))
    scratch[:] = b"\xff" * len(scratch)
    w.write(b"")
    assert w.commit() == len(data)
    assert store.get("v/one/files/adapter_model.safetensors") == data
    assert store.size("v/one/files/adapter_model.safetensors") == len(data)
    assert store.exists("v/one/files/adapter_model.safetensors")
    assert read_all(store, "v/one/files/adapter_model.safetensors") == data


def test_many_small_chunks(store: Any) -> None:
    data = pattern(200_000, seed=3)
    w = store.writer("v/x/f")
    for i in range(0, len(data), 977):
        w.write(data[i : i + 977])
    assert w.commit() == len(data)
    assert store.get("v/x/f") == data


def test_nothing_visible_before_commit(store: Any) -> None:
    w = store.writer("v/pending/manifest.json")
    w.write(b"{}" * 1000)
    assert not store.exists("v/pending/manifest.json")
    with pytest.raises(FileNotFoundError):
        store.get("v/pending/manifest.json")
    assert list(store.list_prefixes("v/")) == []
    w.commit()
    assert store.get("v/pending/manifest.json") == b"{}" * 1000
    assert [p for p, _ in store.list_prefixes("v/")] == ["v/pending/"]


def test_abort_leaves_nothing(store: Any) -> None:
    w = store.writer("v/gone/f")
    w.write(pattern(9 * MiB))  # more than one S3 part: a multipart upload is under way
    w.abort()
    w.abort()  # idempotent
    assert not store.exists("v/gone/f")
    assert list(store.list_prefixes("v/")) == []
    assert list(store.list_prefixes("")) == []
    with pytest.raises(ValueError, match="aborted"):
        w.write(b"x")
    with pytest.raises(ValueError, match="aborted"):
        w.commit()
    if isinstance(store, FileBlobStore):
        assert list((store.root / "tmp").iterdir()) == []
        assert [p.name for p in store.root.iterdir()] == ["tmp"]
    elif not isinstance(store, MemoryBlobStore):  # S3: no parts left behind
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
        assert uploads.get("Uploads", []) == []


def test_writer_is_single_use(store: Any) -> None:
    w = store.writer("v/a/f")
    w.write(b"abc")
    assert w.commit() == 3
    w.abort()  # after commit: a no-op, the blob stays
    assert store.get("v/a/f") == b"abc"
    with pytest.raises(ValueError, match="committed"):
        w.write(b"x")
    with pytest.raises(ValueError, match="committed"):
        w.commit()


def test_concurrent_writers_to_one_key_never_mix(store: Any) -> None:
    a, b = store.writer("v/k/f"), store.writer("v/k/f")
    a.write(b"A" * 1000)
    b.write(b"B" * 1000)
    a.write(b"A" * 1000)
    b.write(b"B" * 500)
    b.commit()
    a.commit()
    assert store.get("v/k/f") in (b"A" * 2000, b"B" * 1500)


# -- small blobs -------------------------------------------------------------------------------


def test_put_get_size_exists(store: Any) -> None:
    assert not store.exists("v/s/manifest.json")
    with pytest.raises(FileNotFoundError):
        store.get("v/s/manifest.json")
    with pytest.raises(FileNotFoundError):
        store.size("v/s/manifest.json")
    store.put("v/s/manifest.json", b'{"format_version": 1}')
    assert store.get("v/s/manifest.json") == b'{"format_version": 1}'
    assert store.size("v/s/manifest.json") == 21
    assert store.exists("v/s/manifest.json")
    assert not store.exists("v/s/manifest")  # no prefix matching
    assert not store.exists("v/s")  # a "directory" is not a blob


def test_empty_blob(store: Any) -> None:
    store.put("v/e/empty", b"")
    assert store.get("v/e/empty") == b""
    assert store.size("v/e/empty") == 0
    assert read_all(store, "v/e/empty") == b""
    assert read_all(store, "v/e/empty", 0, 10) == b""
    w = store.writer("v/e/empty2")
    assert w.commit() == 0
    assert store.exists("v/e/empty2")


def test_put_if_absent(store: Any) -> None:
    assert store.put_if_absent("v/p/manifest.json", b"first") is True
    assert store.put_if_absent("v/p/manifest.json", b"second") is False
    assert store.get("v/p/manifest.json") == b"first"
    store.put("v/p/other", b"x")
    assert store.put_if_absent("v/p/other", b"y") is False
    assert store.get("v/p/other") == b"x"
    if isinstance(store, FileBlobStore):
        assert list((store.root / "tmp").iterdir()) == []


def test_put_if_absent_race_has_one_winner(store: Any) -> None:
    barrier = threading.Barrier(6)

    def attempt(i: int) -> bool:
        barrier.wait()
        return bool(store.put_if_absent("v/race/manifest.json", f"writer {i}".encode()))

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(attempt, range(6)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert store.get("v/race/manifest.json") == f"writer {winner}".encode()


# -- ranges ------------------------------------------------------------------------------------


def test_ranges(store: Any) -> None:
    size = 2 * MiB + 5
    data = pattern(size, seed=1)
    store.put("v/r/f", data)
    cases = [
        (0, None),
        (0, size),
        (0, 1),
        (1, 2),
        (MiB - 1, MiB + 1),  # across a chunk boundary
        (size - 1, None),
        (size - 1, size),
        (10, size + 100),  # end past the end: clamped
        (0, 0),  # empty ranges
        (7, 7),
        (size, size),
        (size, None),  # start at or past the end: empty, not an error
        (size + 10, None),
        (size + 10, size + 20),
        (9, 3),  # inverted: empty
    ]
    for start, end in cases:
        assert read_all(store, "v/r/f", start, end) == data[start:end], (start, end)
    with pytest.raises(ValueError):
        read_all(store, "v/r/f", -1, None)


def test_open_range_missing_raises_before_iterating(store: Any) -> None:
    with pytest.raises(FileNotFoundError):
        store.open_range("v/missing/f")  # at the call: the server picks its status from this
    with pytest.raises(FileNotFoundError):
        store.open_range("v/missing/f", 0, 0)
    with pytest.raises(FileNotFoundError):
        store.open_range("v/missing/f", 5, None)


def test_abandoned_range_iterator_is_harmless(store: Any) -> None:
    store.put("v/r/f", pattern(3 * MiB))
    for _ in range(20):  # unstarted and half-read iterators must not pin files or connections
        it = store.open_range("v/r/f")
        it2 = store.open_range("v/r/f", 5)
        assert len(next(iter(it2))) == MiB
        del it, it2
    assert read_all(store, "v/r/f") == pattern(3 * MiB)


# -- prefixes ----------------------------------------------------------------------------------


def test_delete_prefix(store: Any) -> None:
    for key in ("v/a/manifest.json", "v/a/files/x", "v/a/files/deep/y", "v/ab/files/x", "w/a/z"):
        store.put(key, b"1")
    assert store.delete_prefix("v/a/") == 3
    assert not store.exists("v/a/files/x")
    assert not store.exists("v/a/files/deep/y")
    assert store.exists("v/ab/files/x")  # a sibling sharing the letters, not the prefix
    assert store.exists("w/a/z")
    assert store.delete_prefix("v/a/") == 0
    assert store.delete_prefix("nothing/here/") == 0
    assert [p for p, _ in store.list_prefixes("v/")] == ["v/ab/"]
    for bad in ("", "v/ab", "/", "../", "v//"):
        with pytest.raises(InvalidPath):
            store.delete_prefix(bad)
    assert store.exists("v/ab/files/x")


def test_delete_prefix_many(store: Any) -> None:
    for i in range(30):
        store.put(f"v/many/files/{i:03d}", b"x")
    assert store.delete_prefix("v/many/") == 30
    assert list(store.list_prefixes("v/")) == []


def test_racing_delete_prefix(store: Any) -> None:
    """Two sweepers may delete the same garbage at once: neither may fail."""
    for i in range(20):
        store.put(f"v/raced/files/{i}", b"x")
    barrier = threading.Barrier(4)

    def delete(_: int) -> int:
        barrier.wait()
        return int(store.delete_prefix("v/raced/"))

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(delete, range(4)))
    assert list(store.list_prefixes("v/")) == []
    if hasattr(store, "client"):
        assert sum(counts) >= 20  # S3 deletes of absent keys succeed silently: no exact count
    else:
        assert sum(counts) == 20


def test_list_prefixes(store: Any) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)  # S3 LastModified has 1 s resolution
    store.put("v/one/manifest.json", b"m")
    store.put("v/two/files/deep/f", b"f")
    store.put("v/blob-directly-under-v", b"not a prefix")
    store.put("other/x/y", b"y")
    after = datetime.now(UTC) + timedelta(seconds=2)
    listed = list(store.list_prefixes("v/"))
    assert [p for p, _ in listed] == ["v/one/", "v/two/"]
    for _, when in listed:
        assert when.tzinfo is not None
        assert before <= when <= after, (before, when, after)
    assert [p for p, _ in store.list_prefixes("")] == ["other/", "v/"]
    assert [p for p, _ in store.list_prefixes("v/two/")] == ["v/two/files/"]
    assert list(store.list_prefixes("nothing/")) == []
    for bad in ("v", "/v/", "v/../", "v//"):
        with pytest.raises(InvalidPath):
            list(store.list_prefixes(bad))


# -- key safety --------------------------------------------------------------------------------

BAD_KEYS = [
    "",
    ".",
    "..",
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "/",
    "a/../../b",
    "a/..",
    "a/./b",
    "./a",
    "a//b",
    "a/",
    "a\\b",
    "..\\..\\x",
    "a/\x00/b",
    "x\x00",
]


def test_key_safety(store: Any, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    before = tree(tmp_path)
    operations: list[tuple[str, Callable[[str], object]]] = [
        ("writer", lambda k: store.writer(k)),
        ("put", lambda k: store.put(k, b"x")),
        ("put_if_absent", lambda k: store.put_if_absent(k, b"x")),
        ("get", lambda k: store.get(k)),
        ("open_range", lambda k: list(store.open_range(k))),
        ("size", lambda k: store.size(k)),
        ("exists", lambda k: store.exists(k)),
        ("local_path", lambda k: store.local_path(k)),
        ("presign_get", lambda k: store.presign_get(k, 60)),
        ("delete_prefix", lambda k: store.delete_prefix(k + "/")),
        ("list_prefixes", lambda k: list(store.list_prefixes(k + "/"))),
    ]
    with s3_calls(store) if hasattr(store, "client") else no_calls() as calls:
        for key in BAD_KEYS:
            for name, op in operations:
                with pytest.raises(InvalidPath):
                    op(key)
                    pytest.fail(f"{name}({key!r}) was accepted")
    assert calls == []  # refused before a single request left
    assert tree(tmp_path) == before  # nothing created, changed or removed anywhere


def test_fs_symlink_inside_root_cannot_escape(fs_store: FileBlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (fs_store.root / "v").mkdir()
    (fs_store.root / "v" / "link").symlink_to(outside, target_is_directory=True)
    for op in (
        lambda: fs_store.get("v/link/secret"),
        lambda: fs_store.put("v/link/planted", b"x"),
        lambda: fs_store.writer("v/link/planted"),
        lambda: fs_store.delete_prefix("v/link/"),
        lambda: fs_store.local_path("v/link/secret"),
    ):
        with pytest.raises(InvalidPath, match="outside"):
            op()
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


def test_fs_tmp_is_reserved(fs_store: FileBlobStore) -> None:
    with pytest.raises(InvalidPath, match="reserved"):
        fs_store.put("tmp/x", b"x")
    with pytest.raises(InvalidPath, match="reserved"):
        fs_store.delete_prefix("tmp/")


# -- large blobs, bounded memory ---------------------------------------------------------------


def _stream_large(store: Any, key: str, size: int) -> tuple[str, int]:
    """Write ``size`` bytes in 1 MiB chunks and read them back; return (sha256, peak bytes)."""
    base = pattern(MiB, seed=7)
    want = hashlib.sha256()
    tracemalloc.start()
    try:
        w = store.writer(key)
        for i in range(0, size, MiB):
            chunk = i.to_bytes(8, "little") + base[8 : min(MiB, size - i)]
            want.update(chunk)
            w.write(chunk)
        assert w.commit() == size
        got = hashlib.sha256()
        n = 0
        for chunk in store.open_range(key):
            got.update(chunk)
            n += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == size
    assert got.hexdigest() == want.hexdigest()
    return got.hexdigest(), peak


def test_fs_large_blob_in_bounded_memory(fs_store: FileBlobStore) -> None:
    size = 40 * MiB + 12345
    _, peak = _stream_large(fs_store, "v/big/files/model.safetensors", size)
    assert peak < 6 * MiB, f"peak {peak / MiB:.1f} MiB for a {size / MiB:.0f} MiB blob"
    assert fs_store.size("v/big/files/model.safetensors") == size


def test_s3_large_blob_multipart_in_bounded_memory(s3_store: Any) -> None:
    size = 40 * MiB + 12345  # 5 full 8 MiB parts and a short last one
    with s3_calls(s3_store) as calls:
        _, peak = _stream_large(s3_store, "v/big/files/model.safetensors", size)
    assert calls.count("CreateMultipartUpload") == 1
    assert calls.count("UploadPart") == 6
    assert calls.count("CompleteMultipartUpload") == 1
    assert "PutObject" not in calls
    # One part in the buffer plus the copy handed to botocore, never the whole blob.
    assert peak < 3 * s3_store.part_size, f"peak {peak / MiB:.1f} MiB for {size / MiB:.0f} MiB"
    assert s3_store.size("v/big/files/model.safetensors") == size


def test_s3_small_blob_is_one_put(s3_store: Any) -> None:
    with s3_calls(s3_store) as calls:
        w = s3_store.writer("v/small/f")
        w.write(b"a" * 1000)
        w.write(b"b" * 1000)
        w.commit()
    assert calls == ["PutObject"]
    assert s3_store.get("v/small/f") == b"a" * 1000 + b"b" * 1000


# -- local files and URLs ----------------------------------------------------------------------


def test_local_path(store: Any) -> None:
    store.put("v/l/f", b"local bytes")
    path = store.local_path("v/l/f")
    if isinstance(store, FileBlobStore):
        assert path is not None and path.read_bytes() == b"local bytes"
        assert path.resolve().is_relative_to(store.root)
        with pytest.raises(FileNotFoundError):
            store.local_path("v/l/missing")
    else:
        assert path is None


def test_presign_get_local_stores_return_none(store: Any) -> None:
    store.put("v/u/f", b"x")
    if not hasattr(store, "client"):
        assert store.presign_get("v/u/f", 60) is None


def test_s3_presigned_url_downloads_without_credentials(s3_store: Any) -> None:
    data = pattern(100_000, seed=5)
    s3_store.put("v/u/files/model.safetensors", data)
    s3_store.put("v/u/files/other", b"other")
    url = s3_store.presign_get("v/u/files/model.safetensors", 60)
    assert url is not None and "X-Amz-Signature=" in url and "X-Amz-Algorithm=AWS4" in url
    # httpx knows nothing of AWS credentials: the URL alone must carry the permission.
    resp = httpx.get(url)
    assert resp.status_code == 200 and resp.content == data
    ranged = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == data[10:20]

    sig_at = url.index("X-Amz-Signature=") + len("X-Amz-Signature=")
    flipped = "0" if url[sig_at] != "0" else "1"
    assert httpx.get(url[:sig_at] + flipped + url[sig_at + 1 :]).status_code == 403
    other_key = url.replace("files/model.safetensors", "files/other")
    assert other_key != url and httpx.get(other_key).status_code == 403
    longer = url.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    assert longer != url and httpx.get(longer).status_code == 403


def test_s3_presigned_url_expires(s3_store: Any) -> None:
    s3_store.put("v/u/f", b"soon gone")
    url = s3_store.presign_get("v/u/f", 1)
    assert url is not None
    time.sleep(2.1)
    assert httpx.get(url).status_code == 403


# -- filesystem specifics: durability, disk full, orphans --------------------------------------


def test_fs_commit_fsyncs_file_then_renames_then_fsyncs_dirs(
    fs_store: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    w = fs_store.writer("v/new/files/f")
    w.write(b"durable")
    w.commit()
    root = str(fs_store.root)
    kinds = [(kind, path.removeprefix(root)) for kind, path in events]
    assert kinds[0][0] == "fsync" and kinds[0][1].startswith("/tmp/")  # the temp file's data
    assert kinds[1] == ("rename", "/v/new/files/f")
    # then every directory whose entries changed: the target's and the new dirs' parents
    assert sorted(kinds[2:]) == sorted(
        [("fsync", "/v/new/files"), ("fsync", "/v/new"), ("fsync", "/v"), ("fsync", "")]
    )


def _enospc(*args: Any) -> NoReturn:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_fs_disk_full_during_write(
    fs_store: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = fs_store.writer("v/full/f")
    w.write(b"fits")
    real_write = os.write
    calls = iter([True, False])

    def write(fd: int, data: Any) -> int:
        if next(calls):
            return real_write(fd, data[:3])  # a short write first, then the disk is full
        return _enospc()

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(StorageFull, match="no space left") as info:
        w.write(b"does not fit")
    assert info.value.hint and "free disk space" in info.value.hint
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.undo()
    assert list((fs_store.root / "tmp").iterdir()) == []
    assert not fs_store.exists("v/full/f")
    w.abort()  # safe after the failure
    with pytest.raises(ValueError):
        w.commit()
    fs_store.put("v/full/f", b"after space was freed")  # the store itself is fine
    assert fs_store.get("v/full/f") == b"after space was freed"


def test_fs_disk_full_during_commit(
    fs_store: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = fs_store.writer("v/full/f")
    w.write(b"data")
    monkeypatch.setattr(os, "fsync", _enospc)
    with pytest.raises(StorageFull):
        w.commit()
    monkeypatch.undo()
    assert list((fs_store.root / "tmp").iterdir()) == []
    assert not fs_store.exists("v/full/f")


def test_fs_other_write_errors_propagate_and_clean_up(
    fs_store: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = fs_store.writer("v/eio/f")

    def eio(*args: Any) -> NoReturn:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "write", eio)
    with pytest.raises(OSError) as info:
        w.write(b"x")
    assert info.value.errno == errno.EIO and not isinstance(info.value, StorageFull)
    monkeypatch.undo()
    assert list((fs_store.root / "tmp").iterdir()) == []


def test_fs_cleanup_tmp_removes_only_old_orphans(fs_store: FileBlobStore) -> None:
    orphan = fs_store.writer("v/crashed/f")
    orphan.write(b"left by a crash")
    in_flight = fs_store.writer("v/live/f")
    in_flight.write(b"still writing")
    tmp_files = sorted((fs_store.root / "tmp").iterdir())
    assert len(tmp_files) == 2
    hour_ago = time.time() - 3600
    os.utime(orphan._tmp, (hour_ago, hour_ago))  # as if the crash was an hour ago
    assert fs_store.cleanup_tmp(datetime.now(UTC) - timedelta(minutes=15)) == 1
    assert [p.name for p in (fs_store.root / "tmp").iterdir()] == [in_flight._tmp.name]
    in_flight.commit()  # untouched: still commits
    assert fs_store.get("v/live/f") == b"still writing"
    assert fs_store.cleanup_tmp(datetime.now(UTC) + timedelta(seconds=1)) == 0


def test_fs_cleanup_tmp_removes_half_deleted_prefixes(fs_store: FileBlobStore) -> None:
    # What a crash in the middle of delete_prefix leaves: the prefix already moved into tmp/.
    half = fs_store.root / "tmp" / "0123.deleting"
    (half / "files").mkdir(parents=True)
    (half / "files" / "f").write_bytes(b"x")
    long_ago = time.time() - 3600
    os.utime(half, (long_ago, long_ago))
    assert fs_store.cleanup_tmp(datetime.now(UTC) - timedelta(minutes=15)) == 1
    assert list((fs_store.root / "tmp").iterdir()) == []


def test_fs_list_prefixes_uses_newest_directory_time(fs_store: FileBlobStore) -> None:
    fs_store.put("v/old/files/a", b"a")
    long_ago = time.time() - 7200
    for d in ("v/old", "v/old/files"):
        os.utime(fs_store.root / d, (long_ago, long_ago))
    [(prefix, when)] = fs_store.list_prefixes("v/")
    assert prefix == "v/old/" and abs(when.timestamp() - long_ago) < 1
    fs_store.put("v/old/files/deep/b", b"b")  # a commit two levels down still counts
    [(_, when)] = fs_store.list_prefixes("v/")
    assert abs(when.timestamp() - time.time()) < 5


# -- open_blobs --------------------------------------------------------------------------------


def test_open_blobs_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_blobs("memory://"), MemoryBlobStore)
    fs = open_blobs(f"file://{tmp_path}/data")
    assert isinstance(fs, FileBlobStore) and fs.root == (tmp_path / "data").resolve()
    for bad in ("file://relative/x", "file:relative", "ftp://x/y", "/just/a/path", "s3://"):
        with pytest.raises(InvalidInput):
            open_blobs(bad)

    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = open_blobs("s3://bucket/some/prefix/")
    assert (s3.bucket, s3.prefix) == ("bucket", "some/prefix")  # type: ignore[attr-defined]
    assert s3.client.meta.endpoint_url == "http://127.0.0.1:1"  # type: ignore[attr-defined]
    explicit = open_blobs("s3://b", endpoint_url="http://127.0.0.1:2", part_size=16 * MiB)
    assert explicit.client.meta.endpoint_url == "http://127.0.0.1:2"  # type: ignore[attr-defined]
    assert explicit.part_size == 16 * MiB  # type: ignore[attr-defined]
    url = s3.presign_get("v/x/f", 60)  # signing is local: no server needed
    assert url is not None and url.startswith("http://127.0.0.1:1/bucket/some/prefix/v/x/f?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url


def test_s3_unreachable_endpoint_is_unavailable() -> None:
    s3 = pytest.importorskip("tinkerstore.store.blobs.s3")
    store = s3.S3BlobStore("b", endpoint_url="http://127.0.0.1:1", max_attempts=1)
    with pytest.raises(Unavailable, match="unreachable"):
        store.exists("v/x/f")
    with pytest.raises(Unavailable):
        store.put("v/x/f", b"x")
