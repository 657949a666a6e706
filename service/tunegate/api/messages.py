"""The caller's turns (SPEC §7 caller parameters): user and assistant messages, passed on
as OpenAI's shape with nothing dropped or glued.

A message is `role`, `content` and an optional `name`; content is a string or a list of
text parts, forwarded as parts (two parts are not one string: the model sees them, and
the cache keys them, as sent). Anything else is a 400 that names the message or the
part in the caller's terms (`messages[1].content[0]`), never a validator's internals.
"""

from __future__ import annotations

from typing import Any

from tunegate.errors import InvalidRequest

_ROLES = ("user", "assistant")
_FIELDS = frozenset({"role", "content", "name"})
# Parts OpenAI defines that carry something other than text: the tasks take text only.
_MEDIA_PARTS = frozenset({"image_url", "input_audio", "file", "refusal"})


def caller_turns(messages: list[Any], where: str = "messages") -> tuple[dict[str, Any], ...]:
    """The caller's turns as plain messages; 400 naming the first one the task refuses."""
    if not messages:
        raise InvalidRequest(f"{where} must hold at least one message.", param=where)
    return tuple(_turn(message, f"{where}[{i}]") for i, message in enumerate(messages))


def _turn(message: Any, at: str) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise InvalidRequest(f"{at} must be an object with a role and content.", param=at)
    role = message.get("role")
    if role not in _ROLES:
        shown = repr(role) if isinstance(role, str) else "missing or not a string"
        raise InvalidRequest(
            f"{at}.role: {shown} is not accepted; the task owns the system prompt and its "
            "tools, so send only user and assistant turns.",
            param=f"{at}.role",
        )
    for field in message:
        if field not in _FIELDS:
            raise InvalidRequest(
                f"{at}.{field} is not accepted on a {role} message: send role, content "
                "and optionally name.",
                param=f"{at}.{field}",
            )
    turn: dict[str, Any] = {"role": role, "content": _content(message.get("content"), at)}
    if "name" in message:
        name = message["name"]
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{at}.name must be a non-empty string.", param=f"{at}.name")
        turn["name"] = name
    return turn


def _content(content: Any, at: str) -> str | list[dict[str, str]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise InvalidRequest(
            f"{at}.content must be a string or a non-empty list of text parts.",
            param=f"{at}.content",
        )
    return [_part(part, f"{at}.content[{j}]") for j, part in enumerate(content)]


def _part(part: Any, at: str) -> dict[str, str]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in _MEDIA_PARTS:
        raise InvalidRequest(
            f"{at}: a part of type {kind!r} is not accepted; the task takes text only.",
            param=at,
        )
    if kind != "text" or set(part) != {"type", "text"} or not isinstance(part["text"], str):
        raise InvalidRequest(
            f'{at} must be a text part: {{"type": "text", "text": "..."}}.', param=at
        )
    return {"type": "text", "text": part["text"]}
