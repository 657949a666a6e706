"""The shape of the YAML config file (SPEC §1), as pydantic models.

This is the boundary: every key is typed, unknown keys are errors and types are strict
(SPEC §7: `"yes"` is no boolean and `"3600"` no number; an integer may stand for a float).
`compiled.py` turns a validated file into the frozen records the rest of the gateway uses.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, str_strip_whitespace=True)


class UpstreamFile(FileModel):
    base_url: str = Field(min_length=1)
    # When this environment variable is set, it replaces `base_url` (e.g. to point a
    # deployment at the simulator or a regional endpoint without editing the file).
    base_url_env: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    # The largest answer body accepted; a larger one is a failed attempt (server_error).
    max_response_bytes: int = Field(default=1024 * 1024, ge=1024)


class PriceFile(FileModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # USD per 1M tokens. `input` and `output` go together; an entry may carry only
    # `training` (USD per 1M training tokens, for a base model's tuning cost).
    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)
    training: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> PriceFile:
        if (self.input is None) != (self.output is None):
            raise ValueError("give both `input` and `output`, or neither")
        if self.input is None and self.training is None:
            raise ValueError("give `input` and `output`, or `training`, or all three")
        return self


class CacheFile(FileModel):
    enabled: bool = True
    ttl_s: int | None = Field(default=None, ge=1)
    scope: Literal["tenant", "shared"] | None = None
    # Seconds a hot entry is also kept in each process's memory; 0 turns that tier off.
    local_ttl_s: float | None = Field(default=None, ge=0, le=60)


class DefaultsFile(FileModel):
    cache: CacheFile = CacheFile(ttl_s=86400, scope="tenant", local_ttl_s=1.0)
    deadline_s: float = Field(default=60.0, gt=0)


class ExampleFile(FileModel):
    user: str
    assistant: str


class VariantFile(FileModel):
    upstream: str
    model: str = Field(min_length=1)
    system: str | None = None
    examples: list[ExampleFile] = []
    params: dict[str, Any] = {}
    json_mode: bool = False


class OutputFile(FileModel):
    type: Literal["json", "text"] = "json"
    # `schema` shadows a BaseModel attribute; the alias keeps the YAML key.
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    # Output checks (SPEC §8), each a one-key mapping; compiled by `quality.checks`.
    checks: list[Any] = []
    on_fail: Literal["reask", "observe"] = "reask"


class ShadowFile(FileModel):
    variant: str
    rate: float = Field(ge=0, le=1)


AdaptiveMetric = Literal[
    "decision",
    "success_rate",
    "first_try_valid",
    "feedback_score",
    "cost_usd_per_valid_answer",
    "latency_s",
]


class AdaptiveFile(FileModel):
    metric: AdaptiveMetric = "decision"
    min_samples: int = Field(default=100, ge=1)
    stop: bool = True
    floor: float = Field(default=0.1, ge=0, le=0.5)


class RoutingFile(FileModel):
    weights: dict[str, float] | None = None
    shadow: ShadowFile | None = None
    adaptive: AdaptiveFile | None = None
    fallback: list[str] = []
    sticky: Literal["user", "header", "none"] = "none"
    salt: str | None = None
    retries: int = Field(default=1, ge=0, le=10)
    # Corrective re-asks for output failing its schema or a check; `json_retries` is
    # its old name, still accepted (not both).
    reasks: int | None = Field(default=None, ge=0, le=5)
    json_retries: int | None = Field(default=None, ge=0, le=5)


class CaptureFile(FileModel):
    """`capture:` of a task (SPEC §9, §12): keep a sample of its validated exchanges for
    fine-tuning."""

    rate: float = Field(ge=0, le=1)
    # Which serving variants' answers are kept; default: the arms (weight above 0).
    variants: list[str] | None = None
    only_valid: bool = True
    ttl_days: int = Field(default=30, ge=1, le=3650)
    max_examples: int = Field(default=50_000, ge=1, le=10_000_000)


class TuningFile(FileModel):
    """What a task's tuned model will see (SPEC §12 "Tuning target")."""

    system: str | None = None
    base_model: str | None = Field(default=None, min_length=1)
    upstream: str | None = None


class JudgeFile(FileModel):
    """`judge`: an LLM that scores answers in the background (SPEC §8)."""

    upstream: str
    model: str = Field(min_length=1)
    rate: float = Field(ge=0, le=1)
    rubric: str = Field(min_length=1)
    pairwise: bool = False


class TaskFile(FileModel):
    description: str = ""
    output: OutputFile = OutputFile()
    variants: dict[str, VariantFile] = Field(min_length=1)
    routing: RoutingFile = RoutingFile()
    allow_params: list[str] = []
    cache: CacheFile | None = None
    deadline_s: float | None = Field(default=None, gt=0)
    training_cost_usd: float | None = Field(default=None, ge=0)
    capture: CaptureFile | None = None
    tuning: TuningFile | None = None
    judge: JudgeFile | None = None
    log_payloads: bool = False


class KeyFile(FileModel):
    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    tenant: str = Field(min_length=1)
    tasks: list[str] = ["*"]
    rpm: int | None = Field(default=None, ge=1)
    daily_budget_usd: float | None = Field(default=None, gt=0)
    admin: bool = False
    # False: this caller's exchanges are never captured (SPEC §9).
    capture: bool = True


class AuthFile(FileModel):
    keys: list[KeyFile] = []
    # A YAML file (relative to the config file) holding more keys as `keys: [...]`, read
    # with the config and on every reload: on Kubernetes, the mounted Secret's file.
    keys_file: str | None = None
    on_store_error: Literal["open", "closed"] = "open"


class KeysFile(FileModel):
    """The file named by `auth.keys_file`."""

    keys: list[KeyFile] = []


class ServerFile(FileModel):
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    max_in_flight: int = Field(default=1024, ge=1)
    # A connection must send a request's headers within this time, else it is closed.
    header_timeout_s: float = Field(default=10.0, gt=0, le=300)


class StoreFile(FileModel):
    socket_timeout_ms: int = Field(default=50, ge=1)
    connect_timeout_ms: int = Field(default=200, ge=1)


class GatewayFile(FileModel):
    upstreams: dict[str, UpstreamFile] = Field(min_length=1)
    pricing: dict[str, PriceFile] = {}
    defaults: DefaultsFile = DefaultsFile()
    tasks: dict[str, TaskFile] = {}
    tasks_dir: str | None = None
    auth: AuthFile | None = None
    server: ServerFile = ServerFile()
    store: StoreFile = StoreFile()
