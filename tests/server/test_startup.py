"""Client start-up endpoints, sessions and identity, as the SDK calls them (protocol §2, §11.4)."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import V025, User, make_run
from tinkerstore.service import Store

pytestmark = pytest.mark.anyio


async def test_healthz_needs_no_key(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_client_config_turns_jwt_and_pyqwest_off(
    client: httpx.AsyncClient, alice: User
) -> None:
    r = await client.post(
        "/api/v1/client/config", json={"sdk_version": "0.25.0"}, headers=alice.headers
    )
    assert r.status_code == 200
    assert r.json()["pjwt_auth_enabled"] is False
    assert r.json()["use_pyqwest_transport"] is False
    r = await client.post(
        "/api/v1/client/dynamic_config", json={"sdk_version": "0.38.0"}, headers=alice.headers
    )
    assert r.status_code == 200 and "refresh_interval_sec" in r.json()


async def test_client_config_rejects_a_bad_key_with_json_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/client/config", json={}, headers={"X-API-Key": "tml-nope"})
    assert r.status_code == 401
    assert r.json()["code"] == "unauthenticated" and "invalid API key" in r.json()["detail"]


async def test_telemetry_answers_exactly_accepted(client: httpx.AsyncClient) -> None:
    body = {
        "events": [{"event": "SESSION_START"}],
        "platform": "linux",
        "sdk_version": "0.25.0",
        "session_id": "sessionless-1",
        "process_uuid": "p",
    }
    r = await client.post("/api/v1/telemetry", json=body)
    assert r.status_code == 200 and r.content == b'{"status":"accepted"}'


async def test_session_lifecycle(
    client: httpx.AsyncClient, alice: User, bob: User, store: Store
) -> None:
    body = {
        "tags": ["a"],
        "user_metadata": {"recipe_name": "sl_basic", "n": 3},
        "sdk_version": "0.38.0",
        "display_name": "my-run",
        "type": "create_session",
    }
    r = await client.post("/api/v1/create_session", json=body, headers=alice.headers)
    assert r.status_code == 200
    sid = r.json()["session_id"]
    record = store.catalog.get_session(sid)
    assert record is not None and record.owner_id == alice.principal.user_id
    assert record.user_metadata == {"recipe_name": "sl_basic", "n": "3"}

    hb = {"session_id": sid, "type": "session_heartbeat"}
    r = await client.post("/api/v1/session_heartbeat", json=hb, headers=alice.headers)
    assert r.status_code == 200 and r.json() == {"type": "session_heartbeat"}
    # another user's session is not found, never "forbidden"
    r = await client.post("/api/v1/session_heartbeat", json=hb, headers=bob.headers)
    assert r.status_code == 404
    r = await client.post(
        f"/api/v1/sessions/{sid}/finish",
        json={"reason": {"type": "success"}, "detail": None},
        headers=bob.headers,
    )
    assert r.status_code == 404

    finish = {"reason": {"type": "errored"}, "detail": "boom"}
    r = await client.post(f"/api/v1/sessions/{sid}/finish", json=finish, headers=alice.headers)
    assert r.status_code == 204
    r = await client.post(
        f"/api/v1/sessions/{sid}/finish",
        json={"reason": {"type": "success"}, "detail": None},
        headers=alice.headers,
    )
    assert r.status_code == 204
    record = store.catalog.get_session(sid)
    assert record is not None and record.finished_reason == "errored"  # first reason wins
    # 0.38 stops its heartbeat loop on 410
    r = await client.post("/api/v1/session_heartbeat", json=hb, headers=alice.headers)
    assert r.status_code == 410 and r.json()["code"] == "session_finished"


async def test_finish_rejects_unknown_reason(client: httpx.AsyncClient, alice: User) -> None:
    r = await client.post(
        "/api/v1/create_session", json={"tags": [], "sdk_version": "0.38.0"}, headers=alice.headers
    )
    sid = r.json()["session_id"]
    r = await client.post(
        f"/api/v1/sessions/{sid}/finish", json={"reason": {"type": "great"}}, headers=alice.headers
    )
    assert r.status_code == 400 and "reason.type" in r.json()["detail"]


async def test_sessions_list_and_get(
    client: httpx.AsyncClient, alice: User, bob: User, store: Store
) -> None:
    r = await client.post(
        "/api/v1/create_session", json={"tags": [], "sdk_version": "0.38.0"}, headers=alice.headers
    )
    sid = r.json()["session_id"]
    store.create_run(
        alice.principal,
        f"{sid}:train:0",
        base_model="m",
        lora_config={"rank": 4},
        user_metadata={},
        session_id=sid,
    )
    r = await client.get("/api/v1/sessions", headers=alice.headers)
    assert r.status_code == 200 and r.json()["sessions"] == [sid]
    r = await client.get(f"/api/v1/sessions/{sid}", headers=alice.headers)
    assert r.status_code == 200
    assert r.json()["training_run_ids"] == [f"{sid}:train:0"] and r.json()["sampler_ids"] == []
    r = await client.get(f"/api/v1/sessions/{sid}", headers=bob.headers)
    assert r.status_code == 404
    r = await client.get("/api/v1/sessions", headers=bob.headers)
    assert r.json()["sessions"] == []


async def test_sampler_lookup_is_owner_only(
    client: httpx.AsyncClient, alice: User, bob: User, store: Store
) -> None:
    from tinkerstore.store.catalog.base import SamplerRecord

    now = store.now()
    store.catalog.create_sampler(
        SamplerRecord(
            "sess1:sample:0",
            alice.principal.user_id,
            "sess1",
            "m",
            "tinker://r/sampler_weights/s",
            now,
        )
    )
    r = await client.get("/api/v1/samplers/sess1:sample:0", headers=alice.headers)
    assert r.status_code == 200
    assert r.json() == {
        "sampler_id": "sess1:sample:0",
        "base_model": "m",
        "model_path": "tinker://r/sampler_weights/s",
    }
    assert (
        await client.get("/api/v1/samplers/sess1:sample:0", headers=bob.headers)
    ).status_code == 404
    assert (await client.get("/api/v1/samplers/nope", headers=alice.headers)).status_code == 404


async def test_capabilities(client: httpx.AsyncClient, alice: User) -> None:
    r = await client.get(
        "/api/v1/get_server_capabilities", headers={"X-API-Key": alice.key, **V025}
    )
    assert r.status_code == 200 and r.json() == {"supported_models": []}
    assert (await client.get("/api/v1/get_server_capabilities")).status_code == 401


async def test_apikey_me_and_self_revoke(client: httpx.AsyncClient, store: Store) -> None:
    record, key = store.create_api_key("carol", label="laptop")
    headers = {"X-API-Key": key}
    r = await client.get("/api/v1/auth/apikey/me", headers=headers)
    assert r.status_code == 200
    assert r.json() == {
        "key_id": record.key_id,
        "name": "laptop",
        "note": "",
        "details": {"org_details": {"name": "tinkerstore"}, "user_details": {"email": "carol"}},
    }
    _, other_key = store.create_api_key("carol")
    r = await client.delete("/api/v1/auth/apikey/me", headers=headers)
    assert r.status_code == 204
    r = await client.get("/api/v1/auth/apikey/me", headers=headers)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    # only the presented key was revoked
    assert (
        await client.get("/api/v1/auth/apikey/me", headers={"X-API-Key": other_key})
    ).status_code == 200


async def test_run_metadata_survives_for_get_training_run(
    client: httpx.AsyncClient, alice: User, store: Store
) -> None:
    make_run(store, alice, renderer_name="llama3", wandb_link="https://w")
    r = await client.get(
        "/api/v1/training_runs/sess1:train:0?access_scope=owned", headers=alice.headers
    )
    assert r.status_code == 200
    assert r.json()["user_metadata"] == {"renderer_name": "llama3", "wandb_link": "https://w"}
