"""The on-disk format: exact manifest bytes, golden checkpoints that must keep loading, parsing
limits, and checksum verification that names the bad file."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from tinkerstore.errors import CheckpointCorrupted, InvalidManifest, InvalidPath, TinkerstoreError
from tinkerstore.store.blobs.fs import FileBlobStore
from tinkerstore.store.format import (
    MAX_MANIFEST_BYTES,
    FileEntry,
    Manifest,
    read_manifest,
    verified_chunks,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def golden_store(tmp_path: Path, version: str) -> tuple[FileBlobStore, str, str]:
    """Lay a committed golden checkpoint out in a real blob store, as a server would have."""
    src = GOLDEN / version
    root = tmp_path / "blobs"
    prefix = "v/golden/"
    shutil.copytree(src / "files", root / prefix / "files")
    shutil.copy(src / "manifest.json", root / prefix / "manifest.json")
    return FileBlobStore(root), prefix, (src / "manifest.sha256").read_text().strip()


def test_manifest_bytes_are_exact() -> None:
    src = GOLDEN / "format_v1"
    files = sorted(p for p in (src / "files").rglob("*") if p.is_file())
    entries = [
        FileEntry(
            path=p.relative_to(src / "files").as_posix(),
            size=p.stat().st_size,
            xxh3_128=xxhash.xxh3_128(p.read_bytes()).hexdigest(),
        )
        for p in files
    ]
    built = Manifest.build(
        "tinker://golden:train:0/weights/v1",
        reversed(entries),  # order of arrival does not matter: files are sorted
        {"note": "golden"},
        created_at=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
    )
    assert built.to_bytes() == (src / "manifest.json").read_bytes()


@pytest.mark.parametrize("version", sorted(p.name for p in GOLDEN.iterdir() if p.is_dir()))
def test_every_released_format_version_still_loads_and_verifies(
    tmp_path: Path, version: str
) -> None:
    blobs, prefix, digest = golden_store(tmp_path, version)
    manifest = read_manifest(blobs, prefix, digest)
    for entry in manifest.files:
        data = b"".join(verified_chunks(blobs, prefix, entry))
        assert data == (GOLDEN / version / "files" / entry.path).read_bytes()


def test_flipped_byte_is_caught_and_named(tmp_path: Path) -> None:
    blobs, prefix, digest = golden_store(tmp_path, "format_v1")
    target = tmp_path / "blobs" / prefix / "files" / "adapter_model.safetensors"
    data = bytearray(target.read_bytes())
    data[100] ^= 0x40
    target.write_bytes(bytes(data))
    entry = read_manifest(blobs, prefix, digest).entry("adapter_model.safetensors")
    with pytest.raises(CheckpointCorrupted, match=r"adapter_model\.safetensors"):
        b"".join(verified_chunks(blobs, prefix, entry))


def test_altered_manifest_is_caught(tmp_path: Path) -> None:
    blobs, prefix, digest = golden_store(tmp_path, "format_v1")
    path = tmp_path / "blobs" / prefix / "manifest.json"
    doc = json.loads(path.read_bytes())
    doc["files"][0]["size"] += 1
    path.write_bytes(json.dumps(doc).encode())
    with pytest.raises(CheckpointCorrupted, match=r"manifest\.json"):
        read_manifest(blobs, prefix, digest)


def test_unknown_format_version_is_refused_clearly() -> None:
    raw = (
        (GOLDEN / "format_v1" / "manifest.json")
        .read_bytes()
        .replace(b'"format_version":1', b'"format_version":99')
    )
    with pytest.raises(InvalidManifest, match="format_version 99"):
        Manifest.parse(raw)


def test_oversized_manifest_is_refused_before_parsing() -> None:
    with pytest.raises(InvalidManifest, match="cap"):
        Manifest.parse(b" " * (MAX_MANIFEST_BYTES + 1))


@pytest.mark.parametrize(
    "path", ["../x", "/etc/passwd", "a/../../b", "a\\b", "a//b", ".", "", "a/./b", "x\x00y"]
)
def test_manifest_paths_cannot_escape(path: str) -> None:
    with pytest.raises(InvalidPath):
        FileEntry(path=path, size=1, xxh3_128="0" * 32)


@given(st.binary(max_size=2048))
def test_manifest_parser_never_crashes(raw: bytes) -> None:
    try:
        Manifest.parse(raw)
    except TinkerstoreError:
        pass
