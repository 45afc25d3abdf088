"""Benchmark 4: one page of 100 checkpoints, from a run and from a user, at growing sizes.

One catalog per size (10k, 100k, 1M checkpoints of one user in one run; quick mode 10k/20k),
populated in bulk (``bench.populate``), so the sizes are measured interleaved rather than one
after the other while a database grows. Latency per call: in-process (``Store`` methods) and
over HTTP (one ``tinkerstore serve`` per catalog, a keep-alive client); p50 and p99 over all
calls. Throughput: wrk, 2 connections per core, on the run's list endpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import httpx

from bench.common import Config, case, fresh_postgres_database, interleave, pg_s3_env, row
from bench.fixtures import BenchStore, sqlite_fs_store
from bench.populate import bulk_add_checkpoints
from bench.servers import Server, tinkerstore_server
from bench.timing import percentile
from tinkerstore.service import open_store

__all__ = ["run"]


def _label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def _timed_call(fn: Callable[[], object]) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    return once


def _getter(client: httpx.Client, path: str) -> Callable[[], None]:
    return lambda: client.get(path).raise_for_status() and None


def _latency_case(
    title: str, samples: dict[str, list[float]], reference: str, cfg: Config
) -> dict[str, Any]:
    rows = [row(k, v, p50=percentile(v, 50), p99=percentile(v, 99)) for k, v in samples.items()]
    c = case(
        title,
        "ms",
        rows,
        reference=reference,
        lower_is_better=True,
        ratio_label=f"p50 ÷ p50 at {reference} (slowdown)",
    )
    for r in c["rows"]:
        r["note"] = f"p99 {r['p99']:.2f} ms"
    biggest = c["rows"][-1]
    if biggest["variant"] != reference:
        c["target"] = {
            "text": f"{biggest['variant']} within 1.5x of {reference} (p50)",
            "value": biggest["ratio"],
            "met": biggest["ratio"] is not None and biggest["ratio"] <= 1.5,
        }
    return c


def _wrk(server: Server, path: str, key: str, seconds: int) -> float:
    exe = shutil.which("wrk")
    assert exe is not None
    conns = 2 * (os.cpu_count() or 1)
    out = subprocess.run(
        [
            exe,
            f"-t{min(conns, os.cpu_count() or 1)}",
            f"-c{conns}",
            f"-d{seconds}s",
            "-H",
            f"X-API-Key: {key}",
            server.base_url + path,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if match is None or non2xx is not None:
        raise RuntimeError(f"wrk failed or got errors:\n{out[-800:]}")
    return float(match.group(1))


def _backend(
    cfg: Config, label: str, urls: dict[int, tuple[str | None, str | None]], stack: ExitStack
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Populate one catalog per size, then measure. ``urls``: size → (db URL, blob URL), None
    for the embedded default under a data dir."""
    stores: dict[str, BenchStore] = {}
    dirs = {}
    t0 = time.perf_counter()
    for n, (db, blobs) in urls.items():
        data_dir = cfg.workdir / f"{label}-{n}"
        dirs[n] = data_dir
        if db is None:
            bench = sqlite_fs_store(data_dir)
            db = f"sqlite:///{data_dir / 'catalog.db'}"
        else:
            from bench.fixtures import _setup

            bench = _setup(open_store(None, database_url=db, blob_url=blobs), label)
            bench.db_url, bench.blob_url = db, blobs
        bulk_add_checkpoints(db, owner_id=bench.principal.user_id, run_id=bench.run_id, count=n)
        stores[_label(n)] = bench
        stack.callback(bench.close)
    populate_s = time.perf_counter() - t0
    ref = _label(min(urls))
    for name, bench in stores.items():  # the counters must agree with the rows we wrote
        page = bench.store.list_checkpoints(bench.principal, bench.run_id, limit=100)
        expected = next(n for n in urls if _label(n) == name)
        if page.total_count != expected or len(page.items) != 100:
            raise RuntimeError(f"{name}: total_count {page.total_count} != {expected}")

    cases = []
    for scope in ("run", "user"):
        calls = {
            name: _timed_call(
                (lambda b=b: b.store.list_checkpoints(b.principal, b.run_id, limit=100))
                if scope == "run"
                else (lambda b=b: b.store.list_user_checkpoints(b.principal, limit=100))
            )
            for name, b in stores.items()
        }
        samples = interleave(calls, cfg.list_samples, warmup=3)
        cases.append(
            _latency_case(f"{label}: page of 100 from a {scope}, in-process", samples, ref, cfg)
        )

    for bench in stores.values():
        bench.close()  # each server is the one writer of its catalog
    # Started in parallel: each start is seconds of imports on a loaded machine.
    managers = {
        _label(n): tinkerstore_server(
            d, database_url=stores[_label(n)].db_url, blob_url=stores[_label(n)].blob_url
        )
        for n, d in dirs.items()
    }
    with ThreadPoolExecutor(len(managers)) as pool:
        futures = {name: pool.submit(cm.__enter__) for name, cm in managers.items()}
    servers: dict[str, Server] = {}
    for name, fut in futures.items():
        if fut.exception() is None:
            stack.push(managers[name])
            servers[name] = fut.result()
    for fut in futures.values():
        fut.result()  # re-raise a failed start, after the others are registered for cleanup
    paths = {
        "run": "/api/v1/training_runs/bench-run/checkpoints?limit=100",
        "user": "/api/v1/checkpoints?limit=100",
    }
    for scope, path in paths.items():
        calls = {}
        for name, srv in servers.items():
            client = stack.enter_context(
                httpx.Client(
                    base_url=srv.base_url, headers={"X-API-Key": stores[name].api_key}, timeout=60
                )
            )

            calls[name] = _timed_call(_getter(client, path))
        samples = interleave(calls, cfg.list_samples, warmup=3)
        cases.append(_latency_case(f"{label}: page of 100 from a {scope}, HTTP", samples, ref, cfg))

    if shutil.which("wrk") is None:
        return cases, {
            "populate_seconds": round(populate_s, 1),
            "wrk": "not run: wrk is not installed (Debian: apt-get install -y wrk)",
        }
    for scope, path in paths.items():
        reqs = interleave(
            {
                name: (lambda s=srv, p=path, k=stores[name].api_key: _wrk(s, p, k, cfg.wrk_seconds))
                for name, srv in servers.items()
            },
            cfg.wrk_runs or cfg.runs,
            warmup=0,
        )
        rows = [row(k, v) for k, v in reqs.items()]
        c = case(
            f"{label}: wrk, {scope} list endpoint",
            "req/s",
            rows,
            reference=ref,
            lower_is_better=False,
            ratio_label=f"req/s at {ref} ÷ this row",
        )
        c["extra"] = {
            "connections": 2 * (os.cpu_count() or 1),
            "seconds": cfg.wrk_seconds,
            "server": next(iter(servers.values())).how,
        }
        cases.append(c)
    return cases, {"populate_seconds": round(populate_s, 1)}


def run(cfg: Config) -> dict[str, Any]:
    notes = []
    extra: dict[str, Any] = {}
    with ExitStack() as stack:
        sizes = {n: (None, None) for n in cfg.list_sizes}
        cases, extra["sqlite"] = _backend(cfg, "sqlite", sizes, stack)
    env = pg_s3_env()
    if env is None:
        notes.append("PostgreSQL variant not run: TINKERSTORE_TEST_DATABASE_URL unset")
    else:
        try:
            with ExitStack() as stack:
                pg_urls: dict[int, tuple[str | None, str | None]] = {}
                for n in cfg.list_sizes:
                    db = stack.enter_context(fresh_postgres_database(env[0]))
                    pg_urls[n] = (db, f"{env[1].rstrip('/')}/bench-list-{n}")
                more, extra["postgresql"] = _backend(cfg, "pg+s3", pg_urls, stack)
                cases += more
        except Exception as exc:
            notes.append(f"PostgreSQL variant not run: {type(exc).__name__}: {exc}")
    for key, value in extra.items():
        if isinstance(value.get("wrk"), str):
            notes.append(f"{key}: wrk {value['wrk']}")
        notes.append(f"{key}: populating took {value['populate_seconds']} s in all")
    return {"cases": cases, "notes": notes, "populate": extra}
