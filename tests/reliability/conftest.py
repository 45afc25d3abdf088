"""Shared pieces of the reliability suite: real stores on every backend, users, saves, and the
one knob every test reads to scale itself up (``TINKERSTORE_RELIABILITY_SCALE``, see
docs/reliability.md).

Every test under this directory carries the ``reliability`` marker, so ``pytest -m reliability``
runs the suite alone and ``-m 'not reliability'`` skips it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.backends import BACKENDS, make_store
from tinkerstore.service import Principal, Store
from tinkerstore.store.catalog.base import CheckpointRecord
from tinkerstore.types.paths import CheckpointKind

HERE = Path(__file__).resolve().parent
RUN = "rel:train:0"
FILES = {
    "adapter_config.json": b'{"r": 8, "lora_alpha": 16}',
    "adapter_model.safetensors": bytes(range(256)) * 64,
    "nested/notes.txt": b"reliability",
}


def scale() -> float:
    """Multiplier for durations and counts: 1 in CI, e.g. 10 for a long local soak."""
    return float(os.environ.get("TINKERSTORE_RELIABILITY_SCALE", "1"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with make_store(request.param, tmp_path) as s:
        yield s


@dataclass
class User:
    name: str
    key: str
    principal: Principal


def make_user(store: Store, name: str) -> User:
    _, key = store.create_api_key(name)
    return User(name, key, store.authenticate(key))


def make_run(store: Store, user: User, run_id: str = RUN) -> None:
    store.create_run(user.principal, run_id, base_model="tiny", lora_config={"rank": 4})


def save(
    store: Store,
    user: User,
    name: str,
    kind: CheckpointKind = CheckpointKind.WEIGHTS,
    run_id: str = RUN,
    files: dict[str, bytes] | None = None,
    **options: object,
) -> CheckpointRecord:
    return store.save_files(user.principal, run_id, kind, name, files or FILES, **options)


def tinker_path(record: CheckpointRecord) -> str:
    return f"tinker://{record.run_id}/{record.kind.value}/{record.name}"


# -- figures ----------------------------------------------------------------------------------
# Tests add what they measured (kills survived, requests served, inputs fuzzed, corruptions
# caught); the session prints the totals and, if TINKERSTORE_RELIABILITY_FIGURES names a file,
# writes them there as JSON for docs/reliability.md.
FIGURES: dict[str, float] = {}


def add_figure(name: str, value: float) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + value


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("reliability figures")
        for name, value in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {value:g}")
    target = os.environ.get("TINKERSTORE_RELIABILITY_FIGURES")
    if target and FIGURES:
        import json

        Path(target).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
