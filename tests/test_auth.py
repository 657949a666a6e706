"""Keys, tenants and what a key may do: the pure checks, the `keys` commands, and each
refusal through a real gateway; then a canary key and upstream secret sent down every
error path, which must never come back in a body, a header, a log line or a metric."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from tests.harness import (
    BASE,
    TUNED,
    Gateway,
    Simulator,
    gateway_config,
    running_gateway,
    task_config,
)
from tests.openai_shapes import checked_client, checked_sdk
from tunegate.auth import OPEN, authenticate, hash_key, keys_by_hash, require_admin, task_for
from tunegate.config.compiled import ApiKey, GatewayConfig, load_config
from tunegate.errors import AuthenticationFailed, NotFound, PermissionDenied
from tunegate.observability.logs import JsonLines

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def keyed(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "sha256": hash_key(f"key-{name}"), "tenant": name, **fields}


TASKS = {
    "triage": task_config(),
    "reply": task_config(output={"type": "text"}),
    "globex-forecast": task_config(),
}
KEYS = [
    keyed("ops", tasks=["*"], admin=True),
    keyed("acme", tasks=["triage"]),
    keyed("globex", tasks=["triage", "globex-forecast"]),
]


# -- the pure checks ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> GatewayConfig:
    path = tmp_path_factory.mktemp("auth") / "gateway.yaml"
    data = gateway_config("http://127.0.0.1:9", TASKS, auth={"keys": KEYS})
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer   ", "Basic a2V5LWFjbWU=", "key-acme", "Bearer key-nobody"],
)
def test_a_missing_or_unknown_key_is_a_401(
    config: GatewayConfig, authorization: str | None
) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        authenticate(keys_by_hash(config), authorization)
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")
    assert "key-" not in caught.value.message


def test_a_known_key_is_its_principal(config: GatewayConfig) -> None:
    principal = authenticate(keys_by_hash(config), "bearer  key-globex ")
    assert (principal.name, principal.tenant, principal.admin) == ("globex", "globex", False)
    assert principal.may_call("globex-forecast") and not principal.may_call("reply")
    assert isinstance(principal.key, ApiKey) and principal.key.sha256 == hash_key("key-globex")


def test_without_keys_every_caller_is_the_open_admin() -> None:
    assert authenticate({}, None) is OPEN
    assert authenticate({}, "Bearer anything") is OPEN
    assert OPEN.admin and OPEN.may_call("any-task") and OPEN.key is None


def test_unknown_tasks_are_404_naming_no_other_and_forbidden_ones_403(
    config: GatewayConfig,
) -> None:
    acme = authenticate(keys_by_hash(config), "Bearer key-acme")
    with pytest.raises(NotFound) as missing:
        task_for(config, acme, "nope")
    assert missing.value.code == "task_not_found"
    assert "globex" not in missing.value.message and "triage" not in missing.value.message
    with pytest.raises(PermissionDenied) as forbidden:
        task_for(config, acme, "globex-forecast")
    assert forbidden.value.code == "task_not_allowed"
    assert task_for(config, acme, "triage").name == "triage"
    ops = authenticate(keys_by_hash(config), "Bearer key-ops")
    assert task_for(config, ops, "globex-forecast").name == "globex-forecast"  # "*"


def test_admin_only_actions_refuse_other_keys(config: GatewayConfig) -> None:
    keys = keys_by_hash(config)
    require_admin(authenticate(keys, "Bearer key-ops"), "reload the config")
    require_admin(OPEN, "reload the config")
    with pytest.raises(PermissionDenied) as caught:
        require_admin(authenticate(keys, "Bearer key-acme"), "reload the config")
    assert caught.value.code == "override_not_allowed"


# -- the keys commands -------------------------------------------------------------------


def tunegate(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tunegate.commands.cli", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_keys_hash_reads_the_key_from_stdin_and_matches_keys_new() -> None:
    made = tunegate("keys", "new")
    assert made.returncode == 0, made.stderr
    fields = dict(line.split(":", 1) for line in made.stdout.splitlines())
    key, digest = fields["key"].strip(), fields["sha256"].strip()
    assert key.startswith("tg-") and len(key) > 40
    assert len(digest) == 64 and digest == hash_key(key)

    hashed = tunegate("keys", "hash", stdin=key + "\n")
    assert hashed.returncode == 0, hashed.stderr
    assert hashed.stdout.strip() == digest
    assert key not in hashed.stdout + hashed.stderr

    assert tunegate("keys", "new").stdout != made.stdout  # a fresh key each time
    assert tunegate("keys", "hash", stdin="").returncode == 1
    on_argv = tunegate("keys", "hash", key)  # never from argv: it would land in shell history
    assert on_argv.returncode == 2 and key not in on_argv.stdout


# -- through the gateway ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh(sim: Simulator) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def gw(sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = gateway_config(sim.url, TASKS, auth={"keys": KEYS})
    with running_gateway(tmp_path_factory.mktemp("gw"), config) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with checked_client(timeout=10) as client:
        yield client


SDK = Callable[[Gateway, str], openai.OpenAI]


@pytest.fixture
def sdk() -> Iterator[SDK]:
    """An official client for a gateway, as the key named `name`; closed after the test."""
    made: list[openai.OpenAI] = []

    def client(gw: Gateway, name: str) -> openai.OpenAI:
        made.append(checked_sdk(f"{gw.url}/v1", f"key-{name}"))
        return made[-1]

    yield client
    for opened in made:
        opened.close()


def ticket() -> str:
    return f"I was charged twice ({uuid.uuid4().hex[:8]})"


def test_the_sdk_raises_authentication_error_for_a_bad_key(
    gw: Gateway, sim: Simulator, sdk: SDK
) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(gw, "nobody").chat.completions.create(model="triage", messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, "nobody").models.list()
    assert sim.requests() == []


def test_a_task_outside_the_allowlist_is_403_on_both_endpoints(
    gw: Gateway, sim: Simulator, http: httpx.Client, sdk: SDK
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk(gw, "acme").chat.completions.create(model="reply", messages=MESSAGES)
    assert caught.value.code == "task_not_allowed"
    assert caught.value.type == "permission_error"
    native = http.post(
        f"{gw.url}/v1/tasks/globex-forecast",
        json={"input": "hi"},
        headers={"authorization": "Bearer key-acme"},
    )
    assert native.status_code == 403 and native.json()["error"]["code"] == "task_not_allowed"
    assert sim.requests() == []


def test_models_lists_only_the_keys_tasks(gw: Gateway, sdk: SDK) -> None:
    assert {m.id for m in sdk(gw, "acme").models.list()} == {"triage"}
    assert {m.id for m in sdk(gw, "globex").models.list()} == {"triage", "globex-forecast"}
    assert {m.id for m in sdk(gw, "ops").models.list()} == set(TASKS)


def test_models_retrieve_answers_only_the_keys_tasks(gw: Gateway, http: httpx.Client) -> None:
    acme = checked_sdk(f"{gw.url}/v1", "key-acme")
    model = acme.models.retrieve("triage")
    assert (model.id, model.object, model.owned_by) == ("triage", "model", "tunegate")
    # A task of another tenant and a task that does not exist: the same 404.
    for name in ("globex-forecast", "ghost"):
        with pytest.raises(openai.NotFoundError) as caught:
            acme.models.retrieve(name)
        assert caught.value.code == "model_not_found"
        assert "triage" not in caught.value.message  # names no task the key may see
    with pytest.raises(openai.AuthenticationError):
        checked_sdk(f"{gw.url}/v1", "key-nobody").models.retrieve("triage")
    assert checked_sdk(f"{gw.url}/v1", "key-ops").models.retrieve("globex-forecast").id == (
        "globex-forecast"
    )


def test_a_404_reveals_no_other_tenants_tasks(gw: Gateway, http: httpx.Client) -> None:
    response = http.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "forecast", "messages": MESSAGES},
        headers={"authorization": "Bearer key-acme"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "task_not_found"
    for other in ("globex-forecast", "reply", "triage"):
        assert other not in response.text


def test_forcing_a_variant_needs_an_admin_key(gw: Gateway, sim: Simulator, sdk: SDK) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        sdk(gw, "acme").chat.completions.create(
            model="triage", messages=MESSAGES, extra_headers={"x-tunegate-variant": "few_shot"}
        )
    assert caught.value.code == "override_not_allowed"
    assert sim.requests() == []
    raw = sdk(gw, "ops").chat.completions.with_raw_response.create(
        model="triage",
        messages=[{"role": "user", "content": ticket()}],
        extra_headers={"x-tunegate-variant": "few_shot"},
    )
    assert raw.headers["x-tunegate-variant"] == "few_shot"
    assert len(sim.requests(BASE)) == 1


def test_reload_needs_an_admin_key(gw: Gateway, http: httpx.Client) -> None:
    url = f"{gw.url}/admin/reload"
    assert http.post(url).status_code == 401
    refused = http.post(url, headers={"authorization": "Bearer key-acme"})
    assert refused.status_code == 403
    assert refused.json()["error"] == {
        "message": "Only admin keys may reload the config.",
        "type": "permission_error",
        "param": None,
        "code": "override_not_allowed",
    }


def test_readiness_says_whether_keys_are_required(
    gw: Gateway, sim: Simulator, tmp_path: Path, http: httpx.Client, sdk: SDK
) -> None:
    assert http.get(f"{gw.url}/readyz").json()["auth"] == "keys"
    with running_gateway(tmp_path, gateway_config(sim.url, TASKS)) as open_gw:
        ready = http.get(f"{open_gw.url}/readyz").json()
        assert (ready["auth"], ready["limits"]) == ("open", "off")
        assert {m.id for m in sdk(open_gw, "anyone").models.list()} == set(TASKS)


def test_one_tenants_cached_answer_is_never_served_to_another(
    gw: Gateway, sim: Simulator, sdk: SDK
) -> None:
    text = ticket()
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": text}]

    def ask(name: str) -> str:
        raw = sdk(gw, name).chat.completions.with_raw_response.create(
            model="triage", messages=messages
        )
        return raw.headers["x-tunegate-cache"]

    assert ask("acme") == "miss"
    assert ask("globex") == "miss"  # same task and prompt, another tenant
    assert len(sim.requests(TUNED)) == 2  # the upstream answered both
    assert ask("acme") == "hit"
    assert ask("globex") == "hit"
    assert len(sim.requests(TUNED)) == 2


# -- secrets never leak -------------------------------------------------------------------

CALLER = "tg-canary-caller-5f1d0c77"
UPSTREAM = "sk-canary-upstream-93ab7e41"


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record, at DEBUG, of every logger: the root's (tunegate's propagate there)
    and uvicorn's, which do not propagate."""
    caplog.set_level(logging.DEBUG)
    uvicorn_loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access")]
    levels = [lg.level for lg in uvicorn_loggers]
    for lg in uvicorn_loggers:
        lg.addHandler(caplog.handler)
        lg.setLevel(logging.DEBUG)
    yield caplog
    for lg, level in zip(uvicorn_loggers, levels, strict=True):
        lg.removeHandler(caplog.handler)
        lg.setLevel(level)


def test_keys_and_upstream_secrets_never_reach_bodies_logs_or_metrics(
    sim: Simulator, tmp_path: Path, http: httpx.Client, captured: pytest.LogCaptureFixture
) -> None:
    tasks = {
        "triage": task_config(),
        "reply": task_config(output={"type": "text"}),
        "slow": task_config(deadline_s=1),
    }
    # rpm 2: the 502 and the 504 take both slots; the next request is a 429.
    keys = [
        {
            "name": "c",
            "sha256": hash_key(CALLER),
            "tenant": "c",
            "tasks": ["triage", "slow"],
            "rpm": 2,
        }
    ]
    config = gateway_config(sim.url, tasks, auth={"keys": keys}, server={"max_body_bytes": 1024})
    with running_gateway(tmp_path, config, environ={"SIM_KEY": UPSTREAM}) as gw:
        bearer = {"authorization": f"Bearer {CALLER}"}

        def chat(model: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
            kw.setdefault("json", {"model": model, "messages": [{"role": "user", "content": "hi"}]})
            return http.post(f"{gw.url}/v1/chat/completions", headers=headers or bearer, **kw)

        sim.script(TUNED, "401")
        sim.script(BASE, "401")
        sim.script(TUNED, *["hang"] * 3)  # after the 401 above: for the 504
        sim.script(BASE, *["hang"] * 3)
        answers = {
            401: chat("triage", {"authorization": f"Bearer {CALLER}-revoked"}),
            403: chat("reply"),
            404: chat("no-such-task"),
            400: chat("triage", content=b"{not json", json=None),
            413: chat("triage", content=b"x" * 2048, json=None),
            502: chat("triage"),
            504: chat("slow"),
            429: chat("triage"),
        }
        for status, response in answers.items():
            assert response.status_code == status, (status, response.text)
            assert "error" in response.json()
        assert answers[502].json()["error"]["code"] == "upstream_error"
        assert all(r["has_authorization"] for r in sim.requests())  # the key was in use
        metrics = http.get(f"{gw.url}/metrics").text

    exposed = [metrics]
    for response in answers.values():
        exposed.append(response.text)
        exposed.extend(f"{k}: {v}" for k, v in response.headers.items())
    formatter = JsonLines()
    lines = [formatter.format(record) for record in captured.records]
    assert any('"variant failed"' in line for line in lines)  # the capture works
    for text in exposed + lines:
        assert CALLER not in text
        assert UPSTREAM not in text
        # Nor a fragment, as OpenAI quotes keys ("sk-abc***e41").
        assert CALLER[-8:] not in text
        assert UPSTREAM[-8:] not in text
