"""Malformed input always gets a JSON error that says what was wrong, never a 500 or an empty
400, and the server keeps serving afterwards."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import RUN, User, make_run, save

pytestmark = pytest.mark.anyio


@pytest.fixture
def seeded(store, alice: User) -> None:  # type: ignore[no-untyped-def]
    make_run(store, alice)
    save(store, alice, "w1")


def assert_json_error(r: httpx.Response, status: int, *needles: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["detail"] and body["code"]
    for needle in needles:
        assert needle in body["detail"], body


@pytest.mark.parametrize(
    "path,needle",
    [
        ("tinker:/x/weights/a", "scheme"),
        ("tinker://x/weights", "3 segments"),
        ("tinker://x/models/a", "kind"),
        ("tinker://x/weights/", "empty"),
        ("tinker://x/weights/..", "dot segment"),
        ("tinker://" + "r" * 300 + "/weights/a", "characters long"),
        ("tinker://x/weights/a\x00b", "control character"),
    ],
)
async def test_malformed_tinker_paths(
    client: httpx.AsyncClient, alice: User, path: str, needle: str
) -> None:
    r = await client.post("/api/v1/weights_info", json={"tinker_path": path}, headers=alice.headers)
    assert_json_error(r, 400, needle)


@pytest.mark.parametrize(
    "url,status",
    [
        (f"/api/v1/training_runs/{RUN}/checkpoints/models/w1", 400),  # unknown kind
        (f"/api/v1/training_runs/{RUN}/checkpoints/weights/..", 405),  # the client normalises it
        (f"/api/v1/training_runs/{RUN}/checkpoints/weights/%2E%2E", 400),
        ("/api/v1/training_runs/%00bad/checkpoints/weights/w1", 400),
        (f"/api/v1/training_runs/{RUN}/checkpoints/weights", 404),
        (f"/api/v1/training_runs/{RUN}/checkpoints/weights/w1/extra/deep", 404),
    ],
)
async def test_malformed_ids_in_urls(
    client: httpx.AsyncClient, alice: User, seeded: None, url: str, status: int
) -> None:
    r = await client.delete(url, headers=alice.headers)
    assert_json_error(r, status)
    # the checkpoint is still there and the server still answers
    r = await client.get(f"/api/v1/training_runs/{RUN}/checkpoints", headers=alice.headers)
    assert r.status_code == 200 and len(r.json()["checkpoints"]) == 1


async def test_bad_json_and_wrong_types(
    client: httpx.AsyncClient, alice: User, seeded: None
) -> None:
    ttl = f"/api/v1/training_runs/{RUN}/checkpoints/weights/w1/ttl"
    headers = {**alice.headers, "Content-Type": "application/json"}
    assert_json_error(await client.put(ttl, content=b"{not json", headers=headers), 400, "JSON")
    assert_json_error(await client.put(ttl, content=b"", headers=headers), 400, "body")
    assert_json_error(await client.put(ttl, json=[1, 2], headers=headers), 400, "body")
    assert_json_error(
        await client.put(ttl, json={"ttl_seconds": True}, headers=headers), 400, "ttl"
    )
    assert_json_error(
        await client.post("/api/v1/weights_info", json={"tinker_path": 5}, headers=headers),
        400,
        "tinker_path",
    )
    assert_json_error(
        await client.post("/api/v1/create_session", json={"tags": "x"}, headers=headers),
        400,
        "tags",
    )
    assert_json_error(
        await client.post("/api/v1/retrieve_future", json={"request_id": 1}, headers=headers),
        400,
        "request_id",
    )
    assert_json_error(
        await client.get("/api/v1/checkpoints?limit=0", headers=headers), 400, "limit"
    )
    assert_json_error(
        await client.get("/api/v1/checkpoints?limit=abc", headers=headers), 400, "limit"
    )
    assert_json_error(
        await client.get("/api/v1/training_runs?access_scope=everything", headers=headers),
        400,
        "access_scope",
    )
    r = await client.get(f"/api/v1/training_runs/{RUN}", headers=headers)
    assert r.status_code == 200


async def test_oversized_bodies_get_413_json(
    client: httpx.AsyncClient, alice: User, seeded: None
) -> None:
    big = b'{"tinker_path": "' + b"x" * (70 * 1024) + b'"}'
    r = await client.post(
        "/api/v1/weights_info",
        content=big,
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert_json_error(r, 413, "limit")

    async def chunked():  # type: ignore[no-untyped-def]
        for _ in range(80):
            yield b"x" * 1024

    r = await client.post(
        "/api/v1/weights_info",
        content=chunked(),
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert_json_error(r, 413, "limit")

    async def small():  # type: ignore[no-untyped-def]
        yield b'{"tinker_path": "tinker://'
        yield f'{RUN}/weights/w1"}}'.encode()

    r = await client.post(
        "/api/v1/weights_info",
        content=small(),
        headers={**alice.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text


async def test_unknown_route_and_method_are_json(client: httpx.AsyncClient, alice: User) -> None:
    assert_json_error(await client.get("/api/v1/nope", headers=alice.headers), 404)
    assert_json_error(await client.put("/api/v1/healthz"), 405)


async def test_error_body_shape_is_locked(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/checkpoints")
    assert r.status_code == 401
    assert r.json() == {
        "detail": "no API key given (send your tml-... key in the X-API-Key header)",
        "code": "unauthenticated",
    }
