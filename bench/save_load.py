"""Benchmarks 1 and 2: save a state through the store (committed, durable) and load it back
with every checksum verified, against writing/reading the same bytes by hand.

Save: ours is ``begin_save → add_file → commit`` of the state's safetensors bytes (blob fsync'd
and renamed, manifest fsync'd, catalog commit with ``synchronous=FULL``). Baselines: raw
``write + fsync`` of the same bytes (the limit), ``safetensors.numpy.save_file`` + fsync and
``torch.save`` + fsync (both serialize from the tensors, so "ours + serialize" is shown too).

Load: ours is ``Store.read_file`` (bytes, XXH3-128 checked against the manifest, manifest
checked against the catalog's SHA-256). Baselines: reading the same file's bytes, and
``safetensors.numpy.load_file``. Warm (page cache hot) and cold (each file evicted with
``posix_fadvise(DONTNEED)`` before each run) are separate cases.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import MIB, Config, case, drop_file_cache, interleave, pg_s3_env, row
from bench.fixtures import (
    FILE_NAME,
    BenchStore,
    make_state,
    pg_s3_store,
    sqlite_fs_store,
    state_bytes,
)
from tinkerstore.store.format import file_key

__all__ = ["run_load", "run_save"]

OURS = "tinkerstore"


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n < 1024 * MIB else f"{n // (1024 * MIB)} GiB"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _timed(fn: Callable[[], Any], cleanup: Callable[[Any], None] | None = None) -> float:
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    if cleanup is not None:
        cleanup(out)
    return elapsed


def _stores(cfg: Config, stack: ExitStack, notes: list[str], sub: str) -> list[BenchStore]:
    stores = [sqlite_fs_store(cfg.workdir / sub / "store")]
    stack.callback(stores[0].close)
    env = pg_s3_env()
    if env is None:
        notes.append(
            "PostgreSQL+S3 variant not run: TINKERSTORE_TEST_DATABASE_URL / "
            "TINKERSTORE_TEST_S3_URL / AWS_ENDPOINT_URL unset "
            "(source scripts/services.sh start)"
        )
    else:
        try:
            stores.append(stack.enter_context(pg_s3_store(*env)))
        except Exception as exc:  # a missing service must not cost the other results
            notes.append(f"PostgreSQL+S3 variant not run: {type(exc).__name__}: {exc}")
    return stores


def _name(store: BenchStore) -> str:
    return OURS if store.label == "sqlite+fs" else f"{OURS} ({store.label})"


def _save_case(stores: list[BenchStore], size: int, scratch: Path, runs: int) -> dict[str, Any]:
    import safetensors.numpy
    import torch

    state = make_state(size)
    blob = state_bytes(state)
    tstate = {k: torch.from_numpy(v) for k, v in state.items()}
    target = scratch / "baseline.bin"

    def raw_write() -> None:
        with open(target, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    def st_save() -> None:
        safetensors.numpy.save_file(state, str(target))
        _fsync_path(target)

    def torch_save() -> None:
        torch.save(tstate, target)
        _fsync_path(target)

    def file_variant(fn: Callable[[], None]) -> Callable[[], float]:
        return lambda: _timed(fn, lambda _: target.unlink())

    def store_variant(bs: BenchStore, serialize: bool = False) -> Callable[[], float]:
        def go() -> Any:
            return bs.save(safetensors.numpy.save(state) if serialize else blob)

        return lambda: _timed(go, bs.forget_blobs)

    variants = {_name(bs): store_variant(bs) for bs in stores}
    variants["tinkerstore + safetensors serialize"] = store_variant(stores[0], serialize=True)
    variants["raw write + fsync"] = file_variant(raw_write)
    variants["safetensors save_file + fsync"] = file_variant(st_save)
    variants["torch.save + fsync"] = file_variant(torch_save)
    results = interleave(variants, runs)
    rows = [
        row(k, v, mib_per_s=round(len(blob) / MIB / statistics.median(v), 1))
        for k, v in results.items()
    ]
    c = case(f"save {_size(size)}", "s", rows, reference=OURS, lower_is_better=True)
    raw_ratio = next(r["ratio"] for r in c["rows"] if r["variant"] == "raw write + fsync")
    c["target"] = {
        "text": ">= 0.9x raw write + fsync",
        "value": raw_ratio,
        "met": raw_ratio is not None and raw_ratio >= 0.9,
    }
    c["extra"] = {"bytes": len(blob), "tensors": len(state)}
    return c


def run_save(cfg: Config) -> dict[str, Any]:
    notes: list[str] = []
    scratch = cfg.workdir / "save"
    scratch.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stores = _stores(cfg, stack, notes, "save")
        cases = [_save_case(stores, size, scratch, cfg.runs) for size in cfg.save_sizes]
    return {"cases": cases, "notes": notes}


def _load_cases(
    stores: list[BenchStore], size: int, scratch: Path, runs: int
) -> list[dict[str, Any]]:
    from safetensors.numpy import load_file

    blob = state_bytes(make_state(size))
    nbytes = len(blob)
    plain = scratch / "plain.safetensors"
    with open(plain, "wb") as f:
        f.write(blob)
        os.fsync(f.fileno())
    records = {bs.label: bs.save(blob, f"load-{size}") for bs in stores}
    del blob
    local = stores[0].store.blobs.local_path  # type: ignore[attr-defined]
    ours_file = local(file_key(records["sqlite+fs"].blob_prefix, FILE_NAME))

    def ours(bs: BenchStore, cold: bool) -> Callable[[], float]:
        def once() -> float:
            if cold:
                drop_file_cache(ours_file)
            rec = records[bs.label]
            return _timed(lambda: len(bs.store.read_file(rec, FILE_NAME)))

        return once

    def raw(cold: bool) -> Callable[[], float]:
        def once() -> float:
            if cold:
                drop_file_cache(plain)
            return _timed(lambda: len(plain.read_bytes()))

        return once

    def st_load(cold: bool) -> Callable[[], float]:
        def go() -> int:
            # Touch one byte per page of every tensor, so nothing stays lazy.
            tensors = load_file(str(plain))
            return sum(int(t.view(np.uint8)[::4096].sum()) for t in tensors.values())

        def once() -> float:
            if cold:
                drop_file_cache(plain)
            return _timed(go)

        return once

    cases = []
    for cold in (False, True):
        # No page cache of ours to drop on S3: its variant runs warm only.
        variants = {_name(bs): ours(bs, cold) for bs in stores if not cold or bs is stores[0]}
        variants["raw read"] = raw(cold)
        variants["safetensors load_file (every byte)"] = st_load(cold)
        results = interleave(variants, runs)
        rows = [
            row(k, v, mib_per_s=round(nbytes / MIB / statistics.median(v), 1))
            for k, v in results.items()
        ]
        name = f"load + verify {_size(size)} ({'cold' if cold else 'warm'})"
        c = case(name, "s", rows, reference=OURS, lower_is_better=True)
        ratio = next(r["ratio"] for r in c["rows"] if r["variant"] == "raw read")
        c["target"] = {
            "text": ">= 0.8x raw read, checksums included",
            "value": ratio,
            "met": ratio is not None and ratio >= 0.8,
        }
        c["extra"] = {"bytes": nbytes}
        cases.append(c)
    plain.unlink()
    for bs in stores:
        bs.forget_blobs(records[bs.label])
    return cases


def run_load(cfg: Config) -> dict[str, Any]:
    notes = [
        "cold = posix_fadvise(DONTNEED) on the file before each run (host caches below "
        "the VM may still hold it); warm = page cache hot"
    ]
    scratch = cfg.workdir / "load"
    scratch.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stores = _stores(cfg, stack, notes, "load")
        cases = []
        for size in cfg.save_sizes:
            cases += _load_cases(stores, size, scratch, cfg.runs)
    return {"cases": cases, "notes": notes}
