"""Archive and external-weights URLs, and the signed downloads behind them."""

from __future__ import annotations

import io
import tarfile
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest
from fastapi import FastAPI

from tests.server.conftest import FILES, RUN, V025, V038, User, make_run, save
from tinkerstore.server import ServerSettings, create_app
from tinkerstore.server.signing import UrlSigner, archive_path
from tinkerstore.service import Store
from tinkerstore.types.paths import CheckpointKind

pytestmark = pytest.mark.anyio
CK = f"/api/v1/training_runs/{RUN}/checkpoints"
JSON_ONLY = {"Accept": "application/json"}


@pytest.fixture
def ckpt(store: Store, alice: User) -> str:
    make_run(store, alice)
    return save(store, alice, "w1").version_id


async def archive_url(client: httpx.AsyncClient, user: User, name: str = "w1") -> str:
    r = await client.get(
        f"{CK}/weights/{name}/archive", headers={"X-API-Key": user.key, **V025, **JSON_ONLY}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["url"])


async def test_archive_url_json_and_redirect_forms(
    client: httpx.AsyncClient, alice: User, ckpt: str
) -> None:
    before = time.time()
    r = await client.get(
        f"{CK}/weights/w1/archive", headers={"X-API-Key": alice.key, **V025, **JSON_ONLY}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    expires = datetime.fromisoformat(body["expires"])
    assert expires.tzinfo is not None and 890 < expires.timestamp() - before < 910
    assert body["url"].startswith("http://testserver/api/v1/signed/")
    r = await client.get(
        f"{CK}/weights/w1/archive", headers={"X-API-Key": alice.key, "Accept": "*/*"}
    )
    assert r.status_code == 302 and r.headers["location"].startswith(
        "http://testserver/api/v1/signed/"
    )
    assert abs(parsedate_to_datetime(r.headers["expires"]).timestamp() - expires.timestamp()) < 15


async def test_archive_extracts_to_exactly_the_files_plus_marker(
    client: httpx.AsyncClient, alice: User, ckpt: str
) -> None:
    url = await archive_url(client, alice)
    r = await client.get(url)  # no key: the URL is the capability
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert int(r.headers["content-length"]) == len(r.content)
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        assert all(m.isreg() for m in tar.getmembers())
        assert tar.getnames()[-1] == "checkpoint_complete"
    assert got == {**FILES, "checkpoint_complete": b""}
    head = await client.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(r.content))
    assert head.content == b""


async def test_range_resume_gives_identical_bytes(
    client: httpx.AsyncClient, alice: User, ckpt: str
) -> None:
    url = await archive_url(client, alice)
    whole = (await client.get(url)).content
    first = await client.get(url, headers={"Range": "bytes=0-999"})
    assert (
        first.status_code == 206 and first.headers["content-range"] == f"bytes 0-999/{len(whole)}"
    )
    etag = first.headers["etag"]
    rest = await client.get(url, headers={"Range": "bytes=1000-", "If-Range": etag})
    assert rest.status_code == 206 and int(rest.headers["content-length"]) == len(whole) - 1000
    assert first.content + rest.content == whole
    tail = await client.get(url, headers={"Range": "bytes=-700"})
    assert tail.status_code == 206 and tail.content == whole[-700:]
    # a stale If-Range restarts from scratch
    stale = await client.get(url, headers={"Range": "bytes=1000-", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == whole
    bad = await client.get(url, headers={"Range": f"bytes={len(whole)}-"})
    assert bad.status_code == 416 and bad.json()["code"] == "range_not_satisfiable"
    assert bad.headers["content-range"] == f"bytes */{len(whole)}"


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))


async def test_tampered_expired_and_cross_checkpoint_urls_are_403(
    app: FastAPI, client: httpx.AsyncClient, store: Store, alice: User, ckpt: str
) -> None:
    url = await archive_url(client, alice)
    sig = parse_qs(urlsplit(url).query)["sig"][0]
    exp = parse_qs(urlsplit(url).query)["exp"][0]
    cases = {
        "signature_invalid": [
            _with_query(url, sig="0" * 64),
            _with_query(url, exp=str(int(exp) + 3600)),
            url.split("?")[0],
            _with_query(url, sig=sig[:-1]),
        ],
    }
    other = save(store, alice, "w2")
    cross = url.replace(ckpt, other.version_id)
    cases["signature_invalid"].append(cross)
    signer: UrlSigner = app.state.signer
    cases["url_expired"] = [
        signer.sign_url("http://testserver", archive_path(ckpt), ckpt, int(time.time()) - 1)
    ]
    for code, urls in cases.items():
        for bad in urls:
            r = await client.get(bad)
            assert r.status_code == 403, bad
            assert r.json()["code"] == code and r.json()["detail"]
    # a URL signed with another secret is worthless here
    foreign = UrlSigner(b"x" * 32).sign_url(
        "http://testserver", archive_path(ckpt), ckpt, int(time.time()) + 60
    )
    assert (await client.get(foreign)).status_code == 403


async def test_url_dies_with_its_version(
    client: httpx.AsyncClient, store: Store, alice: User, ckpt: str
) -> None:
    url = await archive_url(client, alice)
    save(store, alice, "w1", files={"new.bin": b"new"}, overwrite=True)
    r = await client.get(url)
    assert r.status_code == 404 and r.json()["code"] == "checkpoint_not_found"
    fresh = await archive_url(client, alice)
    with tarfile.open(fileobj=io.BytesIO((await client.get(fresh)).content)) as tar:
        assert tar.getnames() == ["new.bin", "checkpoint_complete"]
    store.delete_checkpoint(alice.principal, f"tinker://{RUN}/weights/w1")
    assert (await client.get(fresh)).status_code == 404


async def test_external_weights_urls(
    client: httpx.AsyncClient, store: Store, alice: User, bob: User
) -> None:
    make_run(store, alice)
    save(store, alice, "e1", CheckpointKind.EXTERNAL_WEIGHTS)
    url = f"{CK}/external_weights/e1/external_weights_urls"
    r = await client.get(url, headers=alice.headers)
    assert r.status_code == 200
    body = r.json()
    assert set(body["urls"]) == set(FILES)
    assert datetime.fromisoformat(body["expires"]).tzinfo is not None
    assert datetime.fromisoformat(body["expires"]) > datetime.now(UTC)
    for relpath, file_url in body["urls"].items():
        got = await client.get(file_url)
        assert got.status_code == 200 and got.content == FILES[relpath]
        assert got.headers["content-length"] == str(len(FILES[relpath]))
    big = body["urls"]["adapter_model.safetensors"]
    part = await client.get(big, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == FILES["adapter_model.safetensors"][100:200]
    # re-signing gives the same key set
    again = await client.get(url, headers=alice.headers)
    assert set(again.json()["urls"]) == set(FILES)
    # a URL for one file does not open another
    cfg = body["urls"]["adapter_config.json"]
    assert (
        await client.get(cfg.replace("adapter_config.json", "extra/readme.txt"))
    ).status_code == 403
    assert (await client.get(url, headers=bob.headers)).status_code == 404


async def test_public_base_url_setting(store: Store, alice: User, ckpt: str) -> None:
    settings = ServerSettings(
        public_base_url="https://dl.example.org/prefix/", sweep_interval_seconds=0
    )
    app = create_app(settings, store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as c:
        r = await c.get(f"{CK}/weights/w1/archive", headers={"X-API-Key": alice.key, **JSON_ONLY})
        assert r.json()["url"].startswith("https://dl.example.org/prefix/api/v1/signed/")


async def test_archive_for_a_published_checkpoint_of_another_user(
    client: httpx.AsyncClient, store: Store, alice: User, bob: User, ckpt: str
) -> None:
    r = await client.get(
        f"{CK}/weights/w1/archive", headers={"X-API-Key": bob.key, **V038, **JSON_ONLY}
    )
    assert r.status_code == 404
    store.publish(alice.principal, f"tinker://{RUN}/weights/w1")
    url = await archive_url(client, bob)
    assert (await client.get(url)).status_code == 200
