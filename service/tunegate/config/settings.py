"""Process settings from the environment (SPEC §1), read once at start-up and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from tunegate.errors import ConfigError

DEFAULT_CONFIG = Path("config/gateway.yaml")
DEFAULT_PORT = 8000
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


@dataclass(frozen=True)
class TracingSettings:
    """Where and how spans go (SPEC §11), from the standard `OTEL_*` variables.
    `endpoint` is the traces endpoint itself (for HTTP, the base's `/v1/traces`)."""

    endpoint: str
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    service_name: str = "tunegate"
    sampler: str = "parentbased_always_on"
    ratio: float = 1.0
    schedule_delay_ms: int = 5000
    # Collector credentials often travel here: never in a repr.
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Settings:
    config_path: Path = DEFAULT_CONFIG
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    log_level: str = "info"
    # Set when several workers share metrics (prometheus-client's multiprocess mode).
    metrics_dir: str | None = None
    # None unless an OTLP endpoint is set: then the gateway exports traces.
    tracing: TracingSettings | None = None
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
        tracing=tracing_from_env(env),
        environ=env,
    )


def tracing_from_env(env: Mapping[str, str]) -> TracingSettings | None:
    """The OTLP export the standard variables ask for; None when no endpoint is set (or
    `OTEL_SDK_DISABLED=true`). Values the exporter cannot honour are refused."""
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not (traces or base) or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    name = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    protocol = env.get(name) or env.get(name := "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol not in ("http/protobuf", "grpc"):
        raise ConfigError(f"{name}={protocol!r} is not supported: use http/protobuf or grpc.")
    endpoint = traces or str(base)
    if not traces and protocol == "http/protobuf":
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    sampler = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    if sampler not in SAMPLERS:
        raise ConfigError(f"OTEL_TRACES_SAMPLER={sampler!r}: use one of {', '.join(SAMPLERS)}.")
    return TracingSettings(
        endpoint=endpoint,
        protocol="grpc" if protocol == "grpc" else "http/protobuf",
        service_name=env.get("OTEL_SERVICE_NAME") or "tunegate",
        sampler=sampler,
        ratio=_number(env, "OTEL_TRACES_SAMPLER_ARG", 1.0, 0.0, 1.0),
        schedule_delay_ms=int(_number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000, 1, 3_600_000)),
        headers=_otlp_headers(env),
    )


def _number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r}: expected a number from {low:g} to {high:g}.")
    return value


def _otlp_headers(env: Mapping[str, str]) -> dict[str, str]:
    """`key=value,key=value` (values URL-encoded), as the OTLP exporters read it."""
    name = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
    raw = env.get(name) or env.get(name := "OTEL_EXPORTER_OTLP_HEADERS") or ""
    headers = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            # The value may be a credential: name the variable, never echo it.
            raise ConfigError(f"{name}: expected key=value pairs separated by commas.")
        headers[key.strip().lower()] = unquote(value.strip())
    return headers
