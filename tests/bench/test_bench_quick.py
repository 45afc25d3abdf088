"""Smoke test of the benchmark suite: every benchmark still runs and writes well-formed results.

It runs ``python -m bench --tiny`` (the smallest sizes) and checks the JSON and Markdown it
writes. It never judges speed: the numbers of a loaded CI machine mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXPECTED = {"save", "load", "download", "list", "tensordata", "sdk_roundtrip"}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench-out")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "tiny.json").read_text()), (out / "tiny.md").read_text()


def _number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_every_benchmark_ran_or_says_why_not(results: tuple[dict, str]) -> None:
    data, _ = results
    entries = {b["name"]: b for b in data["benchmarks"]}
    assert set(entries) == EXPECTED
    for name, entry in entries.items():
        assert entry["status"] in ("ok", "skipped"), (
            name,
            entry.get("reason"),
            entry.get("traceback"),
        )
        if entry["status"] == "skipped":
            assert entry["reason"], name
    # These need nothing beyond the project's own environment, so they must really run.
    for name in ("save", "load", "download", "list"):
        assert entries[name]["status"] == "ok", name
        assert entries[name]["cases"], name


def test_cases_carry_medians_and_ratios(results: tuple[dict, str]) -> None:
    data, _ = results
    for entry in data["benchmarks"]:
        for c in entry["cases"]:
            assert c["rows"] and c["reference"] in {r["variant"] for r in c["rows"]}
            for r in c["rows"]:
                assert all(_number(r[k]) for k in ("median", "min", "max")), (c["case"], r)
                assert r["min"] <= r["median"] <= r["max"]
                assert r["n"] == len(r["runs"]) >= 1
                if r["variant"] == c["reference"] and c["ratio_label"] != "-":
                    assert r["ratio"] == 1.0
                assert r["ratio"] is None or _number(r["ratio"])


def test_machine_and_markdown(results: tuple[dict, str]) -> None:
    data, markdown = results
    machine = data["machine"]
    assert machine["cores"] >= 1 and machine["python"] and machine["kernel"]
    assert data["mode"] == "tiny" and data["runs_per_variant"] >= 2
    assert "| variant | median | min | max | ratio | note |" in markdown
    for entry in data["benchmarks"]:
        assert f"### {entry['title']}" in markdown
