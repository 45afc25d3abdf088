"""The checkpoint service on every backend: save/commit, load/verify, list, access, TTL, sweep."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tinkerstore.errors import (
    AlreadyExists,
    CheckpointCorrupted,
    CheckpointNotFound,
    InvalidPath,
    InvalidTTL,
    RunNotFound,
    Unauthenticated,
)
from tinkerstore.service import MAX_TTL_SECONDS, MIN_TTL_SECONDS, Principal, Store
from tinkerstore.store.format import file_key
from tinkerstore.types.paths import CheckpointKind

W, S, E = CheckpointKind.WEIGHTS, CheckpointKind.SAMPLER_WEIGHTS, CheckpointKind.EXTERNAL_WEIGHTS


def new_run(store: Store, who: Principal, run_id: str = "sess1:train:0") -> str:
    store.create_run(who, run_id, base_model="tiny-qwen3", lora_config={"rank": 4})
    return run_id


def save(
    store: Store, who: Principal, run: str, name: str, kind: CheckpointKind = W, **kw: object
) -> str:
    files = {"adapter_model.safetensors": name.encode() * 100, "config/adapter_config.json": b"{}"}
    store.save_files(who, run, kind, name, files, **kw)  # type: ignore[arg-type]
    return f"tinker://{run}/{kind.value}/{name}"


def test_keys_are_hashed_and_authenticate(store: Store) -> None:
    record, key = store.create_api_key("alice", label="laptop")
    assert key.startswith("tml-") and len(key) > 40
    assert key not in record.key_hash and len(record.key_hash) == 64
    assert store.authenticate(key).user_name == "alice"
    for bad in (None, "", "tml-nope", "sk-123", key + "x"):
        with pytest.raises(Unauthenticated):
            store.authenticate(bad)
    store.users.revoke_api_key(record.key_id, store.now())
    with pytest.raises(Unauthenticated, match="revoked"):
        store.authenticate(key)


def test_save_commit_load_round_trip(store: Store, alice: Principal, tmp_path: Path) -> None:
    run = new_run(store, alice)
    with store.begin_save(alice, run, W, "step-1", user_metadata={"k": "v"}) as pending:
        with pending.open_file("big.bin") as f:
            for i in range(5):
                f.write(bytes([i]) * 300_000)
        pending.add_file("small.json", b'{"a": 1}')
        # Before the commit nothing is visible.
        with pytest.raises(CheckpointNotFound):
            store.resolve(alice, pending.tinker_path)
        assert store.list_checkpoints(alice, run).total_count == 0
        record = pending.commit()
    assert record.size_bytes == 1_500_000 + 8
    assert record.user_metadata == {"k": "v"}
    got = store.resolve(alice, "tinker://sess1:train:0/weights/step-1")
    assert got.version_id == record.version_id
    manifest = store.manifest(got)
    assert [f.path for f in manifest.files] == ["big.bin", "small.json"]
    assert store.read_file(got, "small.json") == b'{"a": 1}'
    out = tmp_path / "out"
    store.download_to(alice, got_path(got), out)
    assert (out / "big.bin").read_bytes() == b"".join(bytes([i]) * 300_000 for i in range(5))
    assert sorted(p.name for p in out.iterdir()) == ["big.bin", "small.json"]


def got_path(record: object) -> str:
    r = record
    return f"tinker://{r.run_id}/{r.kind.value}/{r.name}"  # type: ignore[attr-defined]


def test_aborted_and_failed_saves_are_invisible(store: Store, alice: Principal) -> None:
    run = new_run(store, alice)
    with pytest.raises(RuntimeError), store.begin_save(alice, run, W, "boom") as pending:
        pending.add_file("a.bin", b"x" * 10)
        raise RuntimeError("crash in the middle")
    with pytest.raises(CheckpointNotFound):
        store.resolve(alice, f"tinker://{run}/weights/boom")
    assert store.list_checkpoints(alice, run).items == []
    # The name is still free.
    save(store, alice, run, "boom")
    assert store.resolve(alice, f"tinker://{run}/weights/boom")


def test_same_name_refused_without_overwrite_and_swapped_with_it(
    store: Store, alice: Principal
) -> None:
    run = new_run(store, alice)
    path = save(store, alice, run, "ckpt", user_metadata={"v": "1"})
    first = store.resolve(alice, path)
    with pytest.raises(AlreadyExists, match="ckpt"):
        save(store, alice, run, "ckpt")
    # An overwrite in progress leaves the old checkpoint fully readable until its commit.
    with store.begin_save(alice, run, W, "ckpt", overwrite=True) as pending:
        pending.add_file("adapter_model.safetensors", b"new")
        assert (
            store.read_file(store.resolve(alice, path), "adapter_model.safetensors")
            == b"ckpt" * 100
        )
        pending.commit()
    second = store.resolve(alice, path)
    assert second.version_id != first.version_id
    assert store.read_file(second, "adapter_model.safetensors") == b"new"
    assert second.user_metadata == {}  # overwrite replaces the whole metadata mapping
    assert store.list_checkpoints(alice, run).total_count == 1


def test_concurrent_overwrites_never_leave_neither(store: Store, alice: Principal) -> None:
    run = new_run(store, alice)
    path = save(store, alice, run, "hot")
    stop = threading.Event()
    missing: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                store.read_file(store.resolve(alice, path), "adapter_model.safetensors")
            except CheckpointNotFound as exc:
                missing.append(str(exc))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(15):
        store.save_files(
            alice, run, W, "hot", {"adapter_model.safetensors": b"%d" % i}, overwrite=True
        )
    stop.set()
    for t in threads:
        t.join()
    assert missing == []


def test_corruption_is_detected_and_names_the_file(
    store: Store, alice: Principal, tmp_path: Path
) -> None:
    run = new_run(store, alice)
    path = save(store, alice, run, "c1")
    record = store.resolve(alice, path)
    key = file_key(record.blob_prefix, "adapter_model.safetensors")
    data = bytearray(store.blobs.get(key))
    data[7] ^= 0x01
    store.blobs.delete_prefix(key.rsplit("/", 1)[0] + "/")  # rewrite the blob in place
    store.blobs.put(key, bytes(data))
    store.blobs.put(file_key(record.blob_prefix, "config/adapter_config.json"), b"{}")
    with pytest.raises(CheckpointCorrupted, match=r"adapter_model\.safetensors"):
        store.read_file(record, "adapter_model.safetensors")
    with pytest.raises(CheckpointCorrupted, match=r"adapter_model\.safetensors"):
        store.download_to(alice, path, tmp_path / "dl")
    assert not (tmp_path / "dl").exists()  # nothing half-downloaded is left as if good


def test_lists_newest_first_paginated_and_stable(store: Store, alice: Principal) -> None:
    run = new_run(store, alice)
    other = new_run(store, alice, "sess1:train:1")
    names = [f"{i:03d}" for i in range(12)]
    for n in names:
        save(store, alice, run, n)
    save(store, alice, other, "x", kind=S)
    page = store.list_checkpoints(alice, run, limit=5, offset=0)
    assert [c.name for c in page.items] == names[::-1][:5]
    assert page.total_count == 12
    save(store, alice, run, "late")  # a concurrent insert
    page2 = store.list_checkpoints(alice, run, limit=5, offset=5, snapshot=page.snapshot)
    assert [c.name for c in page2.items] == names[::-1][5:10]
    mine = store.list_user_checkpoints(alice, limit=100)
    assert mine.total_count == 14 and mine.items[0].name == "late"
    only_weights = store.list_user_checkpoints(alice, limit=100, kinds=[W])
    assert only_weights.total_count == 13


def test_other_users_see_private_checkpoints_as_missing(
    store: Store, alice: Principal, bob: Principal
) -> None:
    run = new_run(store, alice)
    path = save(store, alice, run, "secret")
    for call in (
        lambda: store.resolve(bob, path),
        lambda: store.delete_checkpoint(bob, path),
        lambda: store.publish(bob, path),
        lambda: store.set_ttl(bob, path, 7200),
    ):
        with pytest.raises(CheckpointNotFound) as info:
            call()
        assert "not found" in str(info.value)
    # Exactly the answer a missing checkpoint gets: nothing tells the two apart.
    with pytest.raises(CheckpointNotFound) as info2:
        store.resolve(bob, f"tinker://{run}/weights/never-existed")
    assert str(info2.value).replace("never-existed", "X") == str(info.value).replace("secret", "X")
    assert info2.value.code == info.value.code
    with pytest.raises(RunNotFound):
        store.get_run(bob, run)
    with pytest.raises(RunNotFound):
        store.list_checkpoints(bob, run)
    with pytest.raises(RunNotFound):
        store.begin_save(bob, run, W, "intrude")
    assert store.list_user_checkpoints(bob).total_count == 0


def test_published_checkpoints_are_readable_not_writable(
    store: Store, alice: Principal, bob: Principal
) -> None:
    run = new_run(store, alice)
    path = save(store, alice, run, "shared")
    save(store, alice, run, "private")
    store.publish(alice, path)
    store.publish(alice, path)  # idempotent, never a conflict
    assert store.resolve(bob, path).public
    assert store.read_file(store.resolve(bob, path), "config/adapter_config.json") == b"{}"
    assert [c.name for c in store.list_checkpoints(bob, run).items] == ["shared"]
    assert store.get_run(bob, run, access_scope="accessible").run_id == run
    with pytest.raises(RunNotFound):
        store.get_run(bob, run, access_scope="owned")
    for call in (
        lambda: store.delete_checkpoint(bob, path),
        lambda: store.unpublish(bob, path),
        lambda: store.set_ttl(bob, path, 7200),
    ):
        with pytest.raises(CheckpointNotFound):
            call()
    store.unpublish(alice, path)
    with pytest.raises(CheckpointNotFound):
        store.resolve(bob, path)
    events = [a.event for a in store.audit_log(alice)]
    assert events.count("checkpoint_published") == 1 and "checkpoint_unpublished" in events


def test_ttl_bounds_expiry_and_sweep(store: Store, alice: Principal) -> None:
    run = new_run(store, alice)
    for bad in (0, -1, MIN_TTL_SECONDS - 1, MAX_TTL_SECONDS + 1, True, 1.5):
        with pytest.raises(InvalidTTL):
            save(store, alice, run, "bad", ttl_seconds=bad)
    short = save(store, alice, run, "short", ttl_seconds=MIN_TTL_SECONDS)
    kept = save(store, alice, run, "kept", ttl_seconds=MIN_TTL_SECONDS)
    save(store, alice, run, "forever")
    store.set_ttl(alice, kept, None)  # cleared: never swept
    real_now = store.now
    store.now = lambda: real_now() + timedelta(seconds=MIN_TTL_SECONDS + 5)
    try:
        with pytest.raises(CheckpointNotFound, match="expired"):
            store.resolve(alice, short)
        assert {c.name for c in store.list_checkpoints(alice, run).items} == {"kept", "forever"}
        report = store.sweep()
        assert report.expired == [short]
        assert store.sweep().expired == []  # exactly once
        assert store.resolve(alice, kept)
    finally:
        store.now = real_now


def test_racing_sweepers_delete_expired_exactly_once(store: Store, alice: Principal) -> None:
    run = new_run(store, alice)
    paths = {save(store, alice, run, f"e{i}", ttl_seconds=3600) for i in range(6)}
    real_now = store.now
    store.now = lambda: real_now() + timedelta(hours=2)
    results: list[list[str]] = []
    try:
        threads = [
            threading.Thread(target=lambda: results.append(store.sweep().expired)) for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        store.now = real_now
    swept = [p for r in results for p in r]
    assert sorted(swept) == sorted(paths)


def test_delete_frees_bytes_after_grace(store: Store, alice: Principal) -> None:
    run = new_run(store, alice)
    path = save(store, alice, run, "gone")
    record = store.resolve(alice, path)
    store.delete_checkpoint(alice, path)
    with pytest.raises(CheckpointNotFound):
        store.resolve(alice, path)
    # Within the grace period the bytes stay (a download under way finishes) ...
    store.sweep()
    assert store.blobs.exists(file_key(record.blob_prefix, "adapter_model.safetensors"))
    # ... after it they are removed.
    real_now = store.now
    store.now = lambda: real_now() + store.sweeper.grace + timedelta(seconds=1)
    try:
        report = store.sweep()
    finally:
        store.now = real_now
    assert report.garbage_versions >= 1
    assert not store.blobs.exists(file_key(record.blob_prefix, "adapter_model.safetensors"))


def test_recover_fails_pending_and_removes_orphans(store: Store, alice: Principal) -> None:
    run = new_run(store, alice)
    pending = store.begin_save(alice, run, W, "torn")
    pending.add_file("half.bin", b"x" * 1000)  # the process "dies" here: no commit, no abort
    store.blobs.put("v/deadbeef/files/orphan.bin", b"no record knows me")
    report = store.recover(sole_writer=True)
    assert report.failed_pending == 1
    assert report.orphan_prefixes >= 1
    assert not store.blobs.exists("v/deadbeef/files/orphan.bin")
    assert store.catalog.get_version(pending.version.version_id) is None or (
        store.catalog.get_version(pending.version.version_id).state.value == "failed"  # type: ignore[union-attr]
    )
    with pytest.raises(CheckpointNotFound):
        store.resolve(alice, f"tinker://{run}/weights/torn")
    # A late commit from the dead writer cannot resurrect it.
    with pytest.raises(Exception):  # noqa: B017 - NotFound or AlreadyExists, either refuses
        pending.commit()
    with pytest.raises(CheckpointNotFound):
        store.resolve(alice, f"tinker://{run}/weights/torn")


def test_bad_paths_are_clear_errors(store: Store, alice: Principal) -> None:
    new_run(store, alice)
    for bad, part in [
        ("s3://x/weights/y", "scheme"),
        ("tinker://a/weights", "segments"),
        ("tinker://a/bogus/y", "kind"),
        ("tinker://a/weights/..", "dot"),
        ("tinker://a/weights/", "empty"),
        ("tinker://a\x00b/weights/y", "control"),
    ]:
        with pytest.raises(InvalidPath) as info:
            store.resolve(alice, bad)
        assert part in str(info.value)


def test_storage_usage_counts_visible_checkpoints(store: Store, alice: Principal) -> None:
    run = new_run(store, alice)
    save(store, alice, run, "a")
    save(store, alice, run, "b", kind=E)
    count, size = store.storage_usage(alice)
    assert count == 2
    assert size == sum(c.size_bytes for c in store.list_user_checkpoints(alice).items)


def test_times_are_aware_utc(store: Store, alice: Principal) -> None:
    run = new_run(store, alice)
    save(store, alice, run, "t", ttl_seconds=7200)
    c = store.list_checkpoints(alice, run).items[0]
    assert c.created_at.tzinfo is not None and c.created_at.utcoffset() == timedelta(0)
    assert c.expires_at is not None and c.expires_at - c.created_at <= timedelta(seconds=7201)
    assert abs(c.created_at - datetime.now(UTC)) < timedelta(minutes=1)
