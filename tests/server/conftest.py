"""The app in-process over a real SQLite + filesystem store in tmp_path.

``httpx.ASGITransport`` does not run the lifespan, so ``client`` enters it by hand: start-up
repair runs and, on exit, the futures engine shuts down like in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tinkerstore.server import ServerSettings, create_app
from tinkerstore.service import Principal, Store, open_store
from tinkerstore.store.catalog.base import CheckpointRecord
from tinkerstore.types.paths import CheckpointKind

V025 = {"X-Stainless-Package-Version": "0.25.0"}
V038 = {"X-Stainless-Package-Version": "0.38.0"}
RUN = "sess1:train:0"
FILES = {
    "adapter_config.json": b'{"r": 8, "lora_alpha": 16}',
    "adapter_model.safetensors": bytes(range(256)) * 40,
    "extra/readme.txt": b"hello",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class User:
    name: str
    key: str
    principal: Principal

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key, **V038}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "data")
    yield s
    s.catalog.close()


@pytest.fixture
def settings() -> ServerSettings:
    return ServerSettings(
        long_poll_seconds=1.0,
        future_recheck_seconds=0.05,
        sweep_interval_seconds=0,
        max_body_bytes=64 * 1024,
    )


def make_user(store: Store, name: str) -> User:
    _, key = store.create_api_key(name)
    return User(name, key, store.authenticate(key))


@pytest.fixture
def alice(store: Store) -> User:
    return make_user(store, "alice")


@pytest.fixture
def bob(store: Store) -> User:
    return make_user(store, "bob")


@pytest.fixture
def app(settings: ServerSettings, store: Store) -> FastAPI:
    return create_app(settings, store)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


def make_run(store: Store, user: User, run_id: str = RUN, **metadata: str) -> None:
    store.create_run(
        user.principal,
        run_id,
        base_model="Qwen/Qwen3-8B",
        lora_config={"rank": 8, "train_unembed": False, "train_mlp": True, "train_attn": True},
        user_metadata=metadata or {"renderer_name": "qwen3"},
        session_id="sess1",
    )


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
