"""A real server subprocess (``python -m tinkerstore serve``) on a free
loopback port, for the SDK suites and the large-download measurement."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SRC = Path(__file__).resolve().parents[2] / "src"


@dataclass
class LiveServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(data_dir: Path, **env: str) -> Iterator[LiveServer]:
    port = free_port()
    log = data_dir.parent / f"server-{port}.log"
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "TINKERSTORE_DATA_DIR": str(data_dir),
        **env,
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tinkerstore", "serve",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env=full_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/api/v1/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.1)
        yield LiveServer(url, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
