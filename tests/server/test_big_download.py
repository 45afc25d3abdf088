"""A 1 GiB checkpoint through a real server: the archive starts streaming at once, the server's
memory does not grow with the size, and a resume from near the end is immediate.

Prints first-byte time and throughput (loopback) for the record; the only timing assertion is
"first byte well under a second".
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.server.live import live_server
from tinkerstore.service import open_store
from tinkerstore.types.paths import CheckpointKind

GIB = 1024**3
CHUNK = 8 * 1024 * 1024
pytestmark = pytest.mark.slow


def _seed(data_dir: Path) -> str:
    store = open_store(data_dir)
    _, key = store.create_api_key("alice")
    alice = store.authenticate(key)
    store.create_run(alice, "big:train:0", base_model="m", lora_config={"rank": 8})
    block = bytes(range(256)) * (CHUNK // 256)
    with store.begin_save(alice, "big:train:0", CheckpointKind.WEIGHTS, "huge") as save:
        save.add_file("adapter_config.json", b'{"r": 8}')
        with save.open_file("adapter_model.safetensors") as out:
            for _ in range(GIB // CHUNK):
                out.write(block)
        save.commit()
    store.catalog.close()
    return key


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_one_gib_archive_streams_at_once_in_constant_memory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = _seed(data_dir)
    with live_server(data_dir) as live:
        headers = {"X-API-Key": key, "Accept": "application/json"}
        ckpt = f"{live.url}/api/v1/training_runs/big:train:0/checkpoints/weights/huge"
        url = httpx.get(f"{ckpt}/archive", headers=headers).json()["url"]
        httpx.get(url, headers={"Range": "bytes=0-0"})  # warm the server's code paths
        baseline = psutil.Process(live.proc.pid).memory_info().rss
        with RssSampler(live.proc.pid) as rss, httpx.stream("GET", url, timeout=120) as r:
            started = time.perf_counter()
            it = r.iter_raw(1024 * 1024)
            first = next(it)
            first_byte = time.perf_counter() - started
            total = len(first) + sum(len(chunk) for chunk in it)
            elapsed = time.perf_counter() - started
            length = int(r.headers["content-length"])
        assert total == length > GIB
        assert first_byte < 1.0
        growth = rss.peak - baseline
        assert growth < 100 * 1024 * 1024, f"server RSS grew by {growth / 2**20:.0f} MiB"

        # resume from near the end: answered at once, without reading what came before
        started = time.perf_counter()
        tail = httpx.get(url, headers={"Range": f"bytes={length - 4096}-"})
        resume = time.perf_counter() - started
        assert tail.status_code == 206 and len(tail.content) == 4096
        assert tail.content[-1024:] == b"\0" * 1024  # the end-of-archive blocks
        sys.stderr.write(
            f"\n[1 GiB archive] first byte {first_byte * 1000:.1f} ms, "
            f"{total / elapsed / 2**20:.0f} MiB/s over loopback, RSS growth "
            f"{growth / 2**20:.1f} MiB, tail resume {resume * 1000:.1f} ms\n"
        )
