"""Every checkpoint endpoint, every kind of caller, private/published, each outcome asserted.

Rules: a missing, unknown or revoked key is 401; another user's private run or checkpoint is 404
(no existence leak); a published checkpoint is readable by any authenticated user, while only its
owner may delete, publish, unpublish or change its TTL.
"""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import RUN, V038, make_run, make_user, save
from tinkerstore.service import Store
from tinkerstore.types.paths import CheckpointKind

pytestmark = pytest.mark.anyio
CK = f"/api/v1/training_runs/{RUN}/checkpoints"
PATH = f"tinker://{RUN}/external_weights/c"

# (name, method, url, json body, is_read)
ENDPOINTS = [
    ("get_run", "GET", f"/api/v1/training_runs/{RUN}?access_scope=accessible", None, True),
    ("list_run_checkpoints", "GET", CK, None, True),
    ("weights_info", "POST", "/api/v1/weights_info", {"tinker_path": PATH}, True),
    ("archive", "GET", f"{CK}/external_weights/c/archive", None, True),
    ("external_urls", "GET", f"{CK}/external_weights/c/external_weights_urls", None, True),
    ("set_ttl", "PUT", f"{CK}/external_weights/c/ttl", {"ttl_seconds": 7200}, False),
    ("publish", "POST", f"{CK}/external_weights/c/publish", None, False),
    ("unpublish", "DELETE", f"{CK}/external_weights/c/publish", None, False),
    ("delete", "DELETE", f"{CK}/external_weights/c", None, False),
]


@pytest.mark.parametrize("published", [False, True], ids=["private", "published"])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
async def test_auth_matrix(
    client: httpx.AsyncClient, store: Store, endpoint: tuple, published: bool
) -> None:
    name, method, url, body, is_read = endpoint
    owner = make_user(store, "owner")
    other = make_user(store, "other")
    make_run(store, owner)
    save(store, owner, "c", CheckpointKind.EXTERNAL_WEIGHTS)
    if published:
        store.publish(owner.principal, PATH)
    record, revoked_key = store.create_api_key("owner")
    store.catalog.revoke_api_key(record.key_id, store.now())
    keys = {
        "none": None,
        "malformed": "sk-not-a-tinker-key",
        "unknown": "tml-" + "x" * 43,
        "revoked": revoked_key,
        "other": other.key,
        "owner": owner.key,  # last: the owner's call may change the checkpoint
    }
    for caller, key in keys.items():
        headers = {**V038, "Accept": "application/json"}
        if key is not None:
            headers["X-API-Key"] = key
        r = await client.request(method, url, json=body, headers=headers)
        assert r.status_code == 204 or r.headers["content-type"].startswith("application/json")
        if caller in ("none", "malformed", "unknown", "revoked"):
            expected = 401
        elif caller == "owner" or (published and is_read):
            expected = 204 if method in ("PUT", "DELETE") or name == "publish" else 200
        else:
            expected = 404
        assert r.status_code == expected, (name, caller, published, r.status_code, r.text)
        if expected >= 400:
            assert r.json()["detail"] and r.json()["code"]
        # a mutation by anyone but the owner changed nothing
        if caller != "owner":
            current = store.catalog.get_checkpoint(RUN, CheckpointKind.EXTERNAL_WEIGHTS, "c")
            assert (
                current is not None and current.public == published and current.expires_at is None
            )
