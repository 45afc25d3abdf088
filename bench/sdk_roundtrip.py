"""Benchmark 6: ``save_state(...).result()`` and ``load_state(...).result()`` through the real
SDK against ``tinkerstore serve``, vs a store-level save of the same number of bytes.

Needs the trainer and its training endpoints: when ``POST /api/v1/create_model`` is not served
the benchmark is recorded as skipped ("not available yet") instead of failing. The base model
is ``TINKERSTORE_BENCH_BASE_MODEL``, else the first one the server lists in
``get_server_capabilities``, else the reference trainer's built-in ``tiny-qwen3``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import httpx
import numpy as np

from bench.common import Config, Skip, case, row, sdk_python
from bench.fixtures import sqlite_fs_store
from bench.servers import tinkerstore_server

__all__ = ["run"]

_DEFAULT_MODEL = "tiny-qwen3"

_SCRIPT = r"""
import json, sys, time
import tinker
base_url, api_key, base_model, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sc = tinker.ServiceClient(base_url=base_url, api_key=api_key)
tc = sc.create_lora_training_client(base_model=base_model, rank=8).result()
out = {"save": [], "load": []}
path = None
for i in range(runs + 1):  # the first round is the warm-up
    t = time.perf_counter(); path = tc.save_state(f"bench-rt-{i}").result().path
    save = time.perf_counter() - t
    t = time.perf_counter(); tc.load_state(path).result()
    load = time.perf_counter() - t
    if i:
        out["save"].append(save); out["load"].append(load)
rc = sc.create_rest_client()
run_id = path.split("/")[2]
sizes = [c.size_bytes for c in rc.list_checkpoints(run_id).result().checkpoints if c.size_bytes]
out["size_bytes"] = max(sizes) if sizes else 0
print(json.dumps(out))
"""


def _base_model(base_url: str, key: str) -> str:
    if os.environ.get("TINKERSTORE_BENCH_BASE_MODEL"):
        return os.environ["TINKERSTORE_BENCH_BASE_MODEL"]
    resp = httpx.get(f"{base_url}/api/v1/get_server_capabilities", headers={"X-API-Key": key})
    models = resp.json().get("supported_models", []) if resp.status_code == 200 else []
    if not models:
        # ``tinkerstore serve`` lists none by default; the reference trainer ships this one.
        return _DEFAULT_MODEL
    first = models[0]
    return str(first.get("model_name", first) if isinstance(first, dict) else first)


def _served(path: str) -> bool:
    """Whether the app routes ``path`` (checked in-process: no server start needed to skip)."""
    from tinkerstore.server import ServerSettings, create_app
    from tinkerstore.service import open_store

    app = create_app(
        ServerSettings(), open_store(None, database_url="memory://", blob_url="memory://")
    )
    # The OpenAPI paths, not ``app.routes``: included routers may sit there as nested route
    # groups without a ``path`` of their own (newer FastAPI), which read as "not served".
    return path in app.openapi().get("paths", {})


def run(cfg: Config) -> dict[str, Any]:
    python = sdk_python()
    if not _served("/api/v1/create_model"):
        raise Skip(
            "not available yet: POST /api/v1/create_model is not served by this build "
            "(the trainer endpoints land later)"
        )
    data_dir = cfg.workdir / "data"
    bench = sqlite_fs_store(data_dir)
    bench.close()
    with tinkerstore_server(data_dir) as srv:
        probe = httpx.post(
            f"{srv.base_url}/api/v1/create_model",
            json={},
            headers={"X-API-Key": bench.api_key},
            timeout=30,
        )
        if probe.status_code in (404, 405) and "create_model" not in probe.text:
            raise Skip(
                "not available yet: POST /api/v1/create_model is not served by this build "
                f"(HTTP {probe.status_code}); the trainer endpoints land later"
            )
        model = _base_model(srv.base_url, bench.api_key)
        proc = subprocess.run(
            [str(python), "-c", _SCRIPT, srv.base_url, bench.api_key, model, str(cfg.runs)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"SDK round trip failed:\n{proc.stderr[-2000:]}")
        sdk = json.loads(proc.stdout.strip().splitlines()[-1])

    size = int(sdk["size_bytes"]) or 1
    local = sqlite_fs_store(cfg.workdir / "local")
    blob = np.random.default_rng(6).bytes(size)
    store_saves = []
    for i in range(cfg.runs + 1):
        t0 = time.perf_counter()
        rec = local.save(blob, f"rt-{i}")
        if i:
            store_saves.append(time.perf_counter() - t0)
        local.forget_blobs(rec)
    local.close()
    rows = [
        row("SDK save_state().result()", sdk["save"]),
        row("SDK load_state().result()", sdk["load"]),
        row("store-level save, same bytes", store_saves),
    ]
    c = case(
        f"SDK round trip ({size:,} bytes, base model {model})",
        "s",
        rows,
        reference="SDK save_state().result()",
        lower_is_better=True,
        ratio_label="SDK save ÷ this row (speed)",
    )
    return {
        "cases": [c],
        "notes": [
            "SDK runs and store-level runs are sequential, not "
            "interleaved (the SDK client lives in its own venv)"
        ],
    }
