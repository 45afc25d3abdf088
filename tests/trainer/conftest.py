"""Fixtures for the trainer tests: one real backend for the session, fresh model ids."""

from __future__ import annotations

import itertools
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch", reason="the trainer extra (torch, transformers, peft) is needed")

from tests.trainer.helpers import TEXTS, make_datum
from tinkerstore.trainer.torch_backend import TorchBackend

_ids = itertools.count()


@pytest.fixture(scope="session")
def backend() -> TorchBackend:
    return TorchBackend(num_threads=1)


@pytest.fixture
def model_id() -> str:
    """A fresh model id: the tests share one backend."""
    return f"test:train:{next(_ids)}"


@pytest.fixture(scope="session")
def batch():  # type: ignore[no-untyped-def]
    return [make_datum(t) for t in TEXTS]


def pytest_configure(config: pytest.Config) -> None:
    # peft calls a transformers method that transformers 5 deprecates; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:.*is_gradient_checkpointing.*:FutureWarning")
