"""A real server subprocess (``python -m tinkerstore serve``) on a free
loopback port, for the SDK suites, the replica tests and the large-download measurement.

``store_env(kind, dir)`` gives the environment of a server on one of the test backends:
``sqlite-fs`` is the embedded default under ``TINKERSTORE_DATA_DIR``; ``pg-s3`` a fresh
PostgreSQL database and S3 prefix (skips loudly without services, fails under CI)."""

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
from typing import Any

import httpx

from tests.support.backends import make_urls

SERVER_BACKENDS = ("sqlite-fs", "pg-s3")
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
def store_env(kind: str, data_dir: Path) -> Iterator[dict[str, str]]:
    """Environment variables that point a server (or ``open_store_env``) at a ``kind`` store."""
    if kind == "sqlite-fs":
        yield {}
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    with make_urls(kind, data_dir) as (db, blobs):
        yield {"TINKERSTORE_DATABASE_URL": db, "TINKERSTORE_BLOB_URL": blobs}


def open_store_env(data_dir: Path, env: dict[str, str]) -> Any:
    """The store a server started with ``env`` and ``data_dir`` uses (for seeding and checks)."""
    from tinkerstore.service import open_store

    return open_store(
        data_dir,
        database_url=env.get("TINKERSTORE_DATABASE_URL"),
        blob_url=env.get("TINKERSTORE_BLOB_URL"),
    )


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
