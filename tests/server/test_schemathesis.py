"""Property-based fuzzing of every documented operation from /openapi.json: no input, however
odd, makes the server answer 5xx. Bounded: 50 examples per operation, with a real key so the
requests get past authentication into the handlers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tinkerstore.server import ServerSettings, create_app
from tinkerstore.service import open_store
from tinkerstore.types.paths import CheckpointKind

KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    store = open_store(Path(tmp_path_factory.mktemp("fuzz")) / "data")
    _, KEY["key"] = store.create_api_key("fuzzer")
    principal = store.authenticate(KEY["key"])
    store.create_run(principal, "sess1:train:0", base_model="m", lora_config={"rank": 4})
    store.save_files(principal, "sess1:train:0", CheckpointKind.WEIGHTS, "w1", {"a.bin": b"abc"})
    app = create_app(
        ServerSettings(
            long_poll_seconds=0.2, future_recheck_seconds=0.05, sweep_interval_seconds=0
        ),
        store,
    )
    # Revoking the fuzzer's own key would turn every later case into a 401.
    yield schemathesis.openapi.from_asgi("/openapi.json", app).exclude(
        path="/api/v1/auth/apikey/me", method="DELETE"
    )
    store.catalog.close()


def test_no_server_errors(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 25
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=50,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers={"X-API-Key": KEY["key"]})
            case.validate_response(response, checks=[not_a_server_error])

        check()
