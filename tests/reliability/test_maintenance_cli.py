"""``tinkerstore verify`` and ``tinkerstore sweep`` on a real embedded store (SQLite + files)."""

from __future__ import annotations

import fcntl
import json
from datetime import timedelta
from pathlib import Path

from click.testing import CliRunner

from tests.reliability.conftest import RUN, make_run, make_user, save
from tests.reliability.corrupt import DATA_FILE, flip_byte
from tinkerstore.cli import main
from tinkerstore.service import open_store
from tinkerstore.store.format import file_key
from tinkerstore.types.paths import CheckpointKind


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def make_leftovers(data_dir: Path) -> None:
    """An expired checkpoint, a dead save, orphan bytes and a temp file: what crashes and
    time leave behind."""
    store = open_store(data_dir)
    owner = make_user(store, "owner")
    make_run(store, owner)
    save(store, owner, "keep")
    old = save(store, owner, "old", ttl_seconds=3600)
    store.catalog.set_expiry(RUN, old.kind, old.name, store.now() - timedelta(seconds=1))
    dead = store.begin_save(owner.principal, RUN, CheckpointKind.WEIGHTS, "dead")
    dead.add_file("a.bin", b"never committed")  # the writer "dies": never committed or failed
    store.blobs.put("v/0123456789abcdef0123456789abcdef/files/x.bin", b"orphan")
    (data_dir / "blobs" / "tmp" / "dead-writer.part").write_bytes(b"partial")
    store.catalog.close()


def test_verify_clean_store_exits_0(tmp_path: Path) -> None:
    store = open_store(tmp_path / "d")
    owner = make_user(store, "owner")
    make_run(store, owner)
    save(store, owner, "a")
    store.catalog.close()
    code, out, _ = run_cli("verify", "--data-dir", str(tmp_path / "d"))
    assert code == 0 and "checked 1 checkpoints, 3 files" in out and "clean" in out
    code, out, _ = run_cli("verify", "--json", "--data-dir", str(tmp_path / "d"))
    assert code == 0 and json.loads(out)["ok"] is True


def test_verify_names_checkpoint_and_file_and_exits_1(tmp_path: Path) -> None:
    store = open_store(tmp_path / "d")
    owner = make_user(store, "owner")
    make_run(store, owner)
    record = save(store, owner, "bad")
    flip_byte(store, file_key(record.blob_prefix, DATA_FILE))
    store.catalog.close()
    code, out, err = run_cli("verify", "--data-dir", str(tmp_path / "d"))
    assert code == 1
    assert f"tinker://{RUN}/weights/bad file {DATA_FILE}" in out
    assert "file_checksum_mismatch" in out and "1 problem(s)" in err
    code, out, _ = run_cli("verify", "--json", "--data-dir", str(tmp_path / "d"))
    problem = json.loads(out)["problems"][0]
    assert code == 1 and problem["file"] == DATA_FILE and problem["severity"] == "corrupt"


def test_verify_refuses_a_missing_store_and_creates_nothing(tmp_path: Path) -> None:
    code, _, err = run_cli("verify", "--data-dir", str(tmp_path / "typo"))
    assert code == 1 and "no tinkerstore catalog" in err
    assert not (tmp_path / "typo").exists()


def test_sweep_repairs_what_verify_reports_as_leftovers(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    make_leftovers(data_dir)
    code, out, _ = run_cli("verify", "--json", "--data-dir", str(data_dir))
    assert code == 1
    codes = sorted(p["code"] for p in json.loads(out)["problems"])
    assert codes == ["orphan_prefix", "pending_version", "tmp_leftover"]
    assert all(p["severity"] == "leftover" for p in json.loads(out)["problems"])

    code, out, _ = run_cli("sweep", "--json", "--data-dir", str(data_dir))
    repaired = json.loads(out)
    assert code == 0, out
    assert repaired["sole_writer"] is True
    assert repaired["expired"] == [f"tinker://{RUN}/weights/old"]
    assert repaired["failed_pending"] == 1 and repaired["orphan_prefixes"] == 1
    assert repaired["tmp_files"] == 1 and repaired["garbage_versions"] >= 1

    code, out, _ = run_cli("verify", "--data-dir", str(data_dir))
    assert code == 0, out
    # Sweeping again finds nothing to do (idempotent).
    code, out, _ = run_cli("sweep", "--data-dir", str(data_dir))
    assert code == 0 and "expired 0, failed pending saves 0" in out


def test_sweep_beside_a_running_server_keeps_young_pending_saves(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    make_leftovers(data_dir)
    with open(data_dir / "server.lock", "a") as held:  # what `tinkerstore serve` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, _ = run_cli("sweep", "--json", "--data-dir", str(data_dir))
    repaired = json.loads(out)
    assert code == 0 and repaired["sole_writer"] is False
    assert repaired["expired"] == [f"tinker://{RUN}/weights/old"]
    # A save younger than the pending timeout may be in flight in the server: kept.
    assert repaired["failed_pending"] == 0 and repaired["orphan_prefixes"] == 0
    code, out, _ = run_cli("verify", "--json", "--data-dir", str(data_dir))
    assert "pending_version" in {p["code"] for p in json.loads(out)["problems"]}
