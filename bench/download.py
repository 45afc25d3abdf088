"""Benchmark 3: download a checkpoint over loopback HTTP through its signed URL.

Ours: ``tinkerstore serve`` on a data directory holding one checkpoint; the signed archive URL
comes from ``GET .../checkpoints/{kind}/{name}/archive`` (``Accept: application/json``), the
0.38 per-file URL from ``.../external_weights_urls``. Baselines serve the very same archive
bytes (fetched once through ours) as a static file: nginx (sendfile, one worker) and uvicorn +
Starlette ``FileResponse``. The client is curl for everyone (time to first byte, total time).
Files are warm in the page cache (cold reads are benchmark 2's subject). The server's RSS is
read before the first and after the last download, and sampled every 10 ms in between.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import MIB, Config, Skip, case, interleave, pg_s3_env, row
from bench.fixtures import FILE_NAME, BenchStore, pg_s3_store, sqlite_fs_store
from bench.servers import (
    RssSampler,
    Server,
    curl_download,
    nginx_server,
    rss_bytes,
    starlette_file_server,
    tinkerstore_server,
)

__all__ = ["run", "signed_urls"]

OURS = "tinkerstore archive (signed URL)"
FLAT_RSS_BYTES = 64 * MIB  # "flat": a download may not grow the server by more than this


def signed_urls(server: Server, bench: BenchStore, name: str) -> tuple[str, str]:
    """(archive URL, file URL) as the SDK obtains them (0.25 archive, 0.38 external URLs)."""
    base = f"{server.base_url}/api/v1/training_runs/{bench.run_id}/checkpoints/weights/{name}"
    headers = {"X-API-Key": bench.api_key, "Accept": "application/json"}
    with httpx.Client(headers=headers, timeout=30) as client:
        archive = client.get(f"{base}/archive")
        archive.raise_for_status()
        files = client.get(f"{base}/external_weights_urls")
        files.raise_for_status()
    return archive.json()["url"], files.json()["urls"][FILE_NAME]


def _measure(url: str, *, follow: bool = False) -> Callable[[], tuple[float, float, int]]:
    return lambda: curl_download(url, follow=follow)


@contextmanager
def _ours(bench: BenchStore, data_dir: Path, name: str) -> Iterator[tuple[Server, str, str]]:
    bench.close()  # the server is the one writer of an embedded store
    with tinkerstore_server(data_dir, database_url=bench.db_url, blob_url=bench.blob_url) as srv:
        archive, file_url = signed_urls(srv, bench, name)
        yield srv, archive, file_url


def _one_size(cfg: Config, size: int, notes: list[str]) -> list[dict[str, Any]]:
    work = cfg.workdir / f"size-{size}"
    data_dir = work / "data"
    bench = sqlite_fs_store(data_dir)
    rng = np.random.default_rng(1)
    bench.save(rng.standard_normal(size // 4, dtype=np.float32).tobytes(), "big")

    samples: dict[str, list[tuple[float, float, int]]] = {}
    rss: dict[str, Any] = {}
    with ExitStack() as stack:
        srv, archive_url, file_url = stack.enter_context(_ours(bench, data_dir, "big"))
        rss["before"] = rss_bytes(srv.pid)  # before the first download of all
        served = work / "static"
        served.mkdir()
        static = served / "archive.tar"
        subprocess.run(["curl", "-s", "-o", str(static), archive_url], check=True, timeout=600)
        variants: dict[str, Callable[[], tuple[float, float, int]]] = {
            OURS: _measure(archive_url),
            "tinkerstore file (0.38 signed URL)": _measure(file_url),
        }
        for label, start in (
            ("nginx static file", lambda: nginx_server(served, work)),
            ("uvicorn + Starlette FileResponse", lambda: starlette_file_server(static, work)),
        ):
            try:
                other = stack.enter_context(start())
            except Skip as exc:
                notes.append(f"{label} not run: {exc}")
                continue
            path = "/archive.tar" if label.startswith("nginx") else "/file"
            variants[label] = _measure(other.base_url + path)
        env = pg_s3_env()
        if env is not None:
            try:
                pg = stack.enter_context(pg_s3_store(*env))
                pg.save(static.read_bytes(), "big")
                _, pg_url, _ = stack.enter_context(_ours(pg, work / "pgdata", "big"))
                variants[f"{OURS} (pg+s3)"] = _measure(pg_url, follow=True)
            except Exception as exc:
                notes.append(f"PostgreSQL+S3 variant not run: {type(exc).__name__}: {exc}")
        else:
            notes.append(
                "PostgreSQL+S3 variant not run: TINKERSTORE_TEST_DATABASE_URL / "
                "TINKERSTORE_TEST_S3_URL unset"
            )

        def timed(fn: Callable[[], tuple[float, float, int]], key: str) -> Callable[[], float]:
            def once() -> float:
                result = fn()
                samples.setdefault(key, []).append(result)
                return result[1]

            return once

        with RssSampler(srv.pid) as sampler:
            interleave({k: timed(v, k) for k, v in variants.items()}, cfg.runs)
        rss["peak"], rss["after"] = sampler.peak, rss_bytes(srv.pid)
        how = srv.how

    label = f"{size // MIB} MiB" if size < 1024 * MIB else f"{size // (1024 * MIB)} GiB"
    measured = {k: v[-cfg.runs :] for k, v in samples.items()}  # drop the warm-up
    ttfb = [row(k, [s[0] * 1e3 for s in v]) for k, v in measured.items()]
    tput = [row(k, [s[2] / MIB / s[1] for s in v]) for k, v in measured.items()]
    ours_ttfb = next(r for r in ttfb if r["variant"] == OURS)
    first = case(f"first byte, {label}", "ms", ttfb, reference=OURS, lower_is_better=True)
    first["target"] = {
        "text": "first byte < 50 ms",
        "value": ours_ttfb["median"],
        "met": ours_ttfb["median"] < 50,
    }
    speed = case(f"throughput, {label}", "MiB/s", tput, reference=OURS, lower_is_better=False)
    nginx = next((r for r in speed["rows"] if r["variant"] == "nginx static file"), None)
    if nginx is not None:
        speed["target"] = {
            "text": "throughput >= 0.7x nginx",
            "value": nginx["ratio"],
            "met": nginx["ratio"] is not None and nginx["ratio"] >= 0.7,
        }
    growth = rss["peak"] - rss["before"]
    speed["extra"] = {"server": how, "archive_bytes": measured[OURS][0][2], "server_rss_bytes": rss}
    memory = {
        "case": f"server memory, {label}",
        "unit": "MiB",
        "lower_is_better": True,
        "reference": "tinkerstore RSS before",
        "ratio_label": "-",
        "rows": [
            {
                "variant": f"tinkerstore RSS {k}",
                "median": v / MIB,
                "min": v / MIB,
                "max": v / MIB,
                "n": 1,
                "runs": [v / MIB],
                "ratio": None,
                "note": "",
            }
            for k, v in rss.items()
        ],
        "target": {
            "text": f"flat server memory (peak - before <= {FLAT_RSS_BYTES // MIB} MiB)",
            "value": round(growth / MIB, 1),
            "met": growth <= FLAT_RSS_BYTES,
        },
        "extra": {},
    }
    return [first, speed, memory]


def run(cfg: Config) -> dict[str, Any]:
    notes: list[str] = [
        "ours and the Starlette baseline are one uvicorn process each; nginx has one worker",
    ]
    cases = []
    for size in cfg.download_sizes:
        cases += _one_size(cfg, size, notes)
    return {"cases": cases, "notes": sorted(set(notes), key=notes.index)}
