"""``python -m bench``: run the benchmark suite, print it, write JSON + a Markdown table.

    python -m bench                  full mode (the issue's sizes; the 1 GiB cases take a while)
    python -m bench --quick          under 2 minutes, median of 3 (a smoke test, never pass/fail)
    python -m bench --only save,list a subset (names: see --help)
    python -m bench --peer skyrl     also run SkyRL's Tinker server side by side (full mode)

Run it from the repository root (``PYTHONPATH=src`` when the package is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import REPO, Config, Skip, config_for, machine_info

__all__ = ["BENCHMARKS", "main", "run_suite"]


def _lazy(module: str, func: str) -> Callable[[Config], dict[str, Any]]:
    def call(cfg: Config) -> dict[str, Any]:
        mod = __import__(f"bench.{module}", fromlist=[func])
        result: dict[str, Any] = getattr(mod, func)(cfg)
        return result

    return call


# name → (title, runner). Imports are lazy so one broken module costs one entry, not the run.
BENCHMARKS: dict[str, tuple[str, Callable[[Config], dict[str, Any]]]] = {
    "save": ("1. Save a state (committed, durable)", _lazy("save_load", "run_save")),
    "load": ("2. Load + verify a state", _lazy("save_load", "run_load")),
    "download": ("3. Download over loopback HTTP (signed URL)", _lazy("download", "run")),
    "list": ("4. List one page of 100", _lazy("listing", "run")),
    "tensordata": ("5. TensorData encode/decode vs the official SDK", _lazy("tensordata", "run")),
    "sdk_roundtrip": ("6. SDK save_state/load_state round trip", _lazy("sdk_roundtrip", "run")),
    "peer_skyrl": ("7. Peer: SkyRL's Tinker server", _lazy("peer_skyrl", "run")),
}


def _print_entry(entry: dict[str, Any]) -> None:
    from bench.report import text_lines

    for line in text_lines(entry):
        print(line, flush=True)


def run_suite(cfg: Config, names: list[str]) -> dict[str, Any]:
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "schema": 1,
        "mode": cfg.mode,
        "started_at": started.isoformat(),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "machine": machine_info(cfg.workdir),
        "runs_per_variant": cfg.runs,
        "benchmarks": [],
    }
    for name in names:
        title, runner = BENCHMARKS[name]
        print(f"\n== {title} ==", flush=True)
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"name": name, "title": title}
        sub = cfg.workdir / name
        sub.mkdir(parents=True, exist_ok=True)
        try:
            out = runner(Config(**{**cfg.__dict__, "workdir": sub}))
            entry.update(status="ok", cases=out.get("cases", []), notes=out.get("notes", []))
            entry.update({k: v for k, v in out.items() if k not in ("cases", "notes")})
        except Skip as exc:
            entry.update(status="skipped", reason=str(exc), cases=[], notes=[])
        except Exception as exc:  # a broken benchmark is reported, the others still run
            tb = traceback.format_exc()
            entry.update(
                status="error",
                reason=f"{type(exc).__name__}: {exc}",
                cases=[],
                notes=[],
                traceback=tb[-4000:],
            )
        finally:
            shutil.rmtree(sub, ignore_errors=True)
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        results["benchmarks"].append(entry)
        _print_entry(entry)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, median of 3 (< 2 min)")
    mode.add_argument("--tiny", action="store_true", help="smallest sizes (the smoke test's)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--peer",
        choices=["skyrl"],
        default=None,
        help="also run a peer server side by side (full mode only)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default bench/results); writes MODE.json + MODE.md",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch directory for stores and files (default: a new temp dir)",
    )
    args = parser.parse_args(argv)

    mode_name = "quick" if args.quick else "tiny" if args.tiny else "full"
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}: choose from {', '.join(BENCHMARKS)}")
    if args.peer is None and not args.only:
        names.remove("peer_skyrl")
    out_dir = args.out or REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="tinkerstore-bench-", dir=args.workdir))
    try:
        cfg = config_for(mode_name, base, args.peer)
        results = run_suite(cfg, names)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    from bench.report import render_markdown

    json_path, md_path = out_dir / f"{mode_name}.json", out_dir / f"{mode_name}.md"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path.write_text(render_markdown(results))
    print(f"\nwrote {json_path} and {md_path} ({results['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
