"""Process settings from the environment (SPEC §1), read once at start-up and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONFIG = Path("config/gateway.yaml")
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class Settings:
    config_path: Path = DEFAULT_CONFIG
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    log_level: str = "info"
    # Set when several workers share metrics (prometheus-client's multiprocess mode).
    metrics_dir: str | None = None
    # The upstream keys live here, never in the config records, so no repr can show them.
    environ: Mapping[str, str] = field(default_factory=dict, repr=False)


def settings_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    config_path: Path | None = None,
    host: str | None = None,
    port: int | None = None,
) -> Settings:
    """Build `Settings` from environment variables; explicit arguments (command-line
    flags) win over the environment."""
    env = dict(os.environ if environ is None else environ)
    return Settings(
        config_path=config_path or Path(env.get("TUNEGATE_CONFIG") or DEFAULT_CONFIG),
        redis_url=env.get("REDIS_URL") or None,
        host=host or "127.0.0.1",
        port=port or int(env.get("PORT") or DEFAULT_PORT),
        log_level=(env.get("TUNEGATE_LOG_LEVEL") or "info").lower(),
        metrics_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        environ=env,
    )
