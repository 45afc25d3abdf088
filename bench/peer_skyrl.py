"""Benchmark 7 (``--peer skyrl``, full mode only): SkyRL's Tinker server side by side.

Uses the scripts in ``/work/shared/peers/skyrl`` (or ``TINKERSTORE_BENCH_SKYRL_DIR``):
``setup.sh`` (~2 min, PyPI) and ``start.sh fresh`` under a scratch ``SKYRL_HOME``. With the
SDK 0.25 venv that setup makes, it saves sampler checkpoints, then measures per-run list
latency and the archive download (first byte, throughput) with curl. SkyRL only archives
sampler checkpoints and reads a whole archive into memory before sending it (see the README
there), so its archive here is its real (small) LoRA tarball. Anything that fails is recorded
as "not run: reason".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.common import Config, Skip, row
from bench.servers import curl_download

__all__ = ["run"]

_MEASURE = r"""
import json, sys, time
import tinker
sc = tinker.ServiceClient(base_url="http://127.0.0.1:8000", api_key="tml-dummy")
rc = sc.create_rest_client()
tc = sc.create_lora_training_client(base_model=sys.argv[1], rank=8)
for i in range(10):
    tc.save_weights_for_sampler(f"bench-sw{i}").result()
run = tc.model_id
lat = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); rc.list_checkpoints(run).result(); lat.append(time.perf_counter() - t)
url = rc.get_checkpoint_archive_url(run, "bench-sw0").result().url
print(json.dumps({"list_s": lat, "archive_url": url}))
"""


def _sh(script: Path, home: Path, timeout: int, *args: str) -> None:
    env = {**os.environ, "SKYRL_HOME": str(home)}
    subprocess.run(
        ["bash", str(script), *args], env=env, check=True, timeout=timeout, capture_output=True
    )


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
        _sh(home / "start.sh", home, 300, "fresh")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        tail = getattr(exc, "stderr", b"") or b""
        raise Skip(f"not run: SkyRL setup/start failed: {exc}; {tail[-300:]!r}") from None
    try:
        sdk = home / "sdk" / "bin" / "python"
        proc = subprocess.run(
            [str(sdk), "-c", _MEASURE, str(home / "model"), str(cfg.runs * 4)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            raise Skip(f"not run: SkyRL measurement failed: {proc.stderr[-400:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        downloads = [curl_download(out["archive_url"]) for _ in range(cfg.runs)]
    finally:
        try:
            _sh(home / "stop.sh", home, 120)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
    rows_list = [
        row("SkyRL list_checkpoints (SDK 0.25, 10 checkpoints)", [x * 1e3 for x in out["list_s"]])
    ]
    rows_dl = [
        row(
            "SkyRL archive first byte",
            [d[0] * 1e3 for d in downloads],
            note=f"{downloads[0][2]:,} bytes",
        ),
        row("SkyRL archive throughput (MiB/s)", [d[2] / 2**20 / d[1] for d in downloads]),
    ]
    cases = [
        {
            "case": "SkyRL: per-run list latency",
            "unit": "ms",
            "lower_is_better": True,
            "reference": rows_list[0]["variant"],
            "ratio_label": "-",
            "rows": rows_list,
            "target": None,
            "extra": {},
        },
        {
            "case": "SkyRL: archive download (its real sampler tarball)",
            "unit": "",
            "lower_is_better": True,
            "reference": rows_dl[0]["variant"],
            "ratio_label": "-",
            "rows": rows_dl,
            "target": None,
            "extra": {},
        },
    ]
    for c in cases:
        for r in c["rows"]:
            r["ratio"] = None
    return {"cases": cases, "notes": ["compare with benchmarks 3 and 4 of this same run"]}
