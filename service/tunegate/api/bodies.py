"""Request bodies (SPEC §2, §7 caller parameters): pydantic at the boundary, then a
plain `Call` for the gateway.

The task owns its prompt and output shape: a caller may send user/assistant turns and
the few parameters the task allows; anything the task owns is a 400 naming the `param`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunegate.config.compiled import CALLER_PARAMS, Task
from tunegate.errors import InvalidRequest

# Fields OpenAI defines that the task decides for the caller (SPEC §7).
OWNED_PARAMS = frozenset(
    {
        "response_format",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "parallel_tool_calls",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "reasoning_effort",
        "service_tier",
        "verbosity",
    }
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StreamOptions(_Body):
    """`stream_options`: `include_usage` asks for the final usage chunk (SPEC §7)."""

    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatBody(BaseModel):
    """`POST /v1/chat/completions`. Extra fields are kept so they can be named in a 400."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    model: str = Field(min_length=1)
    # Checked turn by turn by `api.messages`, which names the message or part refused.
    messages: list[Any]
    user: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    seed: int | None = None
    n: int | None = None


class TaskBody(_Body):
    """`POST /v1/tasks/{task}`."""

    input: str | list[Any]
    user: str | None = None
    metadata: dict[str, str] | None = None


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """Validate a JSON body; any problem is a 400 naming the first bad field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return InvalidRequest("The body is not valid JSON.")
    if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        return InvalidRequest("The body must be a JSON object.")
    param = ".".join(str(p) for p in first["loc"] if not _is_internal(p))
    if first["type"] == "extra_forbidden":
        return InvalidRequest(f"Unrecognized parameter: {param}.", param=param)
    return InvalidRequest(f"Invalid value for {param}: {first['msg']}.", param=param or None)


def _is_internal(loc: int | str) -> bool:
    """A step of pydantic's error location that is not the caller's: the member of a
    union it tried (`str`, `list[str]`) or a private name."""
    return isinstance(loc, str) and (loc.startswith("_") or loc in _TYPE_TAGS or "[" in loc)


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def chat_params(body: ChatBody, task: Task) -> dict[str, Any]:
    """The caller parameters applied to the upstream call; 400 for any the task owns."""
    extra = body.model_extra or {}
    for name, value in extra.items():
        if name in OWNED_PARAMS:
            if value is None or value is False:
                continue
            raise InvalidRequest(
                f"{name} is set by the task {task.name!r}, not by callers.", param=name
            )
        raise InvalidRequest(f"Unrecognized parameter: {name}.", param=name)
    if body.n is not None and body.n != 1:
        raise InvalidRequest("n must be 1: the task returns one answer.", param="n")
    params: dict[str, Any] = {}
    for name in sorted(CALLER_PARAMS):  # the ones a task may allow (config's list)
        value = getattr(body, name)
        if value is None:
            continue
        if name not in task.allow_params:
            raise InvalidRequest(
                f"{name} is set by the task {task.name!r}; it does not allow callers to change it.",
                param=name,
            )
        params[name] = value
    limit = [v for v in (body.max_tokens, body.max_completion_tokens) if v is not None]
    if limit:
        params["max_tokens"] = min(limit)
    if body.seed is not None:
        params["seed"] = body.seed
    return params


def cache_mode(headers: Mapping[str, str]) -> tuple[bool, bool]:
    """(read, write) from `cache-control`: no-cache skips the read, no-store both."""
    value = headers.get("cache-control")
    if not value:
        return True, True
    directives = {d.strip().lower() for d in value.split(",")}
    if "no-store" in directives:
        return False, False
    if "no-cache" in directives:
        return False, True
    return True, True


class FeedbackBody(BaseModel):
    """`POST /v1/feedback` (SPEC §2): a score of 0 to 1 or a boolean for an answered
    request. Other fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    request_id: str = Field(min_length=1)
    score: bool | Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
    comment: str | None = None


FEEDBACK_PROBLEMS = {
    "request_id": "`request_id` must be a non-empty string: the x-request-id, the "
    "completion's `id` or the task-native `id`.",
    "score": "`score` must be a number from 0 to 1, or a boolean.",
    "comment": "`comment` must be a string.",
}


def feedback_body(raw: bytes) -> FeedbackBody:
    """Validate a feedback body; a 400 naming the field, in words a caller can act on."""
    try:
        return FeedbackBody.model_validate_json(raw)
    except ValidationError as exc:
        loc = exc.errors(include_url=False)[0]["loc"]
        field = str(loc[0]) if loc else ""
        if field in FEEDBACK_PROBLEMS:
            raise InvalidRequest(FEEDBACK_PROBLEMS[field], param=field) from None
        raise _invalid(exc) from None
