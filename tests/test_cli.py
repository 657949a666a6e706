"""`tunegate serve` as a process: it starts its embedded store and stops it on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import free_port, wait_for_http
from tunegate.embedded import answers_ping

SERVE = [sys.executable, "-m", "tunegate.cli", "serve"]
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "gateway.yaml"


def test_sigterm_stops_the_gateway_and_its_embedded_store(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["OPENAI_API_KEY"] = "sk-not-used"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*SERVE, "--config", str(EXAMPLE), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout_s=30)
        found = re.search(r"redis://127\.0\.0\.1:(\d+)", log.read_text())
        assert found, log.read_text()
        store_port = int(found.group(1))
        assert answers_ping(store_port)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        time.sleep(0.2)
        assert not answers_ping(store_port)
    finally:
        if process.poll() is None:
            process.kill()
