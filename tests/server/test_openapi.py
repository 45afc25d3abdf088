"""/openapi.json documents every endpoint, with a response schema for each JSON answer."""

from __future__ import annotations

import warnings

import httpx
import pytest
from fastapi.routing import APIRoute

from tinkerstore.server import (
    routes_checkpoints,
    routes_download,
    routes_futures,
    routes_session,
    routes_training,
)

pytestmark = pytest.mark.anyio


async def test_every_route_is_documented_with_a_response_model(client: httpx.AsyncClient) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. duplicate operation ids
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    routers = [routes_session, routes_futures, routes_checkpoints, routes_download, routes_training]
    routes = [
        route
        for module in routers
        for route in module.router.routes
        if isinstance(route, APIRoute) and route.include_in_schema
    ]
    assert len(routes) >= 29
    for route in routes:
        path = route.path_format.replace("{relpath:path}", "{relpath}")
        for method in route.methods - {"HEAD"}:
            operation = paths[path][method.lower()]
            responses = operation["responses"]
            ok = responses.get("200") or responses.get("204")
            assert ok is not None, (method, path)
            if "200" in responses and "signed" not in path:
                assert responses["200"]["content"]["application/json"]["schema"], (method, path)
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    key = r.json()["components"]["securitySchemes"]
    assert any(s.get("name") == "X-API-Key" for s in key.values())
