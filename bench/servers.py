"""Child-process servers for the HTTP benchmarks: tinkerstore, nginx, a plain Starlette app.

Each runs on a free loopback port, is waited for until it answers, and is ended (by its own
pid) when the ``with`` block exits. Nothing is started through systemd or left running.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.common import REPO, Skip

__all__ = [
    "RssSampler",
    "Server",
    "curl_download",
    "free_port",
    "nginx_server",
    "rss_bytes",
    "starlette_file_server",
    "tinkerstore_server",
]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base_url: str
    how: str  # how it was launched, for the report

    @property
    def pid(self) -> int:
        return self.proc.pid


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    return env


def _wait(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering:\n{tail}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not answer {url} within {timeout:.0f} s (log: {log})")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@contextmanager
def _running(
    cmd: list[str], url: str, log: Path, health: str, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait(proc, url + health, log)
        yield proc
    finally:
        _stop(proc)


@contextmanager
def tinkerstore_server(
    data_dir: Path,
    *,
    database_url: str | None = None,
    blob_url: str | None = None,
) -> Iterator[Server]:
    """``tinkerstore serve`` on a free port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _env()
    env["TINKERSTORE_DATA_DIR"] = str(data_dir)
    for key, value in (
        ("TINKERSTORE_DATABASE_URL", database_url),
        ("TINKERSTORE_BLOB_URL", blob_url),
    ):
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    log = data_dir.parent / f"server-{port}.log"
    serve = [
        sys.executable,
        "-c",
        "from tinkerstore.cli import main; main()",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    cm = _running(serve, url, log, "/api/v1/healthz", env)
    proc = cm.__enter__()
    how = "tinkerstore serve"
    try:
        yield Server(proc, url, how)
    finally:
        cm.__exit__(None, None, None)


def _nginx() -> str:
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if exe is None:
        raise Skip("nginx is not installed (Debian: apt-get install -y nginx)")
    return exe


@contextmanager
def nginx_server(root: Path, workdir: Path) -> Iterator[Server]:
    """nginx serving ``root`` as static files: one worker (like our one uvicorn process),
    sendfile on, no access log; config, pid and temp paths all under ``workdir``."""
    exe = _nginx()
    prefix = workdir / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""  # workers must read our 0700 temp dirs
    conf.write_text(
        f"""{user}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""
    )
    url = f"http://127.0.0.1:{port}"
    cmd = [exe, "-c", str(conf), "-p", str(prefix)]
    with _running(cmd, url, prefix / "stdout.log", "/", dict(os.environ)) as proc:
        yield Server(proc, url, "nginx " + cmd[0])


@contextmanager
def starlette_file_server(path: Path, workdir: Path) -> Iterator[Server]:
    """uvicorn serving one file through Starlette's ``FileResponse`` (``bench.fileserver``)."""
    port = free_port()
    env = _env()
    env["BENCH_FILE"] = str(path)
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.fileserver:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    url = f"http://127.0.0.1:{port}"
    with _running(cmd, url, workdir / f"fileserver-{port}.log", "/health", env) as proc:
        yield Server(proc, url, "uvicorn + starlette FileResponse")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (from /proc, so no extra dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples a process's RSS every 10 ms in a thread; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def curl_download(url: str, *, follow: bool = False) -> tuple[float, float, int]:
    """GET ``url`` with curl into /dev/null: (seconds to first byte, total seconds, bytes).

    curl is the client for every server alike, so client cost is the same everywhere and
    small (C, no Python in the data path)."""
    exe = shutil.which("curl")
    if exe is None:
        raise Skip("curl is not installed (Debian: apt-get install -y curl)")
    fmt = "%{http_code} %{time_starttransfer} %{time_total} %{size_download}"
    args = [exe, "-s", "-o", "/dev/null", "-w", fmt, *(["-L"] if follow else []), url]
    out = subprocess.run(
        args, capture_output=True, text=True, timeout=600, check=True
    ).stdout.split()
    if out[0] != "200":
        raise RuntimeError(f"GET {url} answered HTTP {out[0]}")
    return float(out[1]), float(out[2]), int(out[3])
