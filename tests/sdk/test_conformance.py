"""The real ``tinker`` SDK (0.25 and 0.38, each in its own venv) drives every RestClient method
against a live server subprocess. Checkpoints are created through the store API beforehand; each
SDK version gets its own runs so the two scripts cannot disturb each other.

One server per backend for the module: the embedded store (SQLite + files) and PostgreSQL + S3,
where download URLs are presigned URLs of the object store. One SDK subprocess per version
running many calls in a row.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.server.live import SERVER_BACKENDS, LiveServer, live_server, open_store_env, store_env
from tests.support.sdk import run_sdk_script
from tinkerstore.store.catalog.base import SamplerRecord, SessionRecord
from tinkerstore.types.paths import CheckpointKind

pytestmark = pytest.mark.sdk

FILES = {
    "adapter_config.json": b'{"r": 8, "lora_alpha": 16, "peft_type": "LORA"}',
    "adapter_model.safetensors": bytes(range(256)) * 4096,  # 1 MiB
    "sub/extra.txt": b"extra",
}
DIGESTS = {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()}


def seed(data_dir: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    store = open_store_env(data_dir, env or {})
    _, alice_key = store.create_api_key("alice")
    _, bob_key = store.create_api_key("bob")
    alice = store.authenticate(alice_key)
    now = datetime.now(UTC)
    for v in ("025", "038"):
        session = f"sess-{v}"
        run = f"{session}:train:0"
        store.catalog.create_session(
            SessionRecord(session, alice.user_id, now, now, f"0.{v[1:]}.0")
        )
        store.create_run(
            alice, run, base_model="Qwen/Qwen3-8B",
            lora_config={"rank": 8, "train_unembed": True, "train_mlp": True, "train_attn": False},
            user_metadata={"renderer_name": "qwen3"}, session_id=session,
        )  # fmt: skip
        for kind, name in [
            (CheckpointKind.WEIGHTS, "w1"),
            (CheckpointKind.SAMPLER_WEIGHTS, "s1"),
            (CheckpointKind.WEIGHTS, "w2"),
            (CheckpointKind.EXTERNAL_WEIGHTS, "e1"),
        ]:
            store.save_files(alice, run, kind, name, FILES)
        store.catalog.create_sampler(
            SamplerRecord(f"{session}:sample:0", alice.user_id, session, "Qwen/Qwen3-8B",
                          f"tinker://{run}/sampler_weights/s1", now)
        )  # fmt: skip
    store.catalog.close()
    return {"alice": alice_key, "bob": bob_key}


@pytest.fixture(scope="module", params=SERVER_BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, dict[str, Any]]]:
    data_dir = tmp_path_factory.mktemp("sdk") / "data"
    with store_env(request.param, data_dir) as env:
        keys = seed(data_dir, env)
        with live_server(data_dir, **env) as live:
            yield live, {**keys, "backend": request.param}


def check_download_url(url: str, live: LiveServer, backend: str) -> None:
    """On S3 a download URL is the object store's presigned URL (the bytes never pass through
    the server); on files, a signed URL of the server itself."""
    if backend == "pg-s3":
        assert url.startswith(os.environ["AWS_ENDPOINT_URL"]), url
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=" in url, url
    else:
        assert url.startswith(f"{live.url}/api/v1/signed/"), url


COMMON = r"""
import hashlib, io, json, sys, tarfile, urllib.request, warnings
import tinker
warnings.simplefilter("ignore")
cfg = json.load(sys.stdin)
out = {}
v = cfg["v"]
run = f"sess-{v}:train:0"
P = lambda kind, name: f"tinker://{run}/{kind}/{name}"
W1 = P("weights", "w1")
sc = tinker.ServiceClient(base_url=cfg["url"], api_key=cfg["alice"])
rc = sc.create_rest_client()
bob = tinker.ServiceClient(base_url=cfg["url"], api_key=cfg["bob"]).create_rest_client()

def error_name(fn):
    try:
        fn()
    except Exception as exc:
        return type(exc).__name__
    return None

out["caps"] = sc.get_server_capabilities().model_dump(mode="json")
tr = rc.get_training_run(run).result()
out["run"] = tr.model_dump(mode="json")
out["run_by_path"] = rc.get_training_run_by_tinker_path(W1).result().training_run_id
out["weights_info"] = rc.get_weights_info_by_tinker_path(W1).result().model_dump(mode="json")
runs = rc.list_training_runs(limit=1, offset=0).result()
out["runs_page"] = [[r.training_run_id for r in runs.training_runs], runs.cursor.total_count]
out["ckpts"] = [(c.checkpoint_id, c.checkpoint_type, c.tinker_path, c.size_bytes)
                for c in rc.list_checkpoints(run).result().checkpoints]
page = rc.list_user_checkpoints(limit=2, offset=0).result()
out["user_page"] = [[c.tinker_path for c in page.checkpoints], page.cursor.total_count]
out["bob_before"] = error_name(lambda: bob.get_training_run(run).result())
out["bob_info_before"] = error_name(lambda: bob.get_weights_info_by_tinker_path(W1).result())
rc.publish_checkpoint_from_tinker_path(W1).result()
rc.publish_checkpoint_from_tinker_path(W1).result()  # idempotent
out["bob_sees"] = [c.checkpoint_id for c in bob.list_checkpoints(run).result().checkpoints]
out["bob_info"] = bob.get_weights_info_by_tinker_path(W1).result().base_model
out["bob_delete"] = error_name(lambda: bob.delete_checkpoint_from_tinker_path(W1).result())
rc.unpublish_checkpoint_from_tinker_path(W1).result()
out["public_after"] = [c.public for c in rc.list_checkpoints(run).result().checkpoints]
rc.set_checkpoint_ttl_from_tinker_path(W1, 7200).result()
out["ttl_set"] = [str(c.expires_at) for c in rc.list_checkpoints(run).result().checkpoints
                  if c.checkpoint_id == "weights/w1"]
rc.set_checkpoint_ttl_from_tinker_path(W1, None).result()
out["ttl_cleared"] = [c.expires_at for c in rc.list_checkpoints(run).result().checkpoints
                      if c.checkpoint_id == "weights/w1"]
out["ttl_bad"] = error_name(lambda: rc.set_checkpoint_ttl_from_tinker_path(W1, 60).result())
rc.delete_checkpoint_from_tinker_path(P("weights", "w2")).result()
W2 = P("weights", "w2")
out["delete_again"] = error_name(lambda: rc.delete_checkpoint_from_tinker_path(W2).result())
out["missing_run"] = error_name(lambda: rc.get_training_run("nope:train:0").result())
out["audit"] = sorted({e.event for e in rc.get_audit_log("checkpoints").result().entries})
out["sessions"] = rc.list_sessions().result().sessions
out["session"] = rc.get_session(f"sess-{v}").result().training_run_ids
out["sampler"] = rc.get_sampler(f"sess-{v}:sample:0").result().model_dump(mode="json")
bad = tinker.ServiceClient(base_url=cfg["url"], api_key="tml-not-a-real-key")
out["bad_key"] = error_name(lambda: bad.create_rest_client().list_training_runs().result())

def fetch(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read(), r.headers.get("Content-Length")
"""


def _check_common(out: dict[str, Any], v: str) -> None:
    run = f"sess-{v}:train:0"
    size = sum(len(b) for b in FILES.values())
    assert out["caps"] == {"supported_models": []}
    assert out["run"]["training_run_id"] == run and out["run"]["lora_rank"] == 8
    assert out["run"]["user_metadata"] == {"renderer_name": "qwen3"}
    assert out["run"]["last_checkpoint"]["checkpoint_id"] == "weights/w2"
    assert out["run"]["last_sampler_checkpoint"]["checkpoint_id"] == "sampler_weights/s1"
    assert out["run_by_path"] == run
    assert out["weights_info"]["base_model"] == "Qwen/Qwen3-8B"
    assert out["weights_info"]["lora_rank"] == 8 and out["weights_info"]["train_attn"] is False
    assert out["runs_page"][1] == 2 and len(out["runs_page"][0]) == 1
    assert out["bob_before"] == "NotFoundError" and out["bob_info_before"] == "NotFoundError"
    assert out["bob_sees"] == ["weights/w1"] and out["bob_info"] == "Qwen/Qwen3-8B"
    assert out["bob_delete"] == "NotFoundError"
    assert not any(out["public_after"])
    assert out["ttl_set"] != ["None"] and out["ttl_cleared"] == [None]
    assert out["ttl_bad"] == "BadRequestError"
    assert out["delete_again"] == "NotFoundError" and out["missing_run"] == "NotFoundError"
    assert {"checkpoint_saved", "checkpoint_published", "checkpoint_deleted"} <= set(out["audit"])
    assert f"sess-{v}" in out["sessions"] and out["session"] == [run]
    assert out["sampler"] == {"sampler_id": f"sess-{v}:sample:0", "base_model": "Qwen/Qwen3-8B",
                              "model_path": f"tinker://{run}/sampler_weights/s1"}  # fmt: skip
    assert out["bad_key"] == "AuthenticationError"
    for _, _, path, got_size in out["ckpts"]:
        assert path.startswith(f"tinker://{run}/") and got_size == size


def test_sdk_025(server: tuple[LiveServer, dict[str, Any]]) -> None:
    live, keys = server
    script = (
        COMMON
        + r"""
arch = rc.get_checkpoint_archive_url_from_tinker_path(P("sampler_weights", "s1")).result()
out["archive_url"] = arch.url
out["archive_expires_tz"] = arch.expires.tzinfo is not None
data, length = fetch(arch.url)
out["archive_length_ok"] = int(length) == len(data)
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    out["archive"] = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                      for m in tar.getmembers()}
    out["archive_order"] = tar.getnames()
print(json.dumps(out, default=str))
"""
    )
    out = run_sdk_script("0.25", script, stdin={"url": live.url, "v": "025", **keys})
    _check_common(out, "025")
    check_download_url(out["archive_url"], live, keys["backend"])
    # 0.25 never sees external checkpoints: it would reject the whole response
    assert [c[0] for c in out["ckpts"]] == ["weights/w2", "sampler_weights/s1", "weights/w1"]
    assert out["user_page"][1] == 6  # 3 per version, externals hidden
    assert out["archive_expires_tz"] and out["archive_length_ok"]
    assert out["archive"] == {**DIGESTS, "checkpoint_complete": hashlib.sha256(b"").hexdigest()}
    assert out["archive_order"][-1] == "checkpoint_complete"


def test_sdk_038(server: tuple[LiveServer, dict[str, Any]]) -> None:
    live, keys = server
    script = (
        COMMON
        + r"""
urls = rc.get_external_weights_urls(P("external_weights", "e1")).result()
out["ext_expires_tz"] = urls.expires.tzinfo is not None
out["ext_urls"] = list(urls.urls.values())
out["ext_files"] = {k: hashlib.sha256(fetch(u)[0]).hexdigest() for k, u in urls.urls.items()}
again = rc.get_external_weights_urls(P("external_weights", "e1")).result()
out["ext_same_keys"] = sorted(again.urls) == sorted(urls.urls)
rc.set_checkpoint_ttl_from_tinker_path(P("external_weights", "e1"), 3600).result()
usage = rc.get_current_checkpoint_storage_usage().result()
out["usage"] = [usage.data[0].checkpoint_count, usage.data[0].size_bytes]
admin = tinker.AdminClient(base_url=cfg["url"], api_key=cfg["alice"])
out["admin_audit"] = len(admin.get_audit_log().result().entries)
rc.delete_checkpoint_from_tinker_path(P("external_weights", "e1")).result()
out["ckpts_after"] = [c.checkpoint_id for c in rc.list_checkpoints(run).result().checkpoints]
print(json.dumps(out, default=str))
"""
    )
    out = run_sdk_script("0.38", script, stdin={"url": live.url, "v": "038", **keys})
    _check_common(out, "038")
    for url in out["ext_urls"]:
        check_download_url(url, live, keys["backend"])
    assert [c[:2] for c in out["ckpts"]] == [
        ["external_weights/e1", "external"], ["weights/w2", "training"],
        ["sampler_weights/s1", "sampler"], ["weights/w1", "training"],
    ]  # fmt: skip
    assert out["ext_expires_tz"] and out["ext_same_keys"] and out["ext_files"] == DIGESTS
    size = sum(len(b) for b in FILES.values())
    assert out["usage"][0] >= 5 and out["usage"][1] == out["usage"][0] * size
    assert out["admin_audit"] > 0
    assert "external_weights/e1" not in out["ckpts_after"]
