"""Benchmark 7 (``--peer skyrl``, full mode only): SkyRL's Tinker server side by side with ours.

Uses the scripts in ``/work/shared/peers/skyrl`` (or ``TINKERSTORE_BENCH_SKYRL_DIR``):
``setup.sh`` (~2 min, PyPI) and ``start.sh fresh`` under ``SKYRL_HOME`` (default: scratch).
The same official SDK (our test venv's 0.25 when present) drives ``tinkerstore serve`` and
then SkyRL: ten sampler checkpoints, per-run ``list_checkpoints`` latency, and the sampler
archive downloaded with curl (first byte, throughput). SkyRL only archives sampler checkpoints
and reads a whole archive into memory before sending it (see the README there), so the
archives compared are each server's real (small) LoRA tarball. Anything that fails is recorded
as "not run: reason".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.common import REPO, Config, Skip, case, row
from bench.fixtures import sqlite_fs_store
from bench.servers import curl_download, tinkerstore_server

__all__ = ["run"]

_MEASURE = r"""
import json, sys, time
import tinker
base_url, api_key, base_model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sc = tinker.ServiceClient(base_url=base_url, api_key=api_key)
rc = sc.create_rest_client()
tc = sc.create_lora_training_client(base_model=base_model, rank=8)
if not hasattr(tc, "save_weights_for_sampler"):  # newer SDKs return a future of the client
    tc = tc.result()
for i in range(10):
    tc.save_weights_for_sampler(f"bench-sw{i}").result()
run = tc.model_id
rc.list_checkpoints(run).result()  # warm-up
lat = []
for _ in range(n):
    t = time.perf_counter(); rc.list_checkpoints(run).result(); lat.append(time.perf_counter() - t)
# The id as each server lists it ("sampler_weights/bench-sw0" on ours and on Tinker).
ids = [c.checkpoint_id for c in rc.list_checkpoints(run).result().checkpoints]
ckpt = next(c for c in ids if c.endswith("bench-sw0"))
url = rc.get_checkpoint_archive_url(run, ckpt).result().url
print(json.dumps({"list_s": lat, "archive_url": url}))
"""


def _sh(script: Path, home: Path, timeout: int, *args: str) -> None:
    env = {**os.environ, "SKYRL_HOME": str(home)}
    subprocess.run(
        ["bash", str(script), *args], env=env, check=True, timeout=timeout, capture_output=True
    )


def _measure(python: Path, base_url: str, key: str, model: str, cfg: Config) -> dict[str, Any]:
    """Ten sampler saves, then list latency and archive downloads, through ``python``'s SDK."""
    proc = subprocess.run(
        [str(python), "-c", _MEASURE, base_url, key, model, str(cfg.runs * 4)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise Skip(f"not run: measurement against {base_url} failed: {proc.stderr[-400:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    curl_download(out["archive_url"])  # warm-up (our S3-less archive is built on first use)
    out["downloads"] = [curl_download(out["archive_url"]) for _ in range(cfg.runs)]
    return out


def _ours(python: Path, cfg: Config) -> dict[str, Any]:
    """The same measurement against ``tinkerstore serve`` (SQLite + files, reference trainer)."""
    data_dir = cfg.workdir / "ours"
    bench = sqlite_fs_store(data_dir)
    bench.close()
    with tinkerstore_server(data_dir) as srv:
        return _measure(python, srv.base_url, bench.api_key, "tiny-qwen3", cfg)


def run(cfg: Config) -> dict[str, Any]:
    if cfg.peer != "skyrl" or cfg.mode != "full":
        raise Skip("not run: pass --peer skyrl in full mode (a ~2 min install and a JAX model)")
    peers = Path(os.environ.get("TINKERSTORE_BENCH_SKYRL_DIR", "/work/shared/peers/skyrl"))
    if not (peers / "setup.sh").exists():
        raise Skip(f"not run: SkyRL peer scripts not found in {peers}")
    home = Path(os.environ.get("SKYRL_HOME") or cfg.workdir / "skyrl")
    home.mkdir(parents=True, exist_ok=True)
    for name in ("setup.sh", "start.sh", "stop.sh", "uv-shim", "build_model.py"):
        if (peers / name).exists():
            shutil.copy(peers / name, home / name)
    try:
        _sh(home / "setup.sh", home, 1200)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tail = getattr(exc, "stderr", b"") or b""
        raise Skip(f"not run: SkyRL setup failed: {exc}; {tail[-300:]!r}") from None
    # One SDK for both servers: 0.25 (our test venv) does every checkpoint call on SkyRL too
    # (see the README there); else setup's 0.22.2 (older setups made 0.25 as ``sdk``).
    candidates = [REPO / ".venvs" / "sdk-0.25", home / "sdk", home / "sdk022"]
    venv = next((v for v in candidates if (v / "bin" / "python").exists()), candidates[-1])
    python = venv / "bin" / "python"
    ours = _ours(python, cfg)  # before SkyRL starts: its JAX engine would share the 2 cores
    try:
        _sh(home / "start.sh", home, 300, "fresh")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tail = getattr(exc, "stderr", b"") or b""
        raise Skip(f"not run: SkyRL start failed: {exc}; {tail[-300:]!r}") from None
    try:
        skyrl = _measure(python, "http://127.0.0.1:8000", "tml-dummy", str(home / "model"), cfg)
    finally:
        try:
            _sh(home / "stop.sh", home, 120)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
    sides = {"tinkerstore": ours, "SkyRL tx 0.3.0": skyrl}
    ref = "tinkerstore"
    list_rows = [row(k, [x * 1e3 for x in v["list_s"]]) for k, v in sides.items()]
    fb_rows = [
        row(k, [d[0] * 1e3 for d in v["downloads"]], note=f"{v['downloads'][0][2]:,} bytes")
        for k, v in sides.items()
    ]
    tp_rows = [row(k, [d[2] / 2**20 / d[1] for d in v["downloads"]]) for k, v in sides.items()]
    cases = [
        case(
            "per-run list_checkpoints (10 checkpoints)",
            "ms",
            list_rows,
            reference=ref,
            lower_is_better=True,
        ),
        case(
            "sampler archive download, first byte",
            "ms",
            fb_rows,
            reference=ref,
            lower_is_better=True,
        ),
        case(
            "sampler archive download, throughput",
            "MiB/s",
            tp_rows,
            reference=ref,
            lower_is_better=False,
        ),
    ]
    return {
        "cases": cases,
        "notes": [
            f"both servers driven by the same SDK ({venv.name}); ours first, then SkyRL "
            "(sequential, not interleaved: SkyRL's JAX engine would share the cores); SDK wall "
            "time per list call; downloads by curl from each server's signed/archive URL",
            "the archives differ: ours is tiny-qwen3's LoRA (reference trainer), SkyRL's the "
            "tiny random Qwen3 of the peer scripts; at these sizes throughput is latency-bound",
        ],
    }
