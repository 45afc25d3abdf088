"""Item 6: one damaged byte in each kind of stored file is caught, and named, by every reader.

Readers: ``Store.read_file`` and ``Store.download_to`` (which must leave nothing at the
destination), ``verify_store`` / ``tinkerstore verify``, and the server's signed downloads,
which must never hand out damaged bytes as a complete, good response.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import (
    FILES,
    add_figure,
    make_run,
    make_user,
    save,
    tinker_path,
)
from tests.reliability.corrupt import DATA_FILE, KINDS, flip_byte, truncate
from tests.server.live import live_server
from tinkerstore.errors import CheckpointCorrupted
from tinkerstore.service import Store, open_store
from tinkerstore.service.verify import verify_store
from tinkerstore.store.format import file_key


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_reader_catches_and_names_the_damage(store: Store, kind: str, tmp_path: Path) -> None:
    damage, named_file, code = KINDS[kind]
    owner = make_user(store, "owner")
    make_run(store, owner)
    intact = save(store, owner, "intact")
    victim = save(store, owner, "victim")
    assert verify_store(store).ok

    damage(store, store.catalog.get_checkpoint(victim.run_id, victim.kind, victim.name))
    victim = store.resolve(owner.principal, tinker_path(victim))

    # Load: one file, and the whole checkpoint (which must leave nothing behind).
    with pytest.raises(CheckpointCorrupted) as excinfo:
        store.read_file(victim, DATA_FILE)
    assert named_file in str(excinfo.value)
    dest = tmp_path / "out" / "victim"
    with pytest.raises(CheckpointCorrupted, match=named_file.replace(".", r"\.")):
        store.download_to(owner.principal, tinker_path(victim), dest)
    assert not dest.exists() and list((tmp_path / "out").glob("*")) == []

    # Verify: exactly this checkpoint and file, with a code that says what happened.
    report = verify_store(store)
    assert [(p.tinker_path, p.file, p.code, p.severity) for p in report.problems] == [
        (tinker_path(victim), named_file, code, "corrupt")
    ]
    # The neighbour is untouched and still loads.
    for relpath, data in FILES.items():
        assert store.read_file(intact, relpath) == data
    add_figure("corruptions caught (store readers + verify)", 3)


def test_quick_verify_sees_sizes_and_manifests_but_not_flipped_bytes(store: Store) -> None:
    """``--quick`` reads no file bytes: documented as missing bit flips inside a file."""
    owner = make_user(store, "owner")
    make_run(store, owner)
    flipped, cut = save(store, owner, "flipped"), save(store, owner, "cut")
    flip_byte(store, file_key(flipped.blob_prefix, DATA_FILE))
    truncate(store, file_key(cut.blob_prefix, DATA_FILE))
    quick = verify_store(store, checksums=False)
    assert [(p.tinker_path, p.code) for p in quick.problems] == [
        (tinker_path(cut), "file_size_mismatch")
    ]
    assert quick.bytes_read == 0
    full = verify_store(store)
    assert {(p.tinker_path, p.code) for p in full.problems} == {
        (tinker_path(cut), "file_size_mismatch"),
        (tinker_path(flipped), "file_checksum_mismatch"),
    }


def _dump(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_verify_changes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = open_store(data_dir)
    owner = make_user(store, "owner")
    make_run(store, owner)
    record = save(store, owner, "victim")
    flip_byte(store, file_key(record.blob_prefix, DATA_FILE))
    pending = store.begin_save(owner.principal, "rel:train:0", record.kind, "half")
    pending.add_file("a.bin", b"half written")  # left pending on purpose
    before = (_dump(data_dir / "catalog.db"), _tree(data_dir / "blobs"))
    report = verify_store(store)
    assert {p.code for p in report.problems} == {"file_checksum_mismatch", "pending_version"}
    assert (_dump(data_dir / "catalog.db"), _tree(data_dir / "blobs")) == before
    store.catalog.close()


def test_signed_downloads_never_pass_damaged_bytes_as_good(tmp_path: Path) -> None:
    """Through a live server: a truncated file must not arrive as a complete response, and a
    file with a flipped byte must not arrive as a complete 200 either (the server verifies the
    checksum while streaming a whole file and cuts the connection before the last chunk)."""
    data_dir = tmp_path / "data"
    store = open_store(data_dir)
    owner = make_user(store, "owner")
    make_run(store, owner)
    cut, flipped = save(store, owner, "cut"), save(store, owner, "flipped")
    truncate(store, file_key(cut.blob_prefix, DATA_FILE))
    flip_byte(store, file_key(flipped.blob_prefix, DATA_FILE))
    store.catalog.close()
    outcomes = {}
    with live_server(data_dir) as server:
        headers = {"X-API-Key": owner.key, "Accept": "application/json"}
        for record in (cut, flipped):
            base = f"{server.url}/api/v1/training_runs/{record.run_id}/checkpoints"
            r = httpx.get(
                f"{base}/{record.kind.value}/{record.name}/external_weights_urls",
                headers=headers,
            )
            assert r.status_code == 200, r.text
            url = r.json()["urls"][DATA_FILE]
            try:
                body = httpx.get(url, timeout=30)
                outcomes[record.name] = (body.status_code, body.content == FILES[DATA_FILE])
            except httpx.HTTPError as exc:  # cut short: the client cannot take it as good
                outcomes[record.name] = (type(exc).__name__, False)
            # The intact files of the same checkpoint still download fine.
            good = httpx.get(r.json()["urls"]["adapter_config.json"], timeout=30)
            assert good.status_code == 200 and good.content == FILES["adapter_config.json"]
    assert outcomes["cut"][0] != 200, outcomes
    add_figure("corruptions caught (server downloads)", 1)
    # A same-size file with a flipped byte never arrives as a complete, good download.
    assert outcomes["flipped"][0] != 200, outcomes
    add_figure("corruptions caught (server downloads)", 1)
