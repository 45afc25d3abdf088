"""The tar archive as a function of the manifest: valid tar, every byte range consistent."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from tinkerstore.errors import CheckpointCorrupted
from tinkerstore.server.tarstream import COMPLETE_MARKER, TarLayout, TarMember


def _reader(files: dict[str, bytes], calls: list[tuple[str, int, int]] | None = None):  # type: ignore[no-untyped-def]
    def read(path: str, start: int, end: int):  # type: ignore[no-untyped-def]
        if calls is not None:
            calls.append((path, start, end))
        data = files[path][start:end]
        for i in range(0, len(data), 7):  # odd chunk sizes on purpose
            yield data[i : i + 7]

    return read


def _layout(files: dict[str, bytes]) -> TarLayout:
    return TarLayout([TarMember(p, len(d)) for p, d in files.items()], mtime=1_700_000_000)


FILES = {
    "adapter_config.json": b'{"r": 8}',
    "adapter_model.safetensors": bytes(random.Random(1).randbytes(5000)),
    "sub/dir/" + "n" * 150 + ".bin": b"long name",
    "ünïcødé.txt": b"pax header",
    "empty": b"",
    "exact-block": b"x" * 512,
}


def test_archive_is_a_plain_tar_of_exactly_the_files_plus_marker() -> None:
    layout = _layout(FILES)
    data = b"".join(layout.iter_range(0, layout.total_size, _reader(FILES)))
    assert len(data) == layout.total_size and layout.total_size % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [*FILES, COMPLETE_MARKER]
        for m in members:
            assert m.isreg() and m.mode == 0o644 and m.uid == 0 and m.mtime == 1_700_000_000
            assert tar.extractfile(m).read() == FILES.get(m.name, b"")  # type: ignore[union-attr]


def test_same_manifest_same_bytes() -> None:
    a = b"".join(_layout(FILES).iter_range(0, _layout(FILES).total_size, _reader(FILES)))
    b = b"".join(_layout(FILES).iter_range(0, _layout(FILES).total_size, _reader(FILES)))
    assert a == b


def test_every_range_matches_the_whole() -> None:
    layout = _layout(FILES)
    whole = b"".join(layout.iter_range(0, layout.total_size, _reader(FILES)))
    rng = random.Random(7)
    cuts = [0, 1, 511, 512, 513, layout.total_size - 1, layout.total_size]
    cuts += [rng.randrange(layout.total_size + 1) for _ in range(60)]
    for a in cuts:
        for b in rng.sample(cuts, 8):
            lo, hi = min(a, b), max(a, b)
            assert b"".join(layout.iter_range(lo, hi, _reader(FILES))) == whole[lo:hi]


def test_a_range_reads_only_the_files_it_covers() -> None:
    layout = _layout(FILES)
    calls: list[tuple[str, int, int]] = []
    # the first 512 bytes are the first header: no file is read at all
    b"".join(layout.iter_range(0, 512, _reader(FILES, calls)))
    assert calls == []
    # a range inside the big file reads just that slice of it
    start = 512 + 512 + 512 + 100  # header, config (+padding), header, 100 bytes in
    b"".join(layout.iter_range(start, start + 50, _reader(FILES, calls)))
    assert calls == [("adapter_model.safetensors", 100, 150)]


def test_existing_marker_is_kept_and_placed_last() -> None:
    files = {COMPLETE_MARKER: b"done", "a": b"1"}
    layout = _layout(files)
    data = b"".join(layout.iter_range(0, layout.total_size, _reader(files)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["a", COMPLETE_MARKER]
        assert tar.extractfile(COMPLETE_MARKER).read() == b"done"  # type: ignore[union-attr]


def test_short_storage_stops_the_stream() -> None:
    files = {"a": b"12345"}
    layout = TarLayout([TarMember("a", 10)], mtime=0)
    with pytest.raises(CheckpointCorrupted, match="shorter"):
        b"".join(layout.iter_range(0, layout.total_size, _reader(files)))


def test_out_of_bounds_range_is_refused() -> None:
    layout = _layout({"a": b"1"})
    with pytest.raises(ValueError):
        list(layout.iter_range(0, layout.total_size + 1, _reader({"a": b"1"})))
