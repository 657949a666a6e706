"""The schema checker the API tests read through: it refuses what strict clients
generated from OpenAI's description refuse, and takes what OpenAI itself sends."""

from __future__ import annotations

from typing import Any

import pytest

from tests.openai_shapes import check, check_event

CHUNK: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "gpt-3.5-turbo",
    "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}],
}
COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-3.5-turbo",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
}


def test_what_openai_sends_passes() -> None:
    check("CreateChatCompletionResponse", COMPLETION)
    check("CreateChatCompletionStreamResponse", CHUNK)  # `nullable` fields take null
    check_event('{"error": {"message": "m", "type": "t", "param": null, "code": null}}')
    check_event("[DONE]")


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        ("CreateChatCompletionResponse", {**COMPLETION, "system_fingerprint": None}),
        ("CreateChatCompletionStreamResponse", {**CHUNK, "system_fingerprint": None}),
        ("CreateChatCompletionStreamResponse", {**CHUNK, "usage": {"prompt_tokens": 1}}),
        (
            "CreateChatCompletionResponse",
            {**COMPLETION, "choices": [{**COMPLETION["choices"][0], "logprobs": "none"}]},
        ),
        ("ErrorResponse", {"error": {"message": "m", "type": "t", "code": None}}),  # no param
        ("Model", {"id": "m", "object": "model", "created": 1}),  # no owned_by
    ],
)
def test_what_strict_clients_refuse_fails(schema: str, body: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match=schema):
        check(schema, body)
