"""Runs, checkpoints, publish/TTL/delete, weights_info, audit and usage over HTTP (protocol §5)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from tests.server.conftest import FILES, RUN, V025, V038, User, make_run, save
from tinkerstore.service import Store
from tinkerstore.types.paths import CheckpointKind

pytestmark = pytest.mark.anyio
CK = f"/api/v1/training_runs/{RUN}/checkpoints"


@pytest.fixture
def populated(store: Store, alice: User) -> None:
    make_run(store, alice)
    save(store, alice, "w1")
    save(store, alice, "s1", CheckpointKind.SAMPLER_WEIGHTS)
    save(store, alice, "w2", ttl_seconds=7200)
    save(store, alice, "e1", CheckpointKind.EXTERNAL_WEIGHTS)


async def test_get_training_run_summary_hides_external(
    client: httpx.AsyncClient, alice: User, populated: None
) -> None:
    for version in (V025, V038, {}):
        r = await client.get(
            f"/api/v1/training_runs/{RUN}", headers={"X-API-Key": alice.key, **version}
        )
        assert r.status_code == 200, r.text
        run = r.json()
        assert run["training_run_id"] == RUN and run["base_model"] == "Qwen/Qwen3-8B"
        assert run["model_owner"] == "alice" and run["is_lora"] is True and run["lora_rank"] == 8
        assert run["last_checkpoint"]["tinker_path"] == f"tinker://{RUN}/weights/w2"
        assert run["last_sampler_checkpoint"]["checkpoint_id"] == "sampler_weights/s1"
        assert run["last_request_time"].endswith("Z") or "+00:00" in run["last_request_time"]


async def test_list_run_checkpoints_version_gating(
    client: httpx.AsyncClient, alice: User, populated: None
) -> None:
    r = await client.get(CK, headers={"X-API-Key": alice.key, **V038})
    body = r.json()
    assert [c["checkpoint_id"] for c in body["checkpoints"]] == [
        "external_weights/e1",
        "weights/w2",
        "sampler_weights/s1",
        "weights/w1",
    ]
    assert body["cursor"]["total_count"] == 4
    ext = body["checkpoints"][0]
    assert (
        ext["checkpoint_type"] == "external"
        and ext["tinker_path"] == f"tinker://{RUN}/external_weights/e1"
    )
    assert ext["size_bytes"] == sum(len(v) for v in FILES.values()) and ext["public"] is False
    w2 = body["checkpoints"][1]
    assert datetime.fromisoformat(w2["expires_at"]) > datetime.now(UTC)
    # 0.25 and unknown clients never see external checkpoints; totals count the filtered set
    for version in (V025, {}, {"User-Agent": "curl/8"}):
        r = await client.get(CK, headers={"X-API-Key": alice.key, **version})
        assert [c["checkpoint_type"] for c in r.json()["checkpoints"]] == [
            "training",
            "sampler",
            "training",
        ]
        assert r.json()["cursor"]["total_count"] == 3
    # User-Agent fallback identifies a 0.38 SDK without the stainless header
    r = await client.get(
        CK, headers={"X-API-Key": alice.key, "User-Agent": "AsyncTinker/Python 0.38.0"}
    )
    assert len(r.json()["checkpoints"]) == 4


async def test_user_checkpoints_newest_first_and_paginated(
    client: httpx.AsyncClient, alice: User, populated: None
) -> None:
    r = await client.get(
        "/api/v1/checkpoints?limit=2&offset=0", headers={"X-API-Key": alice.key, **V025}
    )
    body = r.json()
    assert [c["checkpoint_id"] for c in body["checkpoints"]] == ["weights/w2", "sampler_weights/s1"]
    assert body["cursor"] == {"offset": 0, "limit": 2, "total_count": 3}
    r = await client.get(
        "/api/v1/checkpoints?limit=2&offset=2", headers={"X-API-Key": alice.key, **V025}
    )
    assert [c["checkpoint_id"] for c in r.json()["checkpoints"]] == ["weights/w1"]
    r = await client.get("/api/v1/checkpoints", headers=alice.headers)
    assert r.json()["cursor"]["total_count"] == 4


async def test_list_training_runs(
    client: httpx.AsyncClient, alice: User, bob: User, store: Store, populated: None
) -> None:
    make_run(store, alice, "sess1:train:1")
    r = await client.get("/api/v1/training_runs?limit=1&offset=0", headers=alice.headers)
    body = r.json()
    assert body["cursor"] == {"offset": 0, "limit": 1, "total_count": 2}
    assert [run["training_run_id"] for run in body["training_runs"]] == ["sess1:train:1"]
    r = await client.get("/api/v1/training_runs", headers=bob.headers)
    assert r.json() == {"training_runs": [], "cursor": {"offset": 0, "limit": 20, "total_count": 0}}


async def test_publish_unpublish_idempotent_and_visibility(
    client: httpx.AsyncClient, alice: User, bob: User, populated: None
) -> None:
    pub = f"{CK}/weights/w1/publish"
    # bob cannot see the private run at all
    assert (await client.get(CK, headers=bob.headers)).status_code == 404
    assert (await client.post(pub, headers=bob.headers)).status_code == 404
    for _ in range(2):  # publishing twice is fine (never 409)
        r = await client.post(pub, headers={**alice.headers, "Content-Type": "application/json"})
        assert r.status_code == 204
    r = await client.get(CK, headers=bob.headers)
    assert r.status_code == 200 and [c["checkpoint_id"] for c in r.json()["checkpoints"]] == [
        "weights/w1"
    ]
    assert r.json()["checkpoints"][0]["public"] is True
    r = await client.get(
        f"/api/v1/training_runs/{RUN}?access_scope=accessible", headers=bob.headers
    )
    assert r.status_code == 200 and r.json()["last_checkpoint"]["checkpoint_id"] == "weights/w1"
    assert (
        await client.get(f"/api/v1/training_runs/{RUN}", headers=bob.headers)
    ).status_code == 404
    # others may read a published checkpoint but never change it
    assert (await client.delete(pub, headers=bob.headers)).status_code == 404
    assert (
        await client.put(f"{CK}/weights/w1/ttl", json={"ttl_seconds": 3600}, headers=bob.headers)
    ).status_code == 404
    assert (await client.delete(f"{CK}/weights/w1", headers=bob.headers)).status_code == 404
    for _ in range(2):
        assert (await client.delete(pub, headers=alice.headers)).status_code == 204
    assert (await client.get(CK, headers=bob.headers)).status_code == 404


async def test_ttl_set_clear_and_bounds(
    client: httpx.AsyncClient, alice: User, store: Store, populated: None
) -> None:
    url = f"{CK}/external_weights/e1/ttl"
    r = await client.put(url, json={"ttl_seconds": 3600}, headers=alice.headers)
    assert r.status_code == 204
    record = store.resolve(alice.principal, f"tinker://{RUN}/external_weights/e1")
    assert record.expires_at is not None
    assert (
        await client.put(url, json={"ttl_seconds": None}, headers=alice.headers)
    ).status_code == 204
    assert store.resolve(alice.principal, f"tinker://{RUN}/external_weights/e1").expires_at is None
    for bad in (3599, 10**12, -1):
        r = await client.put(url, json={"ttl_seconds": bad}, headers=alice.headers)
        assert r.status_code == 400 and r.json()["code"] == "invalid_ttl", r.text
    for bad_body in ({"ttl_seconds": "3600"}, {}, {"ttl_seconds": 1.5}):
        r = await client.put(url, json=bad_body, headers=alice.headers)
        assert r.status_code == 400 and "ttl_seconds" in r.json()["detail"], r.text


async def test_delete_checkpoint(client: httpx.AsyncClient, alice: User, populated: None) -> None:
    r = await client.delete(
        f"{CK}/external_weights/e1", headers={**alice.headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 204
    r = await client.delete(f"{CK}/external_weights/e1", headers=alice.headers)
    assert r.status_code == 404 and r.json()["code"] == "checkpoint_not_found"
    r = await client.get(CK, headers=alice.headers)
    assert "external_weights/e1" not in [c["checkpoint_id"] for c in r.json()["checkpoints"]]


async def test_weights_info(
    client: httpx.AsyncClient, alice: User, bob: User, populated: None
) -> None:
    for path in (f"tinker://{RUN}/weights/w1", f"tinker://{RUN}/external_weights/e1"):
        r = await client.post(
            "/api/v1/weights_info", json={"tinker_path": path}, headers=alice.headers
        )
        assert r.status_code == 200
        assert r.json() == {
            "base_model": "Qwen/Qwen3-8B",
            "is_lora": True,
            "lora_rank": 8,
            "train_unembed": False,
            "train_mlp": True,
            "train_attn": True,
            "optimizer_config": {"type": "adamw"},
        }
    body = {"tinker_path": f"tinker://{RUN}/weights/w1"}
    assert (
        await client.post("/api/v1/weights_info", json=body, headers=bob.headers)
    ).status_code == 404
    await client.post(f"{CK}/weights/w1/publish", headers=alice.headers)
    assert (
        await client.post("/api/v1/weights_info", json=body, headers=bob.headers)
    ).status_code == 200


async def test_audit_log_records_mutations(
    client: httpx.AsyncClient, alice: User, bob: User, populated: None
) -> None:
    await client.post(f"{CK}/weights/w1/publish", headers=alice.headers)
    await client.put(f"{CK}/weights/w1/ttl", json={"ttl_seconds": 3600}, headers=alice.headers)
    await client.delete(f"{CK}/weights/w1", headers=alice.headers)
    r = await client.get("/api/v1/audit?event_type=checkpoints", headers=alice.headers)
    assert r.status_code == 200
    events = [(e["event"], e.get("tinker_path")) for e in r.json()["entries"]]
    w1 = f"tinker://{RUN}/weights/w1"
    for event in (
        "checkpoint_saved",
        "checkpoint_published",
        "checkpoint_ttl_set",
        "checkpoint_deleted",
    ):
        assert (event, w1) in events, events
    today = datetime.now(UTC).date().isoformat()
    r = await client.get(f"/api/v1/audit?event_type=all&day={today}", headers=alice.headers)
    assert len(r.json()["entries"]) >= 7
    r = await client.get("/api/v1/audit?event_type=all&day=2001-01-01", headers=alice.headers)
    assert r.json() == {"entries": []}
    assert (await client.get("/api/v1/audit?event_type=teams", headers=alice.headers)).json() == {
        "entries": []
    }
    assert (await client.get("/api/v1/audit", headers=bob.headers)).json() == {"entries": []}
    r = await client.get("/api/v1/audit?day=yesterday", headers=alice.headers)
    assert r.status_code == 400 and "day" in r.json()["detail"]


async def test_storage_usage(
    client: httpx.AsyncClient, alice: User, bob: User, populated: None
) -> None:
    r = await client.get("/api/v1/billing/usage/checkpoints/current", headers=alice.headers)
    item = r.json()["data"][0]
    size = sum(len(v) for v in FILES.values())
    assert item["checkpoint_count"] == 4 and item["size_bytes"] == 4 * size
    assert item["size_gigabytes"] == pytest.approx(4 * size / 1e9)
    r = await client.get(
        "/api/v1/billing/usage/checkpoints/current?project_id=p", headers=bob.headers
    )
    assert r.json()["data"][0]["checkpoint_count"] == 0
