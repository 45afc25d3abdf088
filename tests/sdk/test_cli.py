"""The real ``tinker`` CLI of each SDK venv against a live server: run list/info, checkpoint
list/info/publish/unpublish/set-ttl/delete/download, in table and JSON form.

0.25 downloads a training checkpoint through the tar archive; 0.38's download of a training
checkpoint needs the trainer (a later issue), so 0.38 downloads an external_weights checkpoint.
Both against the embedded store and against PostgreSQL + S3 (presigned URLs; the 0.25 archive
answers 503 + Retry-After while its tar object is built, which the CLI must wait out).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sdk.test_conformance import FILES, seed
from tests.server.live import SERVER_BACKENDS, LiveServer, live_server, store_env
from tests.support.sdk import run_sdk_script

pytestmark = pytest.mark.sdk


@pytest.fixture(scope="module", params=SERVER_BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, dict[str, Any]]]:
    data_dir = tmp_path_factory.mktemp("cli") / "data"
    with store_env(request.param, data_dir) as env:
        keys = seed(data_dir, env)
        # No build wait: the 0.25 download must go through the 503 + Retry-After path on S3.
        with live_server(data_dir, **env, TINKERSTORE_ARCHIVE_BUILD_WAIT="0") as live:
            yield live, keys


# Runs many CLI invocations in ONE process of the SDK venv (each fresh process costs seconds of
# imports): the CLI's real entry point, with sys.argv set and its output captured per call.
DRIVER = r"""
import contextlib, io, json, sys
from tinker.cli.__main__ import main

results = []
for args in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.argv = ["tinker", *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    results.append({"args": args, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


def run_cli(version: str, url: str, key: str, home: Path, calls: list[list[str]]) -> list[Any]:
    env = {"TINKER_BASE_URL": url, "TINKER_API_KEY": key, "HOME": str(home)}
    results = run_sdk_script(version, DRIVER, stdin=calls, env=env)
    assert isinstance(results, list) and len(results) == len(calls)
    return results


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("version", ["0.25", "0.38"])
def test_cli(server: tuple[LiveServer, dict[str, Any]], version: str, tmp_path: Path) -> None:
    live, keys = server
    v = version.replace(".", "")
    run = f"sess-{v}:train:0"
    path = f"tinker://{run}"
    out_dir = tmp_path / "dl"
    target = "weights/w1" if version == "0.25" else "external_weights/e1"
    w1 = f"{path}/weights/w1"
    calls = {
        "run_list": ["run", "list"],
        "run_list_json": ["-f", "json", "run", "list"],
        "run_info": ["run", "info", run],
        "run_info_json": ["-f", "json", "run", "info", run],
        "list_run": ["-f", "json", "checkpoint", "list", "--run-id", run],
        "list_run_table": ["checkpoint", "list", "--run-id", run],
        "list_all": ["-f", "json", "checkpoint", "list"],
        "info": ["-f", "json", "checkpoint", "info", w1],
        "info_table": ["checkpoint", "info", w1],
        "publish": ["checkpoint", "publish", w1],
        "publish_again": ["checkpoint", "publish", w1],
        "info_published": ["-f", "json", "checkpoint", "info", w1],
        "unpublish": ["checkpoint", "unpublish", w1],
        "info_unpublished": ["-f", "json", "checkpoint", "info", w1],
        "ttl": ["checkpoint", "set-ttl", w1, "--ttl", "7200"],
        "info_ttl": ["-f", "json", "checkpoint", "info", w1],
        "ttl_remove": ["checkpoint", "set-ttl", w1, "--remove"],
        "info_no_ttl": ["-f", "json", "checkpoint", "info", w1],
        "ttl_bad": ["checkpoint", "set-ttl", w1, "--ttl", "10"],
        "delete": ["-f", "json", "checkpoint", "delete", f"{path}/weights/w2", "-y"],
        "delete_again": ["-f", "json", "checkpoint", "delete", f"{path}/weights/w2", "-y"],
        "download": [
            "-f",
            "json",
            "checkpoint",
            "download",
            f"{path}/{target}",
            "-o",
            str(out_dir),
        ],
    }
    results = run_cli(version, live.url, keys["alice"], tmp_path, list(calls.values()))
    r = dict(zip(calls, results, strict=True))
    for name, result in r.items():
        if name not in ("ttl_bad", "delete_again"):
            assert result["code"] == 0, (name, result)

    def js(name: str) -> Any:
        return json.loads(r[name]["stdout"])

    assert run in r["run_list"]["stdout"] and "Qwen/Qwen3-8B" in r["run_info"]["stdout"]
    runs = js("run_list_json")
    assert {x["training_run_id"] for x in runs["runs"]} == {"sess-025:train:0", "sess-038:train:0"}
    info = js("run_info_json")
    assert info["training_run_id"] == run and info["user_metadata"] == {"renderer_name": "qwen3"}

    types = {c["checkpoint_id"]: c["checkpoint_type"] for c in js("list_run")["checkpoints"]}
    expected = {"weights/w1": "training", "weights/w2": "training", "sampler_weights/s1": "sampler"}
    if version == "0.38":
        expected["external_weights/e1"] = "external"
    assert types == expected
    assert "weights/w1" in r["list_run_table"]["stdout"]
    everything = js("list_all")["checkpoints"]
    assert {c["checkpoint_id"] for c in everything if c["tinker_path"].startswith(path)} == set(
        expected
    )
    if version == "0.25":
        assert all(c["checkpoint_type"] != "external" for c in everything)

    assert js("info")["tinker_path"] == w1 and js("info")["public"] is False
    assert "weights/w1" in r["info_table"]["stdout"]
    assert js("info_published")["public"] is True and js("info_unpublished")["public"] is False
    assert js("info_ttl")["expires_at"] is not None and js("info_no_ttl")["expires_at"] is None
    assert r["ttl_bad"]["code"] == 1 and "out of range" in r["ttl_bad"]["stderr"]

    assert js("delete")["deleted_count"] == 1 and js("delete")["failed"] == []
    again = r["delete_again"]
    assert "w2" in again["stdout"] + again["stderr"]

    result = js("download")
    destination = Path(result["destination"])
    assert destination.parent == out_dir and result["checkpoint_path"] == f"{path}/{target}"
    expected_tree = dict(FILES)
    if version == "0.25":
        expected_tree["checkpoint_complete"] = b""
    assert _tree(destination) == expected_tree
