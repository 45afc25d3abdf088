"""``POST /api/v1/retrieve_future``: a long poll (protocol §3).

The SDK polls again the moment it gets ``try_again``, so answering at once would make it spin.
The poll is held until the future finishes or ``long_poll_seconds`` (25 s, below the SDK's 45 s
poll timeout) pass. A finished future's body goes out exactly as stored: JSON, or protobuf for
forward/backward and sampling results; a failure is ``{"error", "category"}`` with HTTP 200.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from tinkerstore.server.auth import Caller, Settings
from tinkerstore.server.futures import FutureEngine
from tinkerstore.store.catalog.base import FutureState
from tinkerstore.types import FutureRetrieveRequest, RequestFailedResponse, TryAgainResponse

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["futures"])


@router.post(
    "/retrieve_future",
    response_model=TryAgainResponse | RequestFailedResponse | dict[str, object],
    responses={200: {"content": {"application/x-protobuf": {}}}},
)
async def retrieve_future(
    body: FutureRetrieveRequest, request: Request, caller: Caller, settings: Settings
) -> Response:
    engine: FutureEngine = request.app.state.futures
    record = await engine.wait(body.request_id, caller.user_id, settings.long_poll_seconds)
    if record.state == FutureState.PENDING or record.result is None:
        again = TryAgainResponse(request_id=record.request_id, queue_state="active")
        return Response(again.model_dump_json(), media_type="application/json")
    return Response(record.result, media_type=record.content_type)
