"""What the simulated upstream does, per model: frozen records, and loading them from YAML.

A scenario file looks like this (every key is optional; unknown keys are errors)::

    seed: 7                       # used when the command line gives no --seed
    api_key: sk-sim-demo          # when set, any other bearer key gets 401 invalid_api_key
    models:
      "ft:gpt-3.5-turbo-0613:acme::7qTVM5AR":
        latency_ms: 25            # before every answer (errors included)
        jitter_ms: 10             # plus a uniform [0, jitter) wait, seeded per request
        per_token_ms: 0.5         # plus this per completion token (successful answers)
        slow_chunk_ms: 100        # the wait per streamed chunk under the `slow` fault
        retry_after_s: 1          # the Retry-After of a 429
        quality: {valid: 0.98}
        faults: {"500": 0.01, "429": 0.01}
      "gpt-4o-mini":
        judge_noise: 1.5          # a judge: its scores wander this many points either way
      "gpt-3.5-turbo":
        quality:
          valid: 0.70
          valid_with_examples: 0.92   # when the request carries few-shot examples
          breakages: {invalid_json: 1, prose: 1}  # relative weights of the wrong answers
          text_flaws: {english: 2, too_long: 1}   # ... and of the wrong German replies
          text_valid: 0.8             # German replies right this often (else as valid)
      "*": {}                     # any other model; without it they get 404 model_not_found
    fine_tuning:                  # the files and fine-tuning jobs API (`tuning.py`)
      validating_s: 1             # seconds a job spends in each state before the next
      queued_s: 1
      running_s: 3
      steps: 20                   # training steps reported as events while running
      fail_suffixes: [doomed]     # jobs created with one of these suffixes fail while running
      model: {quality: {valid: 0.97}}  # how every resulting `ft:` model answers (a model
                                  # entry under `models` by its exact name wins)

`faults` maps a fault kind to the probability that a request draws it; the rates of a
model add up to at most 1. The kinds are listed in `FAULT_KINDS` (see the package
docstring for what each one does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from tunegate.simulator.replies import TEXT_FLAWS

ERROR_FAULTS = frozenset({"429", "quota", "500", "503", "400", "401", "404"})
CONNECTION_FAULTS = frozenset({"hang", "drop", "slow"})
# A 200 whose answer ignores max_tokens and runs to megabytes.
SIZE_FAULTS = frozenset({"huge"})
BREAKAGES = ("invalid_json", "fenced", "trailing_comma", "missing_field", "wrong_enum", "prose")
OUTPUT_FAULTS = frozenset({*BREAKAGES, *TEXT_FLAWS, "valid"})
FAULT_KINDS = ERROR_FAULTS | CONNECTION_FAULTS | SIZE_FAULTS | OUTPUT_FAULTS
# What a script entry or an `x-sim-fault` header may say: a fault, "behave normally", or
# "429:SECONDS" (a 429 with that Retry-After).
SCRIPT_KINDS = FAULT_KINDS | {"ok"}
RATE_LIMIT_WITH_WAIT = "429:"

ANY_MODEL = "*"


@dataclass(frozen=True, slots=True)
class Quality:
    """How often a model's answer is right, and how it is wrong otherwise."""

    valid: float = 1.0
    # None: the same as `valid`.
    valid_with_examples: float | None = None
    # (breakage, relative weight) pairs; the weights need not add up to 1.
    breakages: tuple[tuple[str, float], ...] = tuple((kind, 1.0) for kind in BREAKAGES)
    # (flaw, relative weight) of the wrong German replies (`replies.TEXT_FLAWS`).
    text_flaws: tuple[tuple[str, float], ...] = (("english", 1.0),)
    # How often a German reply is right; None: as `valid` / `valid_with_examples`.
    text_valid: float | None = None


@dataclass(frozen=True, slots=True)
class ModelBehaviour:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    per_token_ms: float = 0.0
    slow_chunk_ms: float = 100.0
    retry_after_s: float = 1.0
    quality: Quality = Quality()
    # (fault kind, probability) pairs; the probabilities add up to at most 1.
    faults: tuple[tuple[str, float], ...] = ()
    # As a judge: the most its scores stray from what it sees, in points (uniform).
    judge_noise: float = 0.0


@dataclass(frozen=True, slots=True)
class Tuning:
    """How fine-tuning jobs behave: seconds per state, reported steps, which fail, and
    how the models they produce answer."""

    validating_s: float = 1.0
    queued_s: float = 1.0
    running_s: float = 3.0
    steps: int = 20
    fail_suffixes: frozenset[str] = frozenset()
    model: ModelBehaviour = ModelBehaviour(quality=Quality(valid=0.97))


@dataclass(frozen=True, slots=True)
class Scenario:
    models: Mapping[str, ModelBehaviour] = field(
        default_factory=lambda: MappingProxyType({ANY_MODEL: ModelBehaviour()})
    )
    seed: int = 0
    api_key: str | None = None
    tuning: Tuning = Tuning()

    def behaviour_for(self, model: str) -> ModelBehaviour | None:
        """The model's entry, else the `"*"` entry, else None (the model does not exist)."""
        found = self.models.get(model)
        return found if found is not None else self.models.get(ANY_MODEL)

    def listed_models(self) -> list[str]:
        """The models `GET /v1/models` lists: every named entry."""
        return [name for name in self.models if name != ANY_MODEL]


def is_script_kind(kind: str) -> bool:
    """Whether a script entry or `x-sim-fault` header names a fault (or "ok")."""
    if kind.startswith(RATE_LIMIT_WITH_WAIT):
        try:
            return float(kind.removeprefix(RATE_LIMIT_WITH_WAIT)) >= 0
        except ValueError:
            return False
    return kind in SCRIPT_KINDS


def load_scenario(path: Path | None) -> Scenario:
    """Read and validate a scenario file; None gives the default scenario (any model,
    no latency, no faults, always right). Raises `ValueError` naming the file, the path
    inside it and the fix."""
    if path is None:
        return Scenario()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the scenario file ({exc.strerror}).") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML{line}: {exc}") from None
    try:
        parsed = _ScenarioFile.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise ValueError(_describe(path, exc)) from None
    return Scenario(
        models=MappingProxyType({name: _behaviour(m) for name, m in parsed.models.items()}),
        seed=parsed.seed,
        api_key=parsed.api_key,
        tuning=_tuning(parsed.fine_tuning),
    )


def _tuning(t: _TuningFile) -> Tuning:
    return Tuning(
        validating_s=t.validating_s,
        queued_s=t.queued_s,
        running_s=t.running_s,
        steps=t.steps,
        fail_suffixes=frozenset(t.fail_suffixes),
        model=_behaviour(t.model),
    )


def _behaviour(m: _ModelFile) -> ModelBehaviour:
    q = m.quality
    breakages = Quality().breakages
    if q.breakages is not None:
        breakages = tuple((kind, weight) for kind, weight in q.breakages.items() if weight > 0)
    flaws = Quality().text_flaws
    if q.text_flaws is not None:
        flaws = tuple((kind, weight) for kind, weight in q.text_flaws.items() if weight > 0)
    return ModelBehaviour(
        latency_ms=m.latency_ms,
        jitter_ms=m.jitter_ms,
        per_token_ms=m.per_token_ms,
        slow_chunk_ms=m.slow_chunk_ms,
        retry_after_s=m.retry_after_s,
        quality=Quality(q.valid, q.valid_with_examples, breakages, flaws, q.text_valid),
        faults=tuple((kind, rate) for kind, rate in m.faults.items() if rate > 0),
        judge_noise=m.judge_noise,
    )


def _describe(path: Path, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            fix = "unknown key: remove it or check its spelling"
        else:
            fix = err["msg"]
        lines.append(f"{path}: {where}: {fix}")
    return "\n".join(lines)


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _QualityFile(_FileModel):
    valid: float = Field(default=1.0, ge=0, le=1)
    valid_with_examples: float | None = Field(default=None, ge=0, le=1)
    breakages: dict[str, float] | None = None
    text_flaws: dict[str, float] | None = None
    text_valid: float | None = Field(default=None, ge=0, le=1)

    @field_validator("breakages", "text_flaws")
    @classmethod
    def _known_breakages(
        cls, value: dict[str, float] | None, info: ValidationInfo
    ) -> dict[str, float] | None:
        if value is None:
            return None
        kinds = BREAKAGES if info.field_name == "breakages" else TEXT_FLAWS
        unknown = sorted(set(value) - set(kinds))
        if unknown:
            raise ValueError(f"unknown kind {unknown}; use some of {list(kinds)}")
        if any(weight < 0 for weight in value.values()) or sum(value.values()) <= 0:
            raise ValueError("weights must be >= 0 with at least one above 0")
        return value


class _ModelFile(_FileModel):
    latency_ms: float = Field(default=0.0, ge=0)
    jitter_ms: float = Field(default=0.0, ge=0)
    per_token_ms: float = Field(default=0.0, ge=0)
    slow_chunk_ms: float = Field(default=100.0, ge=0)
    retry_after_s: float = Field(default=1.0, ge=0)
    quality: _QualityFile = _QualityFile()
    faults: dict[str, float] = {}
    judge_noise: float = Field(default=0.0, ge=0, le=10)

    @field_validator("faults", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML reads `500: 0.01` with an integer key.
        if isinstance(value, dict):
            return {str(kind): rate for kind, rate in value.items()}
        return value

    @field_validator("faults")
    @classmethod
    def _known_faults(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kind {unknown}; use some of {sorted(FAULT_KINDS)}")
        if any(not 0 <= rate <= 1 for rate in value.values()):
            raise ValueError("each rate is a probability between 0 and 1")
        if sum(value.values()) > 1:
            raise ValueError("the rates add up to more than 1; lower some")
        return value


class _TuningFile(_FileModel):
    validating_s: float = Field(default=1.0, ge=0)
    queued_s: float = Field(default=1.0, ge=0)
    running_s: float = Field(default=3.0, ge=0)
    steps: int = Field(default=20, ge=1)
    fail_suffixes: list[str] = []
    model: _ModelFile = _ModelFile(quality=_QualityFile(valid=0.97))


class _ScenarioFile(_FileModel):
    seed: int = 0
    api_key: str | None = Field(default=None, min_length=1)
    models: dict[str, _ModelFile] = Field(default_factory=lambda: {ANY_MODEL: _ModelFile()})
    fine_tuning: _TuningFile = _TuningFile()
