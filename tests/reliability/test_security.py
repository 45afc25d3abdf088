"""Item 5: authentication on every endpoint, isolation between users, signed URLs, path
traversal in every id and name position, keys stored hashed, file modes, body limits, and no
unpickling anywhere in the repository."""

from __future__ import annotations

import ast
import http.client
import re
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from tests.reliability.conftest import RUN, add_figure, make_run, make_user, save
from tests.server.live import live_server
from tinkerstore.server import ServerSettings, create_app
from tinkerstore.server.signing import file_path
from tinkerstore.service import Store, open_store
from tinkerstore.types.paths import CheckpointKind

REPO = Path(__file__).resolve().parents[2]
V038 = {"X-Stainless-Package-Version": "0.38.0", "Accept": "application/json"}
# Open on purpose: health checks, telemetry (the SDK resends forever on anything but
# "accepted") and the signed downloads (the URL carries its own authority).
UNAUTHENTICATED = {
    ("GET", "/api/v1/healthz"),
    ("POST", "/api/v1/telemetry"),
    ("GET", "/api/v1/signed/{version_id}/archive.tar"),
    ("GET", "/api/v1/signed/{version_id}/files/{relpath}"),
}
FILL = {
    "run_id": RUN, "kind": "weights", "name": "c", "session_id": "s1", "sampler_id": "x",
    "version_id": "0" * 32, "relpath": "a.bin",
}  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Store]:
    store = open_store(tmp_path / "data")
    yield store
    store.catalog.close()


@pytest.fixture
def app(local: Store) -> FastAPI:
    settings = ServerSettings(
        long_poll_seconds=0.5, sweep_interval_seconds=0, max_body_bytes=64 * 1024
    )
    return create_app(settings, local)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            yield c


# -- authentication and isolation -------------------------------------------------------------
@pytest.mark.anyio
async def test_every_endpoint_but_the_open_ones_needs_a_valid_key(
    client: httpx.AsyncClient, app: FastAPI, local: Store
) -> None:
    owner = make_user(local, "owner")
    record, revoked = local.create_api_key("owner")
    local.users.revoke_api_key(record.key_id, local.now())
    bad_keys = {"none": None, "malformed": "Bearer x", "unknown": "tml-" + "A" * 43}
    bad_keys["revoked"] = revoked
    operations = [
        (method.upper(), path, bool(op.get("security")))
        for path, ops in app.openapi()["paths"].items()
        for method, op in ops.items()
    ]
    assert {(m, p) for m, p, secured in operations if not secured} == UNAUTHENTICATED
    checked = 0
    for method, path, secured in operations:
        if not secured:
            continue
        url = path.format(**FILL)
        for label, key in bad_keys.items():
            headers = dict(V038, **({"X-API-Key": key} if key else {}))
            r = await client.request(method, url, headers=headers, json={})
            assert r.status_code == 401, (method, path, label, r.status_code, r.text)
            assert r.json()["code"] == "unauthenticated"
            checked += 1
    # The owner's key still works: the revoked key did not take it down.
    r = await client.get("/api/v1/training_runs", headers={"X-API-Key": owner.key, **V038})
    assert r.status_code == 200
    add_figure("auth matrix requests (bad keys)", checked)


@pytest.mark.anyio
async def test_nothing_of_a_private_checkpoint_shows_to_another_user(
    client: httpx.AsyncClient, local: Store
) -> None:
    owner, other = make_user(local, "owner"), make_user(local, "other")
    make_run(local, owner)
    save(local, owner, "secretname", ttl_seconds=7200)
    headers = {"X-API-Key": other.key, **V038}
    ck = f"/api/v1/training_runs/{RUN}/checkpoints/weights/secretname"
    reads = [
        ("GET", "/api/v1/training_runs?access_scope=accessible", None),
        ("GET", f"/api/v1/training_runs/{RUN}?access_scope=accessible", None),
        ("GET", f"/api/v1/training_runs/{RUN}/checkpoints", None),
        ("GET", "/api/v1/checkpoints", None),
        ("GET", "/api/v1/audit", None),
        ("GET", "/api/v1/billing/usage/checkpoints/current", None),
        ("POST", "/api/v1/weights_info", {"tinker_path": f"tinker://{RUN}/weights/secretname"}),
        ("GET", f"{ck}/archive", None),
        ("GET", f"{ck}/external_weights_urls", None),
        ("PUT", f"{ck}/ttl", {"ttl_seconds": None}),
        ("POST", f"{ck}/publish", None),
        ("DELETE", ck, None),
    ]
    for method, url, body in reads:
        r = await client.request(method, url, headers=headers, json=body)
        assert r.status_code in (200, 404), (url, r.status_code, r.text)
        asked = f"{url}{body}"  # an error may echo what the caller asked about, nothing more
        assert "secretname" in asked or "secretname" not in r.text, (url, r.text)
        assert owner.principal.user_id not in r.text and "owner" not in r.text, (url, r.text)
    record = local.catalog.get_checkpoint(RUN, CheckpointKind.WEIGHTS, "secretname")
    assert record is not None and not record.public and record.expires_at is not None


# -- signed URLs ---------------------------------------------------------------------------
def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return f"{parts.scheme}://{parts.netloc}{parts.path}?exp={query['exp']}&sig={query['sig']}"


@pytest.mark.anyio
async def test_signed_urls_cannot_be_forged_replayed_or_bent(
    client: httpx.AsyncClient, app: FastAPI, local: Store
) -> None:
    owner = make_user(local, "owner")
    make_run(local, owner)
    a, b = save(local, owner, "a"), save(local, owner, "b")
    headers = {"X-API-Key": owner.key, **V038}
    urls = {}
    for rec in (a, b):
        r = await client.get(
            f"/api/v1/training_runs/{RUN}/checkpoints/weights/{rec.name}/external_weights_urls",
            headers=headers,
        )
        urls[rec.name] = r.json()["urls"]["adapter_config.json"]
    good = await client.get(urls["a"])
    assert good.status_code == 200
    sig = parse_qs(urlsplit(urls["a"]).query)["sig"][0]
    exp = parse_qs(urlsplit(urls["a"]).query)["exp"][0]
    forged = {
        "flipped signature": _with_query(urls["a"], sig=("0" if sig[0] != "0" else "1") + sig[1:]),
        "later expiry": _with_query(urls["a"], exp=str(int(exp) + 3600)),
        "a's signature on b": _with_query(urls["b"], sig=sig, exp=exp),
        "a's version, b's file": urls["a"].replace("adapter_config.json", "nested/notes.txt"),
        "no signature": urls["a"].split("?")[0],
        "archive with a file's signature": urls["a"].replace(
            "files/adapter_config.json", "archive.tar"
        ),
    }
    for label, url in forged.items():
        r = await client.get(url.replace("http://testserver", ""))
        assert r.status_code == 403, (label, r.status_code, r.text)
        assert r.json()["code"] == "signature_invalid", label
    # Correctly signed but expired, and a URL that worked, replayed after its expiry.
    signer = app.state.signer
    path = file_path(a.version_id, "adapter_config.json")
    expired = signer.sign_url("http://testserver", path, a.version_id, int(time.time()) - 1)
    r = await client.get(expired)
    assert r.status_code == 403 and r.json()["code"] == "url_expired"
    short = signer.sign_url("http://testserver", path, a.version_id, int(time.time()) + 2)
    assert (await client.get(short)).status_code == 200
    time.sleep(2.1)
    r = await client.get(short)
    assert r.status_code == 403 and r.json()["code"] == "url_expired"
    add_figure("forged or expired signed URLs refused", len(forged) + 2)


@pytest.mark.anyio
async def test_a_non_ascii_digit_expiry_is_refused_not_a_crash(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/api/v1/signed/{'0' * 32}/archive.tar?exp=%C2%B2&sig=00")
    assert r.status_code == 403 and r.json()["code"] == "signature_invalid"


# -- path traversal ---------------------------------------------------------------------------
TRAVERSAL = [
    "..", "../..", "../../../../etc/passwd", "..%2f..%2fsecret.txt", "%2e%2e", "%2E%2E%2F%2E%2E",
    "%252e%252e%252f", "..%5c..%5csecret.txt", "....//....//", "%2fetc%2fpasswd", "a%00b",
    "%c0%ae%c0%ae", "~root", ".%2e/.%2e/secret.txt", "v%2f..%2f..%2fsecret.txt",
]  # fmt: skip


def test_path_traversal_in_every_position_never_escapes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    secret = b"TOP-SECRET-OUTSIDE-THE-STORE"
    (tmp_path / "secret.txt").write_bytes(secret)
    store = open_store(data_dir)
    owner = make_user(store, "owner")
    make_run(store, owner)
    record = save(store, owner, "c")
    store.catalog.close()
    templates = [
        ("GET", "/api/v1/training_runs/{x}"),
        ("GET", "/api/v1/training_runs/{x}/checkpoints"),
        ("GET", "/api/v1/training_runs/{x}/checkpoints/weights/c/archive"),
        ("GET", f"/api/v1/training_runs/{RUN}/checkpoints/{{x}}/c/external_weights_urls"),
        ("GET", f"/api/v1/training_runs/{RUN}/checkpoints/weights/{{x}}/external_weights_urls"),
        ("DELETE", f"/api/v1/training_runs/{RUN}/checkpoints/weights/{{x}}"),
        ("POST", f"/api/v1/training_runs/{RUN}/checkpoints/weights/{{x}}/publish"),
        ("GET", "/api/v1/sessions/{x}"),
        ("GET", "/api/v1/samplers/{x}"),
        ("GET", "/api/v1/signed/{x}/archive.tar?exp=9999999999&sig=00"),
        ("GET", f"/api/v1/signed/{record.version_id}/files/{{x}}?exp=9999999999&sig=00"),
        ("GET", f"/api/v1/signed/{record.version_id}/files/{{x}}/secret.txt"),
    ]
    bodies = [
        ("/api/v1/weights_info", lambda x: {"tinker_path": f"tinker://{x}/weights/c"}),
        ("/api/v1/weights_info", lambda x: {"tinker_path": f"tinker://{RUN}/weights/{x}"}),
        ("/api/v1/weights_info", lambda x: {"tinker_path": f"tinker://{RUN}/{x}/c"}),
    ]
    sent = 0
    with live_server(data_dir) as server:
        host, port = server.url.removeprefix("http://").split(":")
        headers = {"X-API-Key": owner.key, "Content-Type": "application/json", **V038}
        for x in TRAVERSAL:
            for method, template in templates:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                conn.request(method, template.replace("{x}", x), headers=headers)  # raw: no
                response = conn.getresponse()  # client-side normalisation of dot segments
                body = response.read()
                conn.close()
                assert response.status < 500, (method, template, x, response.status, body)
                # Nothing that moves or serves bytes may succeed on a traversal attempt.
                serves_bytes = "archive" in template or "files" in template
                succeeded = response.status in (200, 204, 206)
                assert not succeeded or (method == "GET" and not serves_bytes), (template, x)
                assert secret not in body
                sent += 1
            for url, make in bodies:
                r = httpx.post(f"{server.url}{url}", json=make(x), headers=headers)
                assert r.status_code in (400, 404), (url, x, r.status_code, r.text)
                assert secret not in r.content
                sent += 1
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    add_figure("path traversal requests refused", sent)


# -- secrets at rest ---------------------------------------------------------------------------
def test_api_keys_are_stored_only_hashed(tmp_path: Path) -> None:
    store = open_store(tmp_path / "data")
    keys = [store.create_api_key(f"user{i}")[1] for i in range(3)]
    store.catalog.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("catalog.db*"))
    assert raw, "no catalog bytes found"
    for key in keys:
        assert key.encode() not in raw
        assert key[4:].encode() not in raw  # not even without its prefix


def test_secrets_are_compared_in_constant_time() -> None:
    """The key check and the URL check go through ``hmac.compare_digest``, and no ``==`` or
    ``!=`` ever touches a hash or a signature in the modules that handle them."""
    for module in ("service/keys.py", "server/signing.py"):
        source = (REPO / "src" / "tinkerstore" / module).read_text()
        assert "hmac.compare_digest(" in source, module
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
            ):
                text = ast.unparse(node)
                assert not re.search(r"hash|sig|digest|mac|expected", text), (module, text)


def test_file_modes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = open_store(data_dir)
    store.signing_secret()  # the URL-signing secret lives in the catalog
    store.catalog.close()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    # Everything below a 0700 directory is out of other users' reach whatever its own mode;
    # the catalog holds the signing secret, so it should be 0600 on its own as well.
    mode = stat.S_IMODE((data_dir / "catalog.db").stat().st_mode)
    assert mode == 0o600, f"catalog.db (holds the URL-signing secret) is {oct(mode)}"


# -- request size -----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_request_bodies_are_size_limited(client: httpx.AsyncClient, local: Store) -> None:
    owner = make_user(local, "owner")
    headers = {"X-API-Key": owner.key, **V038}
    big = b'{"tinker_path": "' + b"a" * (65 * 1024) + b'"}'
    r = await client.post("/api/v1/weights_info", content=big, headers=headers)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 8192

    r = await client.post("/api/v1/weights_info", content=chunks(), headers=headers)
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    r = await client.post("/api/v1/telemetry", content=big, headers=V038)  # open endpoint too
    assert r.status_code == 413


# -- never unpickle ---------------------------------------------------------------------------
PICKLE = re.compile(
    r"\bimport pickle\b|\bfrom pickle\b|\bpickle\.loads?\b|\btorch\.load\(|\bjoblib\b|\bdill\b|"
    r"\bcloudpickle\b|allow_pickle\s*=\s*True|\bshelve\b|\bmarshal\.loads?\b"
)


def test_nothing_is_unpickled_in_tests_bench_or_scripts() -> None:
    """``tests/test_package.py`` scans ``src``; this covers everything else we ship or run."""
    me = Path(__file__).resolve()
    files = [
        p
        for top in ("tests", "bench", "scripts")
        for p in (REPO / top).rglob("*")
        if p.is_file() and p.suffix in (".py", ".sh", "") and p.resolve() != me
        and p.name != "test_package.py" and ".venv" not in p.parts
    ]  # fmt: skip
    offenders = [
        f"{p.relative_to(REPO)}:{i + 1}: {line.strip()}"
        for p in files
        for i, line in enumerate(p.read_text(errors="replace").splitlines())
        if PICKLE.search(line) and "weights_only=True" not in line
    ]
    assert offenders == []
