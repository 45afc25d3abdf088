"""Item 4 (HTTP): schemathesis over /openapi.json, deeper than tests/server's smoke fuzz.

Every operation gets ``40 * TINKERSTORE_RELIABILITY_SCALE`` generated requests, authenticated
as a real user over a store with private, published and other users' checkpoints, and each
response must: not be a 5xx; match the documented response schema and content type when its
status is documented; and, when it is an error, carry our one JSON error shape. The run stops
adding operations after ``120 * scale`` seconds so CI stays bounded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.reliability.conftest import RUN, add_figure, make_run, make_user, save
from tinkerstore.server import ServerSettings, create_app
from tinkerstore.service import open_store
from tinkerstore.types.paths import CheckpointKind

EXAMPLES = 40
BUDGET_S = 120.0
KEY: dict[str, str] = {}


def _scale() -> float:
    from tests.reliability.conftest import scale

    return scale()


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    store = open_store(Path(tmp_path_factory.mktemp("fuzz-api")) / "data")
    me, other = make_user(store, "fuzzer"), make_user(store, "other")
    KEY["key"] = me.key
    make_run(store, me)
    save(store, me, "w1")
    save(store, me, "s1", CheckpointKind.SAMPLER_WEIGHTS, ttl_seconds=7200)
    save(store, me, "pub")
    store.publish(me.principal, f"tinker://{RUN}/weights/pub")
    make_run(store, other, "other:train:0")
    save(store, other, "theirs", run_id="other:train:0")
    app = create_app(
        ServerSettings(
            long_poll_seconds=0.2, future_recheck_seconds=0.05, sweep_interval_seconds=0
        ),
        store,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Revoking the fuzzer's own key would turn every later case into a 401.
    yield schema.exclude(path="/api/v1/auth/apikey/me", method="DELETE")
    store.catalog.close()


def error_shape(case: Any, response: Any) -> None:
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"detail", "code"}, body
        assert body["detail"] and body["code"], body


def test_every_operation_fuzzed_against_its_schema(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 25
    deadline = time.monotonic() + BUDGET_S * _scale()
    done = 0
    for operation in operations:
        if time.monotonic() > deadline:
            break

        @given(case=operation.as_strategy())
        @settings(
            max_examples=int(EXAMPLES * _scale()),
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            response = case.call(headers={"X-API-Key": KEY["key"]})
            case.validate_response(
                response,
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
            )
            error_shape(case, response)
            add_figure("fuzzed HTTP requests (schemathesis)", 1)

        check()
        done += 1
    add_figure("operations fuzzed (schemathesis)", done)
    assert done >= len(operations) // 2, f"only {done} operations within the time budget"
