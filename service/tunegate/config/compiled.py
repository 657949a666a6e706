"""Load and validate the gateway config (SPEC §1) into frozen records.

The file is read by `source.read_yaml` (duplicate keys are errors, every key's line is
kept), checked against `shape.GatewayFile` (unknown keys and wrong types are errors, with
no coercion), then cross-checked (upstreams, variants named by weights and fallbacks, ...)
and compiled: prompts are pre-rendered, weights made cumulative, schemas compiled and a
fingerprint computed per variant, so the request path does none of that work.

Every problem is reported at once, each line naming the file and line, the YAML path and
the fix: `gateway.yaml:12: tasks.triage.routing.weights.ghost: no variant named 'ghost'`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from tunegate.config.shape import (
    AuthFile,
    CacheFile,
    GatewayFile,
    KeysFile,
    TaskFile,
    VariantFile,
)
from tunegate.config.source import Lines, dotted, read_yaml
from tunegate.errors import ConfigError
from tunegate.quality import checks as output_checks
from tunegate.quality import jsonguard

Message = dict[str, str]

_NUMBER = ((int, float), "a number")
_INTEGER = ((int,), "an integer")
# The type of each variant parameter (SPEC §7: no coercion, `"0.2"` is no number).
PARAM_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "presence_penalty": _NUMBER,
    "frequency_penalty": _NUMBER,
    "max_tokens": _INTEGER,
    "max_completion_tokens": _INTEGER,
    "seed": _INTEGER,
    "stop": ((str, list), "a string or a list of strings"),
    "reasoning_effort": ((str,), "a string"),
}
# Sampling and output-shape parameters a variant may set; anything else is a typo.
VARIANT_PARAMS = frozenset(PARAM_TYPES)
# Parameters a task may let callers set (`allow_params`).
CALLER_PARAMS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty", "stop"})


@dataclass(frozen=True)
class Upstream:
    name: str
    base_url: str
    base_url_env: str | None
    api_key_env: str | None
    timeout_s: float
    max_connections: int
    max_response_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class Variant:
    """One way to serve a task: a model, its prompt and its parameters."""

    name: str
    upstream: str
    model: str
    params: Mapping[str, Any]
    json_mode: bool
    # The system prompt and the few-shot turns, rendered once, put before the caller's.
    prefix: tuple[Message, ...]
    example_count: int
    fingerprint: str
    max_tokens: int | None

    @property
    def is_tuned(self) -> bool:
        return self.model.startswith("ft:")

    @property
    def system(self) -> str | None:
        """The variant's system prompt, when it has one."""
        first = self.prefix[0] if self.prefix else None
        return first["content"] if first is not None and first["role"] == "system" else None


@dataclass(frozen=True)
class Shadow:
    variant: str
    rate: float


@dataclass(frozen=True)
class Adaptive:
    """`routing.adaptive`: move traffic toward the better variant as evidence grows
    (`adaptive.py`); `floor` is the least share either keeps while exploring."""

    metric: str
    min_samples: int
    stop: bool
    floor: float


@dataclass(frozen=True)
class Routing:
    weights: Mapping[str, float]
    # (upper bound in [0, 1], variant) in config order; a point p picks the first bound > p.
    cumulative: tuple[tuple[float, str], ...]
    fallback: tuple[str, ...]
    sticky: Literal["user", "header", "none"]
    salt: str
    retries: int
    reasks: int
    shadow: Shadow | None
    adaptive: Adaptive | None = None

    @property
    def json_retries(self) -> int:
        """The old name of `reasks`."""
        return self.reasks


@dataclass(frozen=True)
class CachePolicy:
    enabled: bool
    ttl_s: int
    scope: Literal["tenant", "shared"]
    local_ttl_s: float = 1.0


@dataclass(frozen=True)
class CapturePolicy:
    """`capture:` compiled: `variants` is the set whose answers may be kept."""

    rate: float
    variants: frozenset[str]
    only_valid: bool
    ttl_s: int
    max_examples: int


@dataclass(frozen=True)
class TuningTarget:
    """`tuning:` of a task: the system prompt, base model and upstream of its next tuned
    model (each None when not given; `config/tuning.py` resolves the defaults)."""

    system: str | None = None
    base_model: str | None = None
    upstream: str | None = None


@dataclass(frozen=True)
class Judge:
    """`judge`: the judge model as a variant without a prompt of its own, the share of
    samples (and shadow pairs, with `pairwise`) it judges, and its rubric."""

    variant: Variant
    rate: float
    rubric: str
    pairwise: bool


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    output_type: Literal["json", "text"]
    schema: jsonguard.CompiledSchema | None
    variants: Mapping[str, Variant]
    routing: Routing
    allow_params: frozenset[str]
    cache: CachePolicy
    deadline_s: float
    training_cost_usd: float | None
    log_payloads: bool
    tuning: TuningTarget | None = None
    # `output.checks` compiled, with `on_fail`; None when the task has none.
    checks: output_checks.CheckSet | None = None
    judge: Judge | None = None
    capture: CapturePolicy | None = None

    @property
    def is_json(self) -> bool:
        return self.output_type == "json"

    @property
    def buffers_streams(self) -> bool:
        """Whether a stream waits for the whole answer: it must pass the JSON guard or
        the checks before its first chunk."""
        return self.is_json or self.checks is not None


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    tenant: str
    tasks: frozenset[str]
    rpm: int | None
    daily_budget_usd: float | None
    admin: bool
    capture: bool = True


@dataclass(frozen=True)
class GatewayConfig:
    path: Path
    upstreams: Mapping[str, Upstream]
    pricing: Mapping[str, tuple[float, float]]
    tasks: Mapping[str, Task]
    keys: tuple[ApiKey, ...]
    limits_fail_open: bool
    max_body_bytes: int
    max_in_flight: int
    store_socket_timeout_ms: int
    store_connect_timeout_ms: int
    # `pricing.MODEL.training`: USD per 1M training tokens, by base model.
    training_prices: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    header_timeout_s: float = 10.0

    @property
    def open_mode(self) -> bool:
        return not self.keys


def load_config(path: Path) -> GatewayConfig:
    """Read, validate and compile the config at `path`; raise `ConfigError` listing
    every problem found."""
    raw, lines = read_yaml(path)
    problems: list[str] = []
    parsed, broken = _validate(path, raw, lines, problems)
    if parsed is None:
        raise ConfigError("\n".join(problems))
    tasks = dict(parsed.tasks)
    sources = [lines]
    if parsed.tasks_dir is not None:
        tasks_dir = (path.parent / parsed.tasks_dir).resolve()
        _load_tasks_dir(tasks_dir, tasks, problems, sources, broken)
    if parsed.auth is not None and parsed.auth.keys_file is not None:
        parsed = _with_keys_file(path, parsed, parsed.auth, problems)
    if not tasks and not broken and not problems:
        raise ConfigError(f"{path}: tasks: no task is defined; add one under `tasks:`.")
    config = None
    try:
        config = _compile(path, parsed, tasks, broken)
    except ConfigError as exc:
        problems.extend(str(exc).split("\n"))
    if problems or config is None:
        raise ConfigError("\n".join(_locate(problem, path, sources) for problem in problems))
    return config


def _validate(
    path: Path, raw: Any, lines: Lines, problems: list[str]
) -> tuple[GatewayFile | None, set[str]]:
    """The validated file and the names of the tasks whose shape is wrong. Problems that
    lie inside tasks do not hide the others: the file is checked again without those
    tasks, so every real problem is reported once (and keys naming a broken task are no
    follow-on error). None when the problems lie outside `tasks`."""
    try:
        return GatewayFile.model_validate(raw), set()
    except ValidationError as exc:
        problems.append(_describe(lines, exc))
        locs = [err["loc"] for err in exc.errors()]
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict):
        return None, set()
    if not all(len(loc) >= 2 and loc[0] == "tasks" for loc in locs):
        return None, set()
    broken = {loc[1] for loc in locs}
    for name in broken:
        upstreams = raw.get("upstreams")
        known = list(upstreams) if isinstance(upstreams, dict) else []
        problems.extend(_raw_references(path, str(name), raw["tasks"][name], known))
    rest = {**raw, "tasks": {n: t for n, t in raw["tasks"].items() if n not in broken}}
    try:
        return GatewayFile.model_validate(rest), {str(name) for name in broken}
    except ValidationError:
        return None, set()


def _raw_references(path: Path, name: str, task: Any, upstreams: list[str]) -> list[str]:
    """Upstreams and variants named by a task whose shape is wrong (so `_compile_task`
    cannot run) that do not exist: `shadow: {variant: ghost}` names the ghost even
    without a rate."""
    variants = task.get("variants") if isinstance(task, dict) else None
    if not isinstance(variants, dict):
        return []
    problems = [
        f"{path}: tasks.{name}.variants.{v}.upstream: unknown upstream {body['upstream']!r}; "
        f"define it under `upstreams:` or use one of: {', '.join(sorted(upstreams))}."
        for v, body in variants.items()
        if isinstance(body, dict)
        and isinstance(body.get("upstream"), str)
        and body["upstream"] not in upstreams
    ]
    routing = task.get("routing")
    if not isinstance(routing, dict):
        return problems
    named: list[tuple[str, Any]] = []
    for key in ("weights", "fallback", "compare"):
        value = routing.get(key)
        if isinstance(value, dict):
            named += [(f"{key}.{v}", v) for v in value]
        elif isinstance(value, list):
            named += [(f"{key}.{i}", v) for i, v in enumerate(value)]
    shadow = routing.get("shadow")
    if isinstance(shadow, dict):
        named.append(("shadow.variant", shadow.get("variant")))
    names = [str(v) for v in variants]
    return problems + [
        _missing_variant(f"{path}: tasks.{name}.routing.{where}", variant, names)
        for where, variant in named
        if isinstance(variant, str) and variant not in variants
    ]


def missing_secrets(config: GatewayConfig, environ: Mapping[str, str]) -> list[str]:
    """Name each upstream whose `api_key_env` variable is unset (checked at serve time)."""
    return [
        f"{config.path}: upstreams.{u.name}.api_key_env: the environment variable "
        f"{u.api_key_env} is not set; export it before starting the gateway."
        for u in config.upstreams.values()
        if u.api_key_env and not environ.get(u.api_key_env)
    ]


def _load_tasks_dir(
    tasks_dir: Path,
    tasks: dict[str, TaskFile],
    problems: list[str],
    sources: list[Lines],
    broken: set[str],
) -> None:
    if not tasks_dir.is_dir():
        problems.append(f"tasks_dir: {tasks_dir} is not a directory; create it or fix the path.")
        return
    for file in sorted([*tasks_dir.glob("*.yaml"), *tasks_dir.glob("*.yml")]):
        name = file.stem
        if name in tasks:
            problems.append(f"{file}: task {name!r} is also defined under `tasks:`; keep one.")
            continue
        try:
            raw, lines = read_yaml(file)
            lines = Lines(file, {(): 1, **lines.lines}, ("tasks", name))
            tasks[name] = TaskFile.model_validate(raw)
            sources.append(lines)
        except ValidationError as exc:
            problems.append(_describe(lines, exc))
            broken.add(name)
        except ConfigError as exc:
            problems.append(str(exc))
            broken.add(name)


def _with_keys_file(
    path: Path, parsed: GatewayFile, auth: AuthFile, problems: list[str]
) -> GatewayFile:
    """`parsed` with the keys of `auth.keys_file` added after `auth.keys`."""
    assert auth.keys_file is not None
    file = path.parent / auth.keys_file
    try:
        raw, lines = read_yaml(file)
        more = KeysFile.model_validate(raw)
    except ValidationError as exc:
        problems.append(_describe(lines, exc))
        return parsed
    except ConfigError as exc:
        problems.append(f"{path}: auth.keys_file: {exc}")
        return parsed
    merged = auth.model_copy(update={"keys": [*auth.keys, *more.keys]})
    return parsed.model_copy(update={"auth": merged})


def _describe(lines: Lines, exc: ValidationError) -> str:
    out = []
    for err in exc.errors():
        where = (*lines.prefix, *err["loc"])
        if err["type"] == "extra_forbidden":
            fix = "unknown key: remove it or check its spelling (SPEC §1 lists the keys)"
        elif err["type"] == "missing":
            fix = "required key is missing: add it"
        else:
            fix = f"{err['msg']} (got {_shown(err['input'])})"
        out.append(f"{lines.at(where)}: {dotted(where)}: {fix}")
    return "\n".join(out)


def _shown(value: Any) -> str:
    """A short view of a refused value, with its YAML type: `"yes"` is a string."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _locate(problem: str, path: Path, sources: list[Lines]) -> str:
    """Rewrite `FILE: tasks.x.y: msg` as `FILE:LINE: tasks.x.y: msg`, the file being the
    one that holds the path (a `tasks_dir` file for its task)."""
    head = f"{path}: "
    if not problem.startswith(head):
        return problem
    where, sep, message = problem[len(head) :].partition(": ")
    best: tuple[int, str] | None = None
    for source in sources:
        for key, line in source.lines.items():
            full = dotted((*source.prefix, *key))
            if (where == full or where.startswith(full + ".")) and (
                best is None or len(full) > best[0]
            ):
                best = (len(full), f"{source.file}:{line}")
    if best is None:
        return problem
    return f"{best[1]}: {where}{sep}{message}"


def _compile(
    path: Path,
    parsed: GatewayFile,
    tasks: Mapping[str, TaskFile],
    broken: Collection[str] = (),
) -> GatewayConfig:
    """Compile the valid `tasks`; `broken` names the tasks already refused for their
    shape (a key may still name them without a follow-on error)."""
    problems: list[str] = []
    upstreams = {
        name: Upstream(
            name,
            u.base_url.rstrip("/"),
            u.base_url_env,
            u.api_key_env,
            u.timeout_s,
            u.max_connections,
            u.max_response_bytes,
        )
        for name, u in parsed.upstreams.items()
    }
    compiled: dict[str, Task] = {}
    detector = _detector(tasks)
    for name, task in tasks.items():
        result = _compile_task(path, name, task, parsed, upstreams, detector, problems)
        if result is not None:
            compiled[name] = result
    keys = _compile_keys(path, parsed.auth, {*tasks, *broken}, problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return GatewayConfig(
        path=path,
        upstreams=MappingProxyType(upstreams),
        pricing=MappingProxyType(
            {
                m: (p.input, p.output)
                for m, p in parsed.pricing.items()
                if p.input is not None and p.output is not None
            }
        ),
        training_prices=MappingProxyType(
            {m: p.training for m, p in parsed.pricing.items() if p.training is not None}
        ),
        tasks=MappingProxyType(compiled),
        keys=keys,
        limits_fail_open=parsed.auth is None or parsed.auth.on_store_error == "open",
        max_body_bytes=parsed.server.max_body_bytes,
        max_in_flight=parsed.server.max_in_flight,
        store_socket_timeout_ms=parsed.store.socket_timeout_ms,
        store_connect_timeout_ms=parsed.store.connect_timeout_ms,
        header_timeout_s=parsed.server.header_timeout_s,
    )


def _compile_task(
    path: Path,
    name: str,
    task: TaskFile,
    parsed: GatewayFile,
    upstreams: Mapping[str, Upstream],
    detector: output_checks.Detector | None,
    problems: list[str],
) -> Task | None:
    at = f"{path}: tasks.{name}"
    before = len(problems)
    checks = _compile_checks(f"{at}.output.checks", task, detector, problems)
    schema: jsonguard.CompiledSchema | None = None
    if task.output.json_schema is not None:
        if task.output.type == "text":
            problems.append(f"{at}.output.schema: a text task has no schema; remove it.")
        else:
            try:
                schema = jsonguard.compile_schema(task.output.json_schema)
            except jsonguard.SchemaError as exc:
                problems.append(f"{at}.output.schema: not a valid JSON Schema: {exc}")
    bad_allowed = sorted(set(task.allow_params) - CALLER_PARAMS)
    if bad_allowed:
        problems.append(
            f"{at}.allow_params: {', '.join(bad_allowed)} cannot be left to callers; "
            f"choose from {', '.join(sorted(CALLER_PARAMS))}."
        )
    variants = {
        vname: _compile_variant(
            f"{at}.variants.{vname}", vname, v, task, schema, upstreams, problems
        )
        for vname, v in task.variants.items()
    }
    routing = _compile_routing(f"{at}.routing", name, task, problems)
    tuning = task.tuning
    if tuning is not None and tuning.upstream is not None and tuning.upstream not in upstreams:
        problems.append(
            f"{at}.tuning.upstream: unknown upstream {tuning.upstream!r}; "
            f"use one of: {', '.join(sorted(upstreams))}."
        )
    judge = _compile_judge(f"{at}.judge", task, upstreams, problems)
    capture = _compile_capture(f"{at}.capture", task, routing, problems)
    if len(problems) > before or routing is None:
        return None
    cache_file = task.cache or CacheFile()
    default_cache = parsed.defaults.cache
    cache = CachePolicy(
        enabled=cache_file.enabled and default_cache.enabled,
        ttl_s=cache_file.ttl_s or default_cache.ttl_s or 86400,
        scope=cache_file.scope or default_cache.scope or "tenant",
        local_ttl_s=next(
            t for t in (cache_file.local_ttl_s, default_cache.local_ttl_s, 1.0) if t is not None
        ),
    )
    return Task(
        name=name,
        description=task.description,
        output_type=task.output.type,
        schema=schema,
        variants=MappingProxyType(variants),
        routing=routing,
        allow_params=frozenset(task.allow_params),
        cache=cache,
        deadline_s=task.deadline_s or parsed.defaults.deadline_s,
        training_cost_usd=task.training_cost_usd,
        log_payloads=task.log_payloads,
        tuning=TuningTarget(tuning.system, tuning.base_model, tuning.upstream) if tuning else None,
        checks=checks,
        judge=judge,
        capture=capture,
    )


def _compile_capture(
    at: str, task: TaskFile, routing: Routing | None, problems: list[str]
) -> CapturePolicy | None:
    """`capture:`; its `variants` default to the arms (weight above 0)."""
    capture = task.capture
    if capture is None or routing is None:
        return None
    if capture.variants is None:
        variants = [n for n, w in routing.weights.items() if w > 0]
    else:
        variants = capture.variants
        for i, vname in enumerate(variants):
            if vname not in task.variants:
                problems.append(_missing_variant(f"{at}.variants.{i}", vname, list(task.variants)))
    return CapturePolicy(
        rate=capture.rate,
        variants=frozenset(variants),
        only_valid=capture.only_valid,
        ttl_s=capture.ttl_days * 86400,
        max_examples=capture.max_examples,
    )


def _compile_judge(
    at: str, task: TaskFile, upstreams: Mapping[str, Upstream], problems: list[str]
) -> Judge | None:
    judge = task.judge
    if judge is None:
        return None
    if judge.upstream not in upstreams:
        problems.append(
            f"{at}.upstream: unknown upstream {judge.upstream!r}; "
            f"use one of: {', '.join(sorted(upstreams))}."
        )
    if judge.pairwise and task.routing.shadow is None:
        problems.append(
            f"{at}.pairwise: pairs come from shadow calls; set `routing.shadow` or remove it."
        )
    variant = Variant(
        name="judge",
        upstream=judge.upstream,
        model=judge.model,
        params=MappingProxyType({"temperature": 0}),
        json_mode=False,
        prefix=(),
        example_count=0,
        fingerprint="",
        max_tokens=None,
    )
    return Judge(variant, judge.rate, judge.rubric, judge.pairwise)


def _detector(tasks: Mapping[str, TaskFile]) -> output_checks.Detector | None:
    """One language detector for the whole config, knowing every language it names."""
    codes = set().union(*(output_checks.languages_of(t.output.checks) for t in tasks.values()))
    return output_checks.Detector(codes) if codes else None


def _compile_checks(
    at: str,
    task: TaskFile,
    detector: output_checks.Detector | None,
    problems: list[str],
) -> output_checks.CheckSet | None:
    if not task.output.checks:
        return None
    try:
        return output_checks.compile_checks(
            task.output.checks, detector, reask=task.output.on_fail == "reask"
        )
    except output_checks.CheckConfigError as exc:
        problems.append(f"{at}.{exc.where}: {exc}")
        return None


def _compile_variant(
    at: str,
    name: str,
    variant: VariantFile,
    task: TaskFile,
    schema: jsonguard.CompiledSchema | None,
    upstreams: Mapping[str, Upstream],
    problems: list[str],
) -> Variant:
    if variant.upstream not in upstreams:
        problems.append(
            f"{at}.upstream: unknown upstream {variant.upstream!r}; "
            f"define it under `upstreams:` or use one of: {', '.join(sorted(upstreams))}."
        )
    unknown = sorted(set(variant.params) - VARIANT_PARAMS)
    if unknown:
        problems.append(
            f"{at}.params: unknown parameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(VARIANT_PARAMS))}."
        )
    for param, value in variant.params.items():
        types, wanted = PARAM_TYPES.get(param, ((object,), ""))
        if param in PARAM_TYPES and _wrong_type(value, types):
            problems.append(f"{at}.params.{param}: must be {wanted} (got {_shown(value)}).")
    if variant.json_mode and task.output.type == "text":
        problems.append(f"{at}.json_mode: a text task cannot ask for JSON mode; remove it.")
    prefix: list[Message] = []
    if variant.system:
        prefix.append({"role": "system", "content": variant.system})
    for example in variant.examples:
        prefix.append({"role": "user", "content": example.user})
        prefix.append({"role": "assistant", "content": example.assistant})
    max_tokens = variant.params.get("max_completion_tokens", variant.params.get("max_tokens"))
    return Variant(
        name=name,
        upstream=variant.upstream,
        model=variant.model,
        params=MappingProxyType(dict(variant.params)),
        json_mode=variant.json_mode,
        prefix=tuple(prefix),
        example_count=len(variant.examples),
        fingerprint=_fingerprint(variant, task, schema),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
    )


def _wrong_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) or not isinstance(value, types):
        return True
    return isinstance(value, list) and not all(isinstance(v, str) for v in value)


def _fingerprint(
    variant: VariantFile, task: TaskFile, schema: jsonguard.CompiledSchema | None
) -> str:
    """A digest of everything that shapes a variant's answer: two variants (or two config
    versions) with the same fingerprint answer the same request the same way."""
    canonical = orjson.dumps(
        {
            "model": variant.model,
            "system": variant.system,
            "examples": [[e.user, e.assistant] for e in variant.examples],
            "params": variant.params,
            "json_mode": variant.json_mode,
            "output": task.output.type,
            "schema": schema.canonical.decode() if schema else None,
            # Cached answers passed the checks of their time: new checks, new entries.
            **({"checks": task.output.checks} if task.output.checks else {}),
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).hexdigest()[:32]


def _compile_routing(
    at: str, task_name: str, task: TaskFile, problems: list[str]
) -> Routing | None:
    routing = task.routing
    names = list(task.variants)
    weights = routing.weights if routing.weights is not None else dict.fromkeys(names, 1.0)
    ok = True
    for vname, weight in weights.items():
        if vname not in task.variants:
            problems.append(_missing_variant(f"{at}.weights.{vname}", vname, names))
            ok = False
        if weight < 0:
            problems.append(f"{at}.weights.{vname}: a weight cannot be negative; use 0 to disable.")
            ok = False
    if ok and sum(weights.values()) <= 0:
        problems.append(f"{at}.weights: all weights are 0; give at least one variant a share.")
        ok = False
    for i, vname in enumerate(routing.fallback):
        if vname not in task.variants:
            problems.append(_missing_variant(f"{at}.fallback.{i}", vname, names))
            ok = False
    if routing.shadow is not None and routing.shadow.variant not in task.variants:
        problems.append(_missing_variant(f"{at}.shadow.variant", routing.shadow.variant, names))
        ok = False
    adaptive = routing.adaptive
    if adaptive is not None and sum(1 for w in weights.values() if w > 0) != 2:
        problems.append(
            f"{at}.adaptive: an adaptive split needs exactly two variants with a weight "
            "above 0 (the pair the report compares)."
        )
        ok = False
    if routing.reasks is not None and routing.json_retries is not None:
        problems.append(
            f"{at}.json_retries: `json_retries` is the old name of `reasks`; keep only `reasks`."
        )
        ok = False
    if not ok:
        return None
    return Routing(
        weights=MappingProxyType({n: float(weights.get(n, 0.0)) for n in names}),
        cumulative=cumulative_weights(names, weights),
        fallback=tuple(dict.fromkeys(routing.fallback)),
        sticky=routing.sticky,
        salt=routing.salt or task_name,
        retries=routing.retries,
        reasks=next(n for n in (routing.reasks, routing.json_retries, 1) if n is not None),
        shadow=Shadow(routing.shadow.variant, routing.shadow.rate) if routing.shadow else None,
        adaptive=(
            Adaptive(adaptive.metric, adaptive.min_samples, adaptive.stop, adaptive.floor)
            if adaptive
            else None
        ),
    )


def cumulative_weights(
    names: Sequence[str], weights: Mapping[str, float]
) -> tuple[tuple[float, str], ...]:
    """(upper bound, variant) for the variants with a weight above 0, in `names` order;
    the last bound is exactly 1.0. Raises `ValueError` when every weight is 0."""
    total = sum(weights.get(name, 0.0) for name in names)
    if total <= 0:
        raise ValueError("every weight is 0")
    cumulative: list[tuple[float, str]] = []
    running = 0.0
    for name in names:
        weight = weights.get(name, 0.0)
        if weight > 0:
            running += weight / total
            cumulative.append((running, name))
    # Guard against float rounding: the last bound must cover every point in [0, 1).
    cumulative[-1] = (1.0, cumulative[-1][1])
    return tuple(cumulative)


def _missing_variant(at: str, name: str, names: Sequence[str]) -> str:
    return f"{at}: no variant named {name!r}; use one of: {', '.join(names)}."


def _compile_keys(
    path: Path, auth: AuthFile | None, tasks: Collection[str], problems: list[str]
) -> tuple[ApiKey, ...]:
    if auth is None:
        return ()
    keys = []
    seen: set[str] = set()
    for i, key in enumerate(auth.keys):
        at = f"{path}: auth.keys.{i}"
        digest = key.sha256.lower()
        if digest in seen:
            problems.append(f"{at}.sha256: the same key hash appears twice; keep one entry.")
        seen.add(digest)
        for task_name in key.tasks:
            if task_name != "*" and task_name not in tasks:
                problems.append(f"{at}.tasks: no task named {task_name!r}; fix or remove it.")
        keys.append(
            ApiKey(
                name=key.name,
                sha256=digest,
                tenant=key.tenant,
                tasks=frozenset(key.tasks),
                rpm=key.rpm,
                daily_budget_usd=key.daily_budget_usd,
                admin=key.admin,
                capture=key.capture,
            )
        )
    return tuple(keys)
