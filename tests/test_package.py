"""Package-level rules: dependency direction, public surface, nothing ever unpickled."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tinkerstore"

# Which packages each layer may import from tinkerstore (types -> store -> service -> rest).
ALLOWED = {
    "types": {"types", "errors"},
    "store": {"types", "errors", "store"},
    "service": {"types", "errors", "store", "service", "trainer"},
    "trainer": {"types", "errors", "trainer"},
    "client": {"types", "errors", "client"},
    "server": {"types", "errors", "store", "service", "server", "trainer"},
    "cli": {"types", "errors", "store", "service", "server", "client", "cli", "trainer"},
}


def imported_tinkerstore_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "tinkerstore" and len(parts) > 1:
                found.add(parts[1].removesuffix(".py"))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_dependencies_flow_one_way(layer: str) -> None:
    for path in (SRC / layer).rglob("*.py"):
        extra = imported_tinkerstore_packages(path) - ALLOWED[layer] - {"__version__"}
        assert not extra, f"{path.relative_to(SRC)} imports {sorted(extra)}"


def test_nothing_is_ever_unpickled() -> None:
    pattern = re.compile(
        r"\bimport pickle\b|\bfrom pickle\b|\bpickle\.loads?\b|\btorch\.load\(|"
        r"\bjoblib\b|\bdill\b|\bcloudpickle\b|\bnp\.load\([^)]*allow_pickle\s*=\s*True"
    )
    offenders = [
        f"{p.relative_to(SRC)}:{i + 1}: {line.strip()}"
        for p in SRC.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines())
        if pattern.search(line)
    ]
    assert offenders == []


def test_every_module_declares_its_public_names() -> None:
    missing = [
        str(p.relative_to(SRC))
        for p in SRC.rglob("*.py")
        if not p.name.endswith("_pb2.py")
        and p.read_text().strip()
        and "__all__" not in p.read_text()
        and p.name != "__main__.py"
    ]
    assert missing == []


def test_top_level_all_is_sorted_and_importable() -> None:
    import tinkerstore

    assert list(tinkerstore.__all__) == sorted(tinkerstore.__all__)
    for name in tinkerstore.__all__:
        assert hasattr(tinkerstore, name)
