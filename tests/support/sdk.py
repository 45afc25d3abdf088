"""Locate and drive the official ``tinker`` SDK, one virtualenv per supported version.

The SDK venvs live in ``$TINKERSTORE_SDK_VENVS`` (default: ``<repo>/.venvs``) as ``sdk-0.25`` and
``sdk-0.38``; ``scripts/test`` creates them. Each test that needs the SDK runs a small driver
script with that venv's interpreter, so both versions are exercised for real, side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SDK_VERSIONS = ("0.25", "0.38")


def venv_dir() -> Path:
    return Path(os.environ.get("TINKERSTORE_SDK_VENVS", REPO / ".venvs"))


def sdk_python(version: str) -> Path:
    """The interpreter of the SDK venv for ``version``; fails (in CI) or skips loudly."""
    python = venv_dir() / f"sdk-{version}" / "bin" / "python"
    if not python.exists():
        msg = f"SDK venv for tinker {version} missing at {python}: run scripts/test to create it"
        if os.environ.get("CI"):
            pytest.fail(msg)
        sys.stderr.write(f"\n*** SKIPPING: {msg} ***\n")
        pytest.skip(msg)
    return python


def run_sdk_script(
    version: str,
    code: str,
    *,
    stdin: Any = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> Any:
    """Run ``code`` in the SDK venv. ``stdin`` (if given) is passed as JSON on standard input;
    the script prints one JSON document as its last stdout line, which is returned decoded."""
    full_env = {**os.environ, "TINKER_TELEMETRY": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.run(
        [str(sdk_python(version)), "-c", textwrap.dedent(code)],
        input=None if stdin is None else json.dumps(stdin),
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"SDK {version} script failed (rc={proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-8000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None
