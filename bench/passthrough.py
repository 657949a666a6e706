"""The floor the openai SDK sets: a bare pass-through, for `bench/run`'s `sdk` target.

A Starlette app under uvicorn (uvloop, httptools, like the gateway) that forwards each
chat completion to the upstream through one `AsyncOpenAI` client on the SDK's aiohttp
transport, as the gateway does: the model and parameters set here, the body's messages
passed on, the answer returned as the upstream sent it (streams re-emitted as SSE). No
cache, no validation, no metrics: what is left of the gateway's overhead over this one
is the gateway's own.

Run: `UPSTREAM_URL=http://127.0.0.1:PORT/v1 python -m bench.passthrough PORT`
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from bench.targets import MODEL, PARAMS, UPSTREAM_KEY

client = openai.AsyncOpenAI(
    api_key=UPSTREAM_KEY,
    base_url=os.environ.get("UPSTREAM_URL", "http://127.0.0.1:8001/v1"),
    max_retries=0,
    timeout=10,
    http_client=openai.DefaultAioHttpClient(
        limits=httpx2.Limits(max_connections=100, max_keepalive_connections=100), timeout=10
    ),
)


async def chat(request: Request) -> Response:
    body: dict[str, Any] = orjson.loads(await request.body())
    forwarded = {**PARAMS, "messages": body["messages"], "model": MODEL}
    if not body.get("stream"):
        raw = await client.post("/chat/completions", body=forwarded, cast_to=httpx2.Response)
        return Response(raw.content, media_type="application/json")
    chunks = await client.chat.completions.create(**forwarded, stream=True)

    async def events() -> AsyncIterator[bytes]:
        async with chunks:
            async for chunk in chunks:
                yield b"data: " + chunk.model_dump_json().encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def health(request: Request) -> Response:
    return Response(b"ok")


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
