"""Shared plumbing of the benchmarks: sizes per mode, interleaved runs, result records, machine.

Every case measures ours and its baselines in the same process run, interleaved (A B C, then
C B A, ...), so a slow minute on a shared 2-core machine hits all of them alike; only the
ratios are meant to be compared across machines.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.timing import summarize

__all__ = [
    "MIB",
    "REPO",
    "Config",
    "Skip",
    "case",
    "config_for",
    "drop_file_cache",
    "interleave",
    "machine_info",
    "pg_s3_env",
    "row",
    "sdk_python",
]

MIB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


class Skip(Exception):
    """A benchmark (or one variant) cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class Config:
    mode: str
    runs: int  # interleaved runs per variant (after one warm-up run)
    save_sizes: tuple[int, ...]  # bytes of float32 state saved/loaded
    download_sizes: tuple[int, ...]  # bytes of the served checkpoint
    list_sizes: tuple[int, ...]  # checkpoints of one user in one run
    list_samples: int  # calls per page measurement (p50/p99 come from these)
    wrk_seconds: int
    tensor_sizes: tuple[int, ...]  # elements
    workdir: Path = field(default_factory=lambda: Path("/tmp"))
    peer: str | None = None
    wrk_runs: int = 0  # interleaved wrk runs per size (0: ``runs``)


def config_for(mode: str, workdir: Path, peer: str | None = None) -> Config:
    """``full``: the issue's sizes, median of 5. ``quick``: under 2 minutes, median of 3.
    ``tiny``: the smoke test's (only shows that everything still runs)."""
    if mode == "full":
        return Config(
            "full",
            5,
            (64 * MIB, 1024 * MIB),
            (64 * MIB, 1024 * MIB),
            (10_000, 100_000, 1_000_000),
            300,
            10,
            (1_000, 1_000_000),
            workdir,
            peer,
        )
    if mode == "quick":
        return Config(
            "quick",
            3,
            (64 * MIB,),
            (64 * MIB,),
            (10_000, 20_000),
            100,
            3,
            (1_000, 1_000_000),
            workdir,
            peer,
        )
    if mode == "tiny":
        return Config(
            "tiny",
            2,
            (1 * MIB,),
            (1 * MIB,),
            (200, 400),
            10,
            1,
            (1_000, 10_000),
            workdir,
            None,
            wrk_runs=1,
        )
    raise ValueError(f"unknown mode {mode!r}: use full, quick or tiny")


def interleave(
    variants: dict[str, Callable[[], float]], runs: int, *, warmup: int = 1
) -> dict[str, list[float]]:
    """Run each variant ``runs`` times, alternating the order each round (ABC CBA ABC ...).

    Each callable does one run and returns the value it measured (it does its own untimed
    setup and cleanup). Warm-up runs are discarded: they pay for imports and first touches.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        for name in names if i % 2 == 0 else names[::-1]:
            out[name].append(variants[name]())
    return out


def row(variant: str, values: list[float], *, note: str = "", **extra: Any) -> dict[str, Any]:
    return {"variant": variant, **summarize(values), "note": note, **extra}


def case(
    name: str,
    unit: str,
    rows: list[dict[str, Any]],
    *,
    reference: str,
    lower_is_better: bool,
    ratio_label: str = "ours ÷ this row (speed)",
    invert: bool = False,
    target: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One table of the report. Each row gets ``ratio``: by default how many times faster the
    ``reference`` row (ours) is than that row (so > 1 means ours wins, and a target ">= 0.9x
    raw" reads straight off the raw row). With ``invert`` the ratio is that row against the
    reference instead (used where the rows are sizes of ours, e.g. 1M vs 10k checkpoints)."""
    ref = next(r for r in rows if r["variant"] == reference)
    for r in rows:
        a, b = (r["median"], ref["median"]) if not invert else (ref["median"], r["median"])
        if r["variant"] == reference:
            r["ratio"] = 1.0
        elif a <= 0 or b <= 0:
            r["ratio"] = None
        else:
            r["ratio"] = (a / b) if lower_is_better else (b / a)
    return {
        "case": name,
        "unit": unit,
        "lower_is_better": lower_is_better,
        "reference": reference,
        "ratio_label": ratio_label,
        "rows": rows,
        "target": target,
        "extra": extra or {},
    }


def drop_file_cache(path: Path) -> None:
    """Evict a file's pages from the page cache (it must be clean, i.e. fsync'd): the closest
    to a cold read that needs no root-only ``drop_caches`` and leaves other files alone."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sdk_python() -> Path:
    """The official SDK 0.38's interpreter (its own venv, as the tests use it)."""
    env = os.environ.get("TINKERSTORE_BENCH_SDK_PYTHON")
    path = Path(env) if env else REPO / ".venvs" / "sdk-0.38" / "bin" / "python"
    if not path.exists():
        raise Skip(f"SDK venv not found at {path}: run scripts/test once (it creates .venvs/)")
    return path


def pg_s3_env() -> tuple[str, str] | None:
    """(database URL, S3 URL) when ``scripts/services.sh start`` has set them, else None."""
    db = os.environ.get("TINKERSTORE_TEST_DATABASE_URL")
    s3 = os.environ.get("TINKERSTORE_TEST_S3_URL")
    if db and s3 and os.environ.get("AWS_ENDPOINT_URL"):
        return db, s3
    return None


@contextmanager
def fresh_postgres_database(base_url: str) -> Iterator[str]:
    """A new, empty database on the server of ``base_url``; dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin_url = base_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    head, _, _ = base_url.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _disk(workdir: Path) -> dict[str, Any]:
    """Filesystem, device and free space of the benchmarks' working directory."""
    best = ("", "", "")
    for line in _read("/proc/mounts").splitlines():
        dev, mnt, fstype = line.split()[:3]
        if str(workdir.resolve()).startswith(mnt) and len(mnt) > len(best[1]):
            best = (dev, mnt, fstype)
    dev = Path(best[0]).name
    rotational = _read(f"/sys/block/{dev}/queue/rotational").strip()
    usage = shutil.disk_usage(workdir)
    return {
        "workdir": str(workdir),
        "device": best[0],
        "mount": best[1],
        "fstype": best[2],
        "rotational": {"0": False, "1": True}.get(rotational),
        "free_gib": round(usage.free / 2**30, 1),
    }


def machine_info(workdir: Path) -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in _read("/proc/cpuinfo").splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = next(
        (
            int(ln.split()[1])
            for ln in _read("/proc/meminfo").splitlines()
            if ln.startswith("MemTotal")
        ),
        0,
    )
    from importlib import metadata

    versions: dict[str, str] = {}
    dists = ("numpy", "safetensors", "torch", "uvicorn", "starlette", "sqlalchemy", "xxhash")
    for dist in (*dists, "orjson", "pysimdjson", "protobuf"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    tools = {}
    for tool, args in (("nginx", ["-v"]), ("wrk", ["-v"]), ("curl", ["--version"])):
        exe = shutil.which(tool) or (
            f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None
        )
        if exe is None:
            tools[tool] = "not installed"
            continue
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=10)
        tools[tool] = (
            (proc.stdout + proc.stderr).strip().splitlines()[0]
            if proc.stdout + proc.stderr
            else "?"
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "disk": _disk(workdir),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "packages": versions,
        "tools": tools,
        "loadavg_start": list(os.getloadavg()),
    }
