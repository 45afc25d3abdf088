"""A checkpoint as a plain tar archive, computed from its manifest, never built.

Because the manifest knows every file's size, the archive is a deterministic function of
``(manifest, mtime)``: each member is a ustar/pax header, the file's bytes, zero padding to the
next 512-byte block; the ``checkpoint_complete`` marker is the last member; two zero blocks end
the archive. So ``Content-Length`` is known before the first byte, and any byte range maps to
(header bytes | file bytes at an offset | padding) with a bisect, without reading anything
else. The server streams straight from the blob store: memory stays O(number of files) whatever
the checkpoint's size, and the first byte leaves at once.

Members are regular files at the archive root (mode 0644, uid/gid 0, no user names), exactly the
checkpoint's relative paths. Long or non-ASCII names get a pax header, which Python's
``tarfile``, GNU tar and bsdtar all read. No links, no directories with odd modes: the SDK's
safe-extract refuses anything but regular files and directories.
"""

from __future__ import annotations

import bisect
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from tinkerstore.errors import CheckpointCorrupted

__all__ = ["COMPLETE_MARKER", "LAYOUT_VERSION", "TarLayout", "TarMember"]

COMPLETE_MARKER = "checkpoint_complete"
LAYOUT_VERSION = 1  # part of the ETag: bump it if the byte layout ever changes
BLOCK = 512
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)

# read(relpath, start, end) yields the file's bytes [start, end)
Reader = Callable[[str, int, int], Iterable[bytes]]


@dataclass(frozen=True)
class TarMember:
    path: str
    size: int


@dataclass(frozen=True)
class _Segment:
    start: int
    length: int
    literal: bytes | None  # header or padding bytes
    path: str | None = None  # file bytes of this member


def _header(path: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


class TarLayout:
    """The byte layout of the archive of ``members`` (plus the marker, unless already there)."""

    def __init__(self, members: Iterable[TarMember], *, mtime: int) -> None:
        members = list(members)
        marker = [m for m in members if m.path == COMPLETE_MARKER]
        ordered = [m for m in members if m.path != COMPLETE_MARKER]
        # A checkpoint that already holds the marker keeps its own bytes, still placed last.
        ordered.append(marker[0] if marker else TarMember(COMPLETE_MARKER, 0))
        self.members = tuple(ordered)
        self._segments: list[_Segment] = []
        offset = 0
        for member in self.members:
            offset = self._add(offset, _header(member.path, member.size, mtime), None)
            if member.size:
                offset = self._add(offset, None, member.path, member.size)
                pad = -member.size % BLOCK
                if pad:
                    offset = self._add(offset, b"\0" * pad, None)
        offset = self._add(offset, END_OF_ARCHIVE, None)
        self.total_size = offset
        self._starts = [s.start for s in self._segments]

    def _add(self, offset: int, literal: bytes | None, path: str | None, size: int = 0) -> int:
        length = len(literal) if literal is not None else size
        self._segments.append(_Segment(offset, length, literal, path))
        return offset + length

    def iter_range(self, start: int, end: int, read: Reader) -> Iterator[bytes]:
        """Yield the archive bytes ``[start, end)``; file bytes come from ``read``."""
        if not 0 <= start <= end <= self.total_size:
            raise ValueError(f"range [{start}, {end}) outside archive of {self.total_size} bytes")
        index = max(bisect.bisect_right(self._starts, start) - 1, 0)
        pos = start
        while pos < end:
            seg = self._segments[index]
            lo = pos - seg.start
            hi = min(seg.length, end - seg.start)
            if seg.literal is not None:
                yield seg.literal[lo:hi]
            else:
                assert seg.path is not None
                need, got = hi - lo, 0
                chunks = iter(read(seg.path, lo, hi))
                try:
                    for chunk in chunks:
                        chunk = chunk[: need - got]
                        got += len(chunk)
                        if chunk:
                            yield chunk
                        if got == need:
                            break
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
                if got != need:
                    # Storage holds fewer bytes than the manifest promised: stop the stream
                    # rather than shift every later byte of the archive.
                    raise CheckpointCorrupted(
                        f"file {seg.path!r} is shorter on storage than its manifest says",
                        hint="restore the checkpoint from a backup or delete it",
                    )
            pos = seg.start + hi
            index += 1
