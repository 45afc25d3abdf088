from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import BACKENDS, make_store
from tinkerstore.service import Principal, Store


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with make_store(request.param, tmp_path) as s:
        yield s


@pytest.fixture
def alice(store: Store) -> Principal:
    _, key = store.create_api_key("alice")
    return store.authenticate(key)


@pytest.fixture
def bob(store: Store) -> Principal:
    _, key = store.create_api_key("bob")
    return store.authenticate(key)
