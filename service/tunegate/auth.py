"""Who is calling and what they may do (SPEC §1 `auth`, §2 401/403/404).

Keys are stored as sha256 hashes; a bearer key is hashed and its digest looked up in a
dict, so no comparison ever touches the key itself. That lookup leaks no timing on the
key: how long it takes depends on the digest (its hash bucket, a string comparison with
a stored digest), never on how many leading characters of a guess match a real key, and
learning digits of a stored digest gets a guesser no closer to a key (sha256 has no
usable preimages). The key is never stored, logged or echoed; only its digest is (config,
limit counters in the store).

With no keys configured the gateway runs in open mode: every caller is an admin of the
`open` tenant.

    401 invalid_api_key       no `Authorization: Bearer`, or a key not in the config
    404 task_not_found        no such task (the message names only the one asked for)
    403 task_not_allowed      the key's `tasks` do not list it (nor `*`)
    403 override_not_allowed  an admin-only action (force a variant, reload the config)
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from tunegate.config.compiled import ApiKey, GatewayConfig, Task
from tunegate.errors import AuthenticationFailed, NotFound, PermissionDenied


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    tenant: str
    tasks: frozenset[str]
    admin: bool
    key: ApiKey | None = None

    def may_call(self, task: str) -> bool:
        return "*" in self.tasks or task in self.tasks


OPEN = Principal(name="open", tenant="open", tasks=frozenset({"*"}), admin=True)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "tg-" + secrets.token_urlsafe(32)


def keys_by_hash(config: GatewayConfig) -> dict[str, ApiKey]:
    return {key.sha256: key for key in config.keys}


def authenticate(keys: Mapping[str, ApiKey], authorization: str | None) -> Principal:
    """The caller behind an `Authorization: Bearer` header; 401 when keys are configured
    and the header is missing or names no key."""
    if not keys:
        return OPEN
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("Missing API key: send `Authorization: Bearer <key>`.")
    key = keys.get(hash_key(token))
    if key is None:
        raise AuthenticationFailed("Invalid API key.")
    return Principal(key.name, key.tenant, key.tasks, key.admin, key)


def task_for(config: GatewayConfig, principal: Principal, name: str) -> Task:
    """The task `name` if it exists (404, naming no other task) and the caller may call
    it (403)."""
    task = config.tasks.get(name)
    if task is None:
        raise NotFound(f"The task {name!r} does not exist or you do not have access to it.")
    if not principal.may_call(name):
        raise PermissionDenied(f"This key may not call the task {name!r}.")
    return task


def require_admin(principal: Principal, action: str) -> None:
    """403 `override_not_allowed` unless the caller is an admin (or open mode): the one
    code for every admin-only action, as for forcing a variant."""
    if not principal.admin:
        raise PermissionDenied(f"Only admin keys may {action}.", code="override_not_allowed")
