"""Futures: durable rows, seq_id order, dedupe, gap timeout, and the retrieve_future long poll."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from fastapi import FastAPI

from tests.server.conftest import User
from tinkerstore.errors import AlreadyExists
from tinkerstore.server.futures import FutureEngine, FutureResult
from tinkerstore.service import Store
from tinkerstore.store.catalog.base import FutureState

pytestmark = pytest.mark.anyio


async def _done(engine: FutureEngine, request_id: str, owner: str) -> dict:  # type: ignore[type-arg]
    record = await engine.wait(request_id, owner, timeout=5)
    assert record.state != FutureState.PENDING and record.result is not None
    return json.loads(record.result)  # type: ignore[no-any-return]


async def test_out_of_order_submissions_run_in_seq_order(store: Store, alice: User) -> None:
    engine = FutureEngine(store.catalog, gap_timeout=5)
    owner = alice.principal.user_id
    ran: list[int] = []

    def work(seq: int):  # type: ignore[no-untyped-def]
        def fn() -> dict[str, int]:
            ran.append(seq)
            return {"seq": seq}

        return fn

    # like parallel fwd/bwd chunks: the first one arrives last
    order = [3, 2, 5, 4, 1]
    records = {
        s: await engine.submit(owner, "m:train:0", s, "ForwardBackward", work(s)) for s in order
    }
    for seq, record in records.items():
        assert await _done(engine, record.request_id, owner) == {"seq": seq}
    assert ran == [1, 2, 3, 4, 5]
    await engine.aclose()


async def test_duplicate_seq_id_returns_the_same_future_and_runs_once(
    store: Store, alice: User
) -> None:
    engine = FutureEngine(store.catalog)
    owner = alice.principal.user_id
    calls = []

    def fn() -> dict[str, str]:
        calls.append(1)
        return {"ok": "yes"}

    first = await engine.submit(owner, "m:train:0", 1, "OptimStep", fn)
    again = await engine.submit(owner, "m:train:0", 1, "OptimStep", fn)
    assert again.request_id == first.request_id
    assert await _done(engine, first.request_id, owner) == {"ok": "yes"}
    third = await engine.submit(owner, "m:train:0", 1, "OptimStep", fn)
    assert third.request_id == first.request_id and third.state == FutureState.DONE
    assert calls == [1]
    await engine.aclose()


async def test_failures_carry_category(store: Store, alice: User) -> None:
    engine = FutureEngine(store.catalog)
    owner = alice.principal.user_id

    def user_error() -> None:
        raise AlreadyExists("checkpoint 'x' already exists", hint="pass overwrite=True")

    def crash() -> None:
        raise RuntimeError("disk on fire")

    a = await engine.submit(owner, "m", 1, "SaveWeights", user_error)
    b = await engine.submit(owner, "m", 2, "SaveWeights", crash)
    c = await engine.submit(owner, "m", 3, "SaveWeights", lambda: {"path": "tinker://m/weights/x"})
    assert await _done(engine, a.request_id, owner) == {
        "error": "checkpoint 'x' already exists (pass overwrite=True)",
        "category": "user",
    }
    failed = await _done(engine, b.request_id, owner)
    assert failed["category"] == "server" and "disk on fire" in failed["error"]
    # a failing request does not stop the model's queue
    assert await _done(engine, c.request_id, owner) == {"path": "tinker://m/weights/x"}
    await engine.aclose()


async def test_gap_timeout_fails_the_waiting_requests_with_a_clear_message(
    store: Store, alice: User
) -> None:
    engine = FutureEngine(store.catalog, gap_timeout=0.3)
    owner = alice.principal.user_id
    ran: list[int] = []
    first = await engine.submit(owner, "m", 1, "X", lambda: ran.append(1) or {})
    waiting = await engine.submit(owner, "m", 3, "X", lambda: ran.append(3) or {})
    assert await _done(engine, first.request_id, owner) == {}
    body = await _done(engine, waiting.request_id, owner)
    assert body["category"] == "user" and "seq_id=2 never arrived" in body["error"]
    assert ran == [1]
    # the queue moved on: the next request runs; a late seq 2 is refused, not run out of order
    nxt = await engine.submit(owner, "m", 4, "X", lambda: ran.append(4) or {})
    assert await _done(engine, nxt.request_id, owner) == {}
    late = await engine.submit(owner, "m", 2, "X", lambda: ran.append(2) or {})
    assert "arrived after" in (await _done(engine, late.request_id, owner))["error"]
    assert ran == [1, 4]
    await engine.aclose()


async def test_unordered_requests_and_async_work(store: Store, alice: User) -> None:
    engine = FutureEngine(store.catalog)
    owner = alice.principal.user_id

    async def fn() -> FutureResult:
        await asyncio.sleep(0)
        return FutureResult(b"\x08\x01", "application/x-protobuf")

    record = await engine.submit(owner, None, None, "CreateModel", fn)
    done = await engine.wait(record.request_id, owner, timeout=5)
    assert done.result == b"\x08\x01" and done.content_type == "application/x-protobuf"
    await engine.aclose()


async def test_a_future_finished_by_another_replica_is_seen(store: Store, alice: User) -> None:
    owner = alice.principal.user_id
    replica_a = FutureEngine(store.catalog, recheck=0.05)
    replica_b = FutureEngine(store.catalog, recheck=0.05)
    gate = asyncio.Event()

    async def slow() -> dict[str, int]:
        await gate.wait()
        return {"answer": 42}

    record = await replica_a.submit(owner, "m", 1, "X", slow)
    waiter = asyncio.create_task(replica_b.wait(record.request_id, owner, timeout=5))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    gate.set()
    done = await waiter
    assert json.loads(done.result or b"") == {"answer": 42}
    await replica_a.aclose()


async def test_retrieve_future_long_polls_then_try_again(
    app: FastAPI, client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    engine: FutureEngine = app.state.futures
    gate = asyncio.Event()

    async def slow() -> dict[str, str]:
        await gate.wait()
        return {"model_id": "m", "type": "create_model"}

    record = await engine.submit(alice.principal.user_id, None, None, "CreateModel", slow)
    body = {"request_id": record.request_id, "allow_metadata_only": True}
    started = time.monotonic()
    r = await client.post("/api/v1/retrieve_future", json=body, headers=alice.headers)
    held = time.monotonic() - started
    assert r.status_code == 200
    assert r.json() == {
        "type": "try_again",
        "request_id": record.request_id,
        "queue_state": "active",
    }
    assert (
        held >= 0.9
    )  # long_poll_seconds=1 in the test settings: it was held, not answered at once
    # another user's future does not exist for them
    r = await client.post("/api/v1/retrieve_future", json=body, headers=bob.headers)
    assert r.status_code == 404 and r.json()["code"] == "future_not_found"
    # a poll in flight is answered as soon as the result lands
    poll = asyncio.create_task(
        client.post("/api/v1/retrieve_future", json=body, headers=alice.headers)
    )
    await asyncio.sleep(0.2)
    gate.set()
    r = await poll
    assert r.json() == {"model_id": "m", "type": "create_model"}
    r = await client.post(
        "/api/v1/retrieve_future", json={"request_id": "req-nope"}, headers=alice.headers
    )
    assert r.status_code == 404


async def test_retrieve_future_protobuf_and_failure_bodies(
    app: FastAPI, client: httpx.AsyncClient, alice: User
) -> None:
    engine: FutureEngine = app.state.futures
    owner = alice.principal.user_id
    proto = await engine.submit(
        owner,
        "m",
        1,
        "ForwardBackward",
        lambda: FutureResult(b"\x0a\x03abc", "application/x-protobuf"),
    )

    def fail() -> None:
        raise AlreadyExists("name taken")

    failed = await engine.submit(owner, "m", 2, "SaveWeights", fail)
    r = await client.post(
        "/api/v1/retrieve_future",
        json={"request_id": proto.request_id, "allow_metadata_only": True},
        headers={**alice.headers, "Accept": "application/x-protobuf"},
    )
    assert r.headers["content-type"] == "application/x-protobuf" and r.content == b"\x0a\x03abc"
    r = await client.post(
        "/api/v1/retrieve_future", json={"request_id": failed.request_id}, headers=alice.headers
    )
    assert r.status_code == 200 and r.json() == {"error": "name taken", "category": "user"}


async def test_shutdown_fails_queued_work(store: Store, alice: User) -> None:
    engine = FutureEngine(store.catalog, gap_timeout=60)
    owner = alice.principal.user_id
    stuck = await engine.submit(owner, "m", 2, "X", lambda: {})  # waits for seq 1 forever
    await engine.aclose()
    record = store.catalog.get_future(stuck.request_id)
    assert record is not None and record.state == FutureState.FAILED
    assert json.loads(record.result or b"")["category"] == "server"
