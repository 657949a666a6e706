"""The published shapes of OpenAI's API, checked on every answer a test reads (SPEC §2).

`openai_openapi.json` holds the part of OpenAI's OpenAPI description the gateway's
bodies must match (its `x-source` names the repository, file and commit it was cut
from). The description is OpenAPI 3.1 but still marks some fields with 3.0's
`nullable: true`, which JSON Schema ignores; it is read here as the SDK generators read
it: such a field also admits `null`.

`checked_client()` and `checked_sdk()` give an httpx client and an official SDK client
whose transport validates each body as it is read: a JSON answer once complete, each
event of a stream as it arrives (a `data:` event is a chunk, or an in-band error).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import jsonschema
import openai
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_DOCUMENT = Path(__file__).with_name("openai_openapi.json")
_BASE = "urn:openai-openapi"


def _with_nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema: the same schema, or `null`."""
    if isinstance(node, list):
        return [_with_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _with_nullable(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def _registry() -> Registry:
    document = _with_nullable(json.loads(_DOCUMENT.read_text()))
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry: Registry = Registry().with_resource(_BASE, resource)
    return registry


_REGISTRY = _registry()
_VALIDATORS: dict[str, jsonschema.Draft202012Validator] = {}


def check(schema: str, instance: Any) -> None:
    """Raise AssertionError when `instance` is not a valid `schema` (a schema's name in
    the description, e.g. `CreateChatCompletionResponse`)."""
    validator = _VALIDATORS.get(schema)
    if validator is None:
        ref = {"$ref": f"{_BASE}#/components/schemas/{schema}"}
        validator = jsonschema.Draft202012Validator(ref, registry=_REGISTRY)
        _VALIDATORS[schema] = validator
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
        raise AssertionError(f"not a valid {schema} at {where}: {errors[0].message}: {instance}")


def schema_for(method: str, path: str, status: int) -> str | None:
    """The published schema a JSON answer to `method path` must match, if any."""
    if status >= 400:
        return "ErrorResponse"
    if method == "POST" and path == "/v1/chat/completions":
        return "CreateChatCompletionResponse"
    if method == "GET" and path == "/v1/models":
        return "ListModelsResponse"
    if method == "GET" and path.startswith("/v1/models/"):
        return "Model"
    return None


def check_event(data: str) -> None:
    """One SSE `data:` payload of a chat stream: a chunk, an in-band error or `[DONE]`."""
    if data == "[DONE]":
        return
    payload = json.loads(data)
    check("ErrorResponse" if "error" in payload else "CreateChatCompletionStreamResponse", payload)


def _checked(inner: Iterable[bytes], schema: str | None, sse: bool) -> Iterator[bytes]:
    """Pass `inner` on, checking each stream event as it completes, or the JSON body once
    it is whole."""
    pending = b""
    body: list[bytes] = []
    for chunk in inner:
        if sse:
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            for event in events:
                for line in event.decode().splitlines():
                    if line.startswith("data: "):
                        check_event(line.removeprefix("data: "))
        else:
            body.append(chunk)
        yield chunk
    if not sse and schema is not None:
        check(schema, json.loads(b"".join(body)))


def _what_to_check(
    method: str, path: str, status: int, content_type: str
) -> tuple[str | None, bool] | None:
    sse = content_type.startswith("text/event-stream")
    schema = schema_for(method, path, status)
    if not sse and not (schema and content_type.startswith("application/json")):
        return None
    return schema, sse


Request = httpx.Request | httpx2.Request
Response = httpx.Response | httpx2.Response


def _to_check(request: Request, response: Response) -> tuple[str | None, bool] | None:
    content_type = response.headers.get("content-type", "")
    return _what_to_check(request.method, request.url.path, response.status_code, content_type)


class _Checked:
    """A response body read through `_checked`; mixed into each library's stream class."""

    def __init__(
        self, inner: httpx.SyncByteStream | httpx2.SyncByteStream, schema: str | None, sse: bool
    ) -> None:
        self._inner = inner
        self._checked = _checked(inner, schema, sse)

    def __iter__(self) -> Iterator[bytes]:
        return self._checked

    def close(self) -> None:
        self._inner.close()


class _AsyncChecked:
    """The async twin: the body is read whole, then checked, then handed on."""

    def __init__(
        self, inner: httpx.AsyncByteStream | httpx2.AsyncByteStream, schema: str | None, sse: bool
    ) -> None:
        self._inner = inner
        self._schema = schema
        self._sse = sse

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = [chunk async for chunk in self._inner]
        for chunk in _checked(chunks, self._schema, self._sse):
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CheckedStream(_Checked, httpx.SyncByteStream):
    pass


class _SdkCheckedStream(_Checked, httpx2.SyncByteStream):
    pass


class _AsyncCheckedStream(_AsyncChecked, httpx.AsyncByteStream):
    pass


class _SdkAsyncCheckedStream(_AsyncChecked, httpx2.AsyncByteStream):
    pass


class CheckingTransport(httpx.HTTPTransport):
    """An httpx transport that validates every OpenAI-shaped answer as it is read."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        what = _to_check(request, response)
        if what is not None:
            assert isinstance(response.stream, httpx.SyncByteStream)
            response.stream = _CheckedStream(response.stream, *what)
        return response


class _SdkCheckingTransport(httpx2.HTTPTransport):
    """The same for the official SDK, which speaks through `httpx2`."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        what = _to_check(request, response)
        if what is not None:
            assert isinstance(response.stream, httpx2.SyncByteStream)
            response.stream = _SdkCheckedStream(response.stream, *what)
        return response


class AsyncCheckingTransport(httpx.AsyncHTTPTransport):
    """The async transport's twin: each answer is checked once it has been read whole."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        what = _to_check(request, response)
        if what is not None:
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = _AsyncCheckedStream(response.stream, *what)
        return response


class _SdkAsyncCheckingTransport(httpx2.AsyncHTTPTransport):
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        what = _to_check(request, response)
        if what is not None:
            assert isinstance(response.stream, httpx2.AsyncByteStream)
            response.stream = _SdkAsyncCheckedStream(response.stream, *what)
        return response


class _SdkClient(httpx2.Client):
    """Closed when dropped, as the SDK's own default client is, so a test's client does
    not leave a socket to the garbage collector."""

    def __del__(self) -> None:
        if not self.is_closed:
            self.close()


def checked_client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(transport=CheckingTransport(), **kwargs)


def checked_sdk(base_url: str, api_key: str = "caller-key") -> openai.OpenAI:
    """The official SDK, retries off, reading through the checking transport."""
    http_client = _SdkClient(transport=_SdkCheckingTransport())
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, http_client=http_client)


def checked_async_client(**kwargs: Any) -> httpx.AsyncClient:
    """An async httpx client that checks each answer once read (streams whole, at the end)."""
    return httpx.AsyncClient(transport=AsyncCheckingTransport(), **kwargs)


def checked_async_sdk(
    base_url: str, api_key: str = "caller-key", **kwargs: Any
) -> openai.AsyncOpenAI:
    """The async SDK, retries off, reading through the checking transport; close it."""
    http_client = httpx2.AsyncClient(transport=_SdkAsyncCheckingTransport())
    return openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=0, http_client=http_client, **kwargs
    )
