"""Re-reading the config while serving: `POST /admin/reload` under real uvicorn, and SIGHUP
to a `tunegate serve` process (signal handlers need the main thread)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import (
    TUNED,
    Gateway,
    Simulator,
    free_port,
    gateway_config,
    running_gateway,
    task_config,
    wait_for_http,
)
from tests.openai_shapes import checked_client
from tests.testkit.redis_server import RedisServer, redis_server
from tunegate.auth import hash_key


@pytest.fixture(autouse=True)
def fresh(sim: Simulator) -> None:
    sim.reset()


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with checked_client(timeout=10) as client:
        yield client


def keyed(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "sha256": hash_key(f"key-{name}"), "tenant": name, **fields}


ADMIN = keyed("ops", admin=True)
USER = keyed("acme", tasks=["triage"])


def config_with(sim: Simulator, *keys: dict[str, Any], **tasks: Any) -> dict[str, Any]:
    return gateway_config(sim.url, tasks or {"triage": task_config()}, auth={"keys": list(keys)})


def write(gw: Gateway, config: dict[str, Any] | str) -> None:
    text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
    gw.config_path.write_text(text)


def ask(http: httpx.Client, url: str, name: str, task: str = "triage") -> httpx.Response:
    return http.post(
        f"{url}/v1/chat/completions",
        json={"model": task, "messages": [{"role": "user", "content": uuid.uuid4().hex}]},
        headers={"authorization": f"Bearer key-{name}"},
    )


def reload(http: httpx.Client, gw: Gateway, name: str = "ops") -> httpx.Response:
    return http.post(f"{gw.url}/admin/reload", headers={"authorization": f"Bearer key-{name}"})


@pytest.fixture
def gw(sim: Simulator, tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path, config_with(sim, ADMIN, USER)) as gateway:
        yield gateway


def test_a_key_removed_by_a_reload_stops_working_at_once(
    gw: Gateway, sim: Simulator, http: httpx.Client
) -> None:
    assert ask(http, gw.url, "acme").status_code == 200
    write(gw, config_with(sim, ADMIN))
    assert ask(http, gw.url, "acme").status_code == 200  # the file alone changes nothing
    assert reload(http, gw, "acme").status_code == 403  # not an admin

    reloaded = reload(http, gw)
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json() == {
        "status": "reloaded",
        "config": str(gw.config_path),
        "tasks": ["triage"],
        "keys": 1,
        "upstreams": "kept",
    }
    revoked = ask(http, gw.url, "acme")
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "invalid_api_key"
    assert reload(http, gw, "acme").status_code == 401
    assert ask(http, gw.url, "ops").status_code == 200


def test_a_reload_brings_new_tasks_keys_and_limits(
    gw: Gateway, sim: Simulator, http: httpx.Client
) -> None:
    write(
        gw,
        config_with(
            sim,
            ADMIN,
            keyed("acme", tasks=["triage", "reply"], rpm=1),
            triage=task_config(),
            reply=task_config(output={"type": "text"}),
        ),
    )
    assert reload(http, gw).json()["tasks"] == ["reply", "triage"]
    assert ask(http, gw.url, "acme", "reply").status_code == 200
    limited = ask(http, gw.url, "acme", "triage")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert http.get(f"{gw.url}/readyz").json()["limits"] == "ok"


@pytest.mark.parametrize(
    ("broken", "named"),
    [
        ("upstreams: [unclosed", "not valid YAML"),
        ("tasks: {}\n", "upstreams"),
        ("weights", "tasks.triage.routing.weights.nope"),
        ("secret", "NEW_UPSTREAM_KEY"),
        ("duplicate", "tasks: duplicate key 'tasks' (first at line"),
        ("coerced", "tasks.triage.variants.tuned.json_mode: Input should be a valid boolean"),
        ("utf8", "not valid UTF-8"),
    ],
)
def test_an_invalid_file_is_refused_with_its_problem_and_the_running_config_stays(
    gw: Gateway, sim: Simulator, http: httpx.Client, broken: str, named: str
) -> None:
    if broken == "weights":
        write(gw, config_with(sim, ADMIN, triage=task_config(weights={"nope": 1})))
    elif broken == "secret":
        config = config_with(sim, ADMIN)
        config["upstreams"]["sim"]["api_key_env"] = "NEW_UPSTREAM_KEY"
        write(gw, config)
    elif broken == "duplicate":
        text = yaml.safe_dump(config_with(sim, ADMIN), sort_keys=False)
        write(gw, text + "tasks:\n  other: {}\n")
    elif broken == "coerced":
        task = task_config()
        task["variants"]["tuned"]["json_mode"] = "yes"
        write(gw, config_with(sim, ADMIN, triage=task))
    elif broken == "utf8":
        gw.config_path.write_bytes(b"upstreams: {sim: {base_url: '\xff'}}\n")
    else:
        write(gw, broken)
    refused = reload(http, gw)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
    assert named in error["message"]
    assert str(gw.config_path) in error["message"]
    assert "running one stays" in error["message"]
    # Nothing changed: the removed user still works, as under the old config.
    assert ask(http, gw.url, "acme").status_code == 200


def test_requests_in_flight_finish_on_the_config_they_started_with(
    gw: Gateway, sim: Simulator, http: httpx.Client
) -> None:
    sim.script(TUNED, "slow")  # answers after about a second
    before = len(sim.requests(TUNED))
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(ask, http, gw.url, "acme")
        assert eventually(lambda: len(sim.requests(TUNED)) == before + 1)  # upstream has it
        write(gw, config_with(sim, ADMIN, other=task_config()))
        assert reload(http, gw).status_code == 200
        assert not in_flight.done()  # reloaded while it was in flight
        assert ask(http, gw.url, "acme").status_code == 401  # new requests: new config
        assert ask(http, gw.url, "ops").status_code == 404  # `triage` is gone
        finished = in_flight.result()
    assert finished.status_code == 200, finished.text
    assert finished.headers["x-tunegate-task"] == "triage"


def test_a_changed_upstream_gets_new_clients(
    gw: Gateway, sim: Simulator, http: httpx.Client
) -> None:
    other = Simulator()
    try:
        config = config_with(sim, ADMIN, USER)
        config["upstreams"]["sim"]["base_url"] = f"{other.url}/v1"
        write(gw, config)
        assert reload(http, gw).json()["upstreams"] == "replaced"
        assert ask(http, gw.url, "acme").status_code == 200
        assert len(other.requests()) == 1
        assert sim.requests() == []
        write(gw, config)
        assert reload(http, gw).json()["upstreams"] == "kept"
        assert ask(http, gw.url, "acme").status_code == 200
        assert len(other.requests()) == 2
    finally:
        other.stop()


# -- SIGHUP ---------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def test_sighup_reloads_a_serving_process_and_logs_a_refusal(
    sim: Simulator, server: RedisServer, tmp_path: Path, http: httpx.Client
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config_with(sim, ADMIN, USER)))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SIM_KEY": "sk-upstream-secret",
        "REDIS_URL": server.url,
        "TUNEGATE_LOG_LEVEL": "info",
    }
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tunegate.commands.cli",
                "serve",
                "--config",
                str(path),
                "--port",
                str(port),
            ],
            env=env,
            stderr=out,
            text=True,
        )
    try:
        wait_for_http(f"{url}/readyz", timeout_s=30)
        assert ask(http, url, "acme").status_code == 200

        path.write_text(yaml.safe_dump(config_with(sim, ADMIN)))
        process.send_signal(signal.SIGHUP)
        assert eventually(lambda: ask(http, url, "acme").status_code == 401)

        path.write_text("upstreams: [unclosed")
        process.send_signal(signal.SIGHUP)
        assert eventually(lambda: "reload (SIGHUP) refused" in log.read_text())
        assert process.poll() is None  # SIGHUP no longer ends the process
        assert ask(http, url, "ops").status_code == 200  # the running config stays
    finally:
        process.terminate()
        process.wait(timeout=20)
    stderr = log.read_text()
    refusals = [line for line in stderr.splitlines() if "reload (SIGHUP) refused" in line]
    assert len(refusals) == 1
    assert str(path) in refusals[0] and "not valid YAML" in refusals[0]
    assert any('"config reloaded"' in line for line in stderr.splitlines())


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False
