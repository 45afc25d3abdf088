"""Two replicas of ``tinkerstore serve`` on one PostgreSQL + S3 store, as real subprocesses.

Any replica serves any REST or futures request; training models live in the replica that
created them. A writer killed with SIGKILL mid-save leaves nothing visible, and the surviving
replica's sweeper fails and removes it after ``--pending-timeout``. Download URLs are the object
store's presigned URLs; a tampered one is refused by the object store itself (SeaweedFS, 403).
On PostgreSQL + a shared directory the replicas sign their own URLs with the secret kept in the
catalog, so a URL signed by one verifies on the other.

Needs ``source scripts/services.sh start`` (skips loudly without, fails under CI).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.server.live import LiveServer, live_server, open_store_env, store_env
from tests.support.backends import fresh_postgres_database, require_scale_env
from tinkerstore.service import Store
from tinkerstore.service.verify import verify_store
from tinkerstore.store.catalog.base import VersionState
from tinkerstore.types.paths import CheckpointKind

REPO = Path(__file__).resolve().parents[2]
PENDING_TIMEOUT = 8  # seconds: short, so the survivor sweeps the dead saves within the test
FILES = {
    "adapter_config.json": b'{"r": 4, "peft_type": "LORA"}',
    "adapter_model.safetensors": bytes(range(256)) * 8192,  # 2 MiB
}
DIGESTS = {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()}
RUN = "seed:train:0"
REPLICA_ENV = {
    "TINKERSTORE_PENDING_TIMEOUT": str(PENDING_TIMEOUT),
    "TINKERSTORE_SWEEP_INTERVAL": "0.5",
    "TINKERSTORE_SWEEP_GRACE": "1",
    "TINKERSTORE_ARCHIVE_BUILD_WAIT": "0",  # always see the 503 + Retry-After first
    "TINKERSTORE_LONG_POLL_SECONDS": "5",
}


@dataclass
class Cluster:
    a: LiveServer
    b: LiveServer
    env: dict[str, str]
    data_dir: Path
    key: str
    store: Store  # a third handle on the same store, for checks

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key, "X-Stainless-Package-Version": "0.38.0"}


def _seed(store: Store) -> str:
    _, key = store.create_api_key("alice")
    me = store.authenticate(key)
    store.create_run(me, RUN, base_model="tiny-qwen3", lora_config={"rank": 4})
    store.save_files(me, RUN, CheckpointKind.WEIGHTS, "seeded", FILES)
    store.save_files(me, RUN, CheckpointKind.EXTERNAL_WEIGHTS, "ext", FILES)
    return key


def _start_cluster(stack: ExitStack, root: Path, env: dict[str, str]) -> Cluster:
    data_dir = root / "data"
    store = open_store_env(data_dir, env)
    stack.callback(store.catalog.close)
    key = _seed(store)
    a = stack.enter_context(live_server(root / "a", **env, **REPLICA_ENV))
    b = stack.enter_context(live_server(root / "b", **env, **REPLICA_ENV))
    return Cluster(a, b, env, data_dir, key, store)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Replicas A and B on one fresh PostgreSQL database and S3 prefix."""
    root = tmp_path_factory.mktemp("replicas")
    with store_env("pg-s3", root / "data") as env, ExitStack() as stack:
        yield _start_cluster(stack, root, env)


@pytest.fixture(scope="module")
def shared_dir_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Replicas A and B on PostgreSQL + one shared blob directory (e.g. NFS): they sign URLs."""
    root = tmp_path_factory.mktemp("shared")
    db, _ = require_scale_env()
    with fresh_postgres_database(db) as url, ExitStack() as stack:
        env = {"TINKERSTORE_DATABASE_URL": url, "TINKERSTORE_BLOB_URL": (root / "blobs").as_uri()}
        yield _start_cluster(stack, root, env)


# -- helpers ---------------------------------------------------------------------------------


def post(server: LiveServer, c: Cluster, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(f"{server.url}/api/v1/{path}", json=body, headers=c.headers, timeout=60)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def result(server: LiveServer, c: Cluster, future: dict[str, Any], timeout: float = 120) -> Any:
    """Poll ``retrieve_future`` on ``server`` until the future is done or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = post(server, c, "retrieve_future", {"request_id": future["request_id"]})
        if out.get("type") != "try_again":
            return out
    raise AssertionError(f"future {future['request_id']} still pending after {timeout} s")


def new_session(server: LiveServer, c: Cluster) -> str:
    body = {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"}
    return str(post(server, c, "create_session", body)["session_id"])


def create_model(server: LiveServer, c: Cluster, session: str) -> Any:
    body = {"session_id": session, "model_seq_id": 0, "base_model": "tiny-qwen3"}
    return post(server, c, "create_model", {**body, "lora_config": {"rank": 4}})


def archive_url(server: LiveServer, c: Cluster, run_id: str, name: str) -> tuple[str, int]:
    """The 0.25 archive request as the SDK makes it (``Accept: application/json``, 0.25
    headers), retried while the answer is 503 + Retry-After. Returns the URL and the 503 count."""
    url = f"{server.url}/api/v1/training_runs/{run_id}/checkpoints/weights/{name}/archive"
    headers = {**c.headers, "Accept": "application/json", "X-Stainless-Package-Version": "0.25.0"}
    waits = 0
    for _ in range(300):
        r = httpx.get(url, headers=headers, timeout=30)
        if r.status_code == 503:
            waits += 1
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            time.sleep(0.1)  # the SDK would wait Retry-After seconds; the test is impatient
            continue
        assert r.status_code == 200, r.text
        return str(r.json()["url"]), waits
    raise AssertionError("the archive was never built")


def external_urls(server: LiveServer, c: Cluster, name: str = "ext") -> dict[str, str]:
    url = f"{server.url}/api/v1/training_runs/{RUN}/checkpoints/external_weights/{name}"
    r = httpx.get(f"{url}/external_weights_urls", headers=c.headers, timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json()["urls"])


def untar(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def tamper(url: str, param: str) -> str:
    """``url`` with the last character of query parameter ``param`` changed."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    value = query[param]
    query[param] = value[:-1] + ("0" if value[-1] != "0" else "1")
    return urlunsplit(parts._replace(query=urlencode(query)))


# -- tests -----------------------------------------------------------------------------------


def test_a_save_through_a_is_listed_loaded_and_downloaded_through_b(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    session = new_session(a, cluster)
    created = create_model(a, cluster, session)
    # The future was created and finished on A; B finds it in the catalog.
    out = result(b, cluster, created)
    assert "model_id" in out, out
    model_id = out["model_id"]
    saved = post(a, cluster, "save_weights", {"model_id": model_id, "path": "w1", "seq_id": 1})
    path = result(b, cluster, saved)["path"]
    assert path == f"tinker://{model_id}/weights/w1"

    # Listed and described through B.
    listed = httpx.get(f"{b.url}/api/v1/training_runs/{model_id}/checkpoints",
                       headers=cluster.headers, timeout=30).json()["checkpoints"]  # fmt: skip
    assert [c["tinker_path"] for c in listed] == [path]
    info = post(b, cluster, "weights_info", {"tinker_path": path})
    assert info["base_model"] == "tiny-qwen3" and info["lora_rank"] == 4

    # Training models live where they were created: B refuses A's model with a clear 404.
    r = httpx.post(f"{b.url}/api/v1/get_info", json={"model_id": model_id},
                   headers=cluster.headers, timeout=30)  # fmt: skip
    assert r.status_code == 404 and model_id in r.json()["detail"]

    # Loaded through B: a new model on B created from A's checkpoint (create-via-load).
    session_b = new_session(b, cluster)
    body = {"path": path, "optimizer": False, "session_id": session_b, "model_seq_id": 0}
    loaded = post(b, cluster, "load_weights", body)
    out = result(a, cluster, loaded)  # and its future retrieved through A
    assert "error" not in out, out

    # Downloaded through B: the archive is a presigned URL of a tar object built once.
    url, waits = archive_url(b, cluster, model_id, "w1")
    assert waits >= 1 and "X-Amz-Signature=" in url
    members = untar(httpx.get(url, timeout=60).content)
    record = cluster.store.catalog.get_checkpoint(model_id, CheckpointKind.WEIGHTS, "w1")
    assert record is not None
    manifest = cluster.store.manifest(record)
    assert set(members) == {f.path for f in manifest.files} | {"checkpoint_complete"}
    # A asks for the same archive: already cached, answered at once with a presigned URL.
    again, waits = archive_url(a, cluster, model_id, "w1")
    assert waits == 0 and "X-Amz-Signature=" in again


def test_presigned_urls_verify_at_the_object_store(cluster: Cluster) -> None:
    """The server hands out the object store's own URLs: they work without any credentials, and
    a tampered signature, expiry or key is refused by SeaweedFS itself."""
    urls = external_urls(cluster.a, cluster)
    assert sorted(urls) == sorted(FILES)
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    for name, url in urls.items():
        assert url.startswith(endpoint), url
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == DIGESTS[name]
        assert r.headers["content-length"] == str(len(FILES[name]))
    url = urls["adapter_model.safetensors"]
    assert httpx.get(tamper(url, "X-Amz-Signature"), timeout=30).status_code == 403
    assert httpx.get(tamper(url, "X-Amz-Expires"), timeout=30).status_code == 403
    other_key = url.replace("adapter_model.safetensors", "adapter_config.json")
    assert httpx.get(other_key, timeout=30).status_code == 403
    archive, _ = archive_url(cluster.b, cluster, RUN, "seeded")
    assert untar(httpx.get(archive, timeout=30).content) == {
        **DIGESTS,
        "checkpoint_complete": hashlib.sha256(b"").hexdigest(),
    }
    assert httpx.get(tamper(archive, "X-Amz-Signature"), timeout=30).status_code == 403


def _saver(c: Cluster, name: str, stage: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, **c.env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.scale.slow_saver", str(c.data_dir), c.key, RUN, name, stage],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if line[:2] != ["AT", stage]:
        proc.kill()
        raise AssertionError(f"saver failed: {line} {proc.stderr.read() if proc.stderr else ''}")
    return proc, line[2]


def test_killed_writers_and_replica_leave_nothing_and_the_survivor_sweeps(
    cluster: Cluster,
) -> None:
    """Runs last in this module: it kills replica A."""
    store = cluster.store
    # Writers die with SIGKILL mid-save: during a multipart upload, and after the manifest was
    # written but before the catalog commit. The second one overwrites a live checkpoint.
    dying = [_saver(cluster, "dying", "files"), _saver(cluster, "seeded", "manifest")]
    for proc, _ in dying:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    versions = [vid for _, vid in dying]
    for vid in versions:
        version = store.catalog.get_version(vid)
        assert version is not None and version.state is VersionState.PENDING
    # A future in flight on replica A when A is killed.
    future = create_model(cluster.a, cluster, new_session(cluster.a, cluster))
    cluster.a.proc.send_signal(signal.SIGKILL)
    cluster.a.proc.wait()

    # B serves on; nothing of the dead saves is visible, the old "seeded" still is, intact.
    listed = httpx.get(f"{cluster.b.url}/api/v1/training_runs/{RUN}/checkpoints",
                       headers=cluster.headers, timeout=30).json()["checkpoints"]  # fmt: skip
    assert {c["checkpoint_id"] for c in listed} == {"weights/seeded", "external_weights/ext"}
    r = httpx.post(f"{cluster.b.url}/api/v1/weights_info", headers=cluster.headers,
                   json={"tinker_path": f"tinker://{RUN}/weights/dying"}, timeout=30)  # fmt: skip
    assert r.status_code == 404
    archive, _ = archive_url(cluster.b, cluster, RUN, "seeded")
    assert (
        untar(httpx.get(archive, timeout=30).content)["adapter_model.safetensors"]
        == (DIGESTS["adapter_model.safetensors"])
    )

    # B still answers polls of the dead replica's future (from the catalog): done, if A finished
    # it in time, else pending (nothing can tell a dead replica's work from slow work).
    out = post(cluster.b, cluster, "retrieve_future", {"request_id": future["request_id"]})
    assert "model_id" in out or out.get("type") == "try_again", out

    # B's sweeper turns the dead saves failed after the pending timeout, then removes bytes.
    deadline = time.monotonic() + PENDING_TIMEOUT + 60
    while time.monotonic() < deadline:
        gone = [store.catalog.get_version(vid) is None for vid in versions]
        if all(gone):
            break
        time.sleep(0.25)
    else:
        states = [store.catalog.get_version(v) for v in versions]
        raise AssertionError(f"the survivor did not sweep the dead saves: {states}")
    for vid in versions:
        assert not any(p == f"v/{vid}/" for p, _ in store.blobs.list_prefixes("v/"))
    report = verify_store(store)
    assert report.ok, [str(p) for p in report.problems]


def test_a_url_signed_by_one_replica_verifies_on_the_other(shared_dir_cluster: Cluster) -> None:
    """On a shared directory the replicas sign URLs themselves, with the secret they share
    through the catalog: A's URL, sent to B, downloads; tampered, B refuses it."""
    c = shared_dir_cluster
    urls = external_urls(c.a, c)
    for name, url in urls.items():
        assert url.startswith(f"{c.a.url}/api/v1/signed/")
        on_b = url.replace(c.a.url, c.b.url)
        r = httpx.get(on_b, timeout=30)
        assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == DIGESTS[name]
        assert httpx.get(tamper(on_b, "sig"), timeout=30).status_code == 403
    archive, waits = archive_url(c.a, c, RUN, "seeded")
    assert waits == 0  # local files: the archive is streamed, never prepared
    r = httpx.get(archive.replace(c.a.url, c.b.url), timeout=30)
    assert (
        r.status_code == 200
        and untar(r.content)["adapter_config.json"] == (DIGESTS["adapter_config.json"])
    )
