"""What a task's next tuned model is trained on and from (SPEC §12 "Tuning target"): pure
lookups over a compiled `Task`, shared by `dataset export` and `tune start`.

    prompt format   `tuning.system`, else the `ft:` variant's system (`--as V`: V's)
    base model      `tuning.base_model`, else the few-shot variant's model
    upstream        `tuning.upstream`, else the few-shot variant's upstream
    candidate       the variant name the tuned model joins as: `candidate`, `candidate-2`, ...
"""

from __future__ import annotations

from dataclasses import dataclass

from tunegate.config.compiled import Task, Variant


class TuningTargetMissing(ValueError):
    """The task does not say what to tune; the message names what is missing."""


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """The system message a tuned model sees (None: no system message), and where it
    came from (`tuning.system` or `variants.NAME.system`)."""

    system: str | None
    source: str


def tuned_variant(task: Task) -> Variant | None:
    """The task's `ft:` variant: the first with a weight above 0, else the first."""
    tuned = [v for v in task.variants.values() if v.is_tuned]
    weighted = [v for v in tuned if task.routing.weights.get(v.name, 0) > 0]
    found = weighted or tuned
    return found[0] if found else None


def few_shot_variant(task: Task) -> Variant | None:
    """The task's prompted base variant: the first non-`ft:` one with examples, else the
    first non-`ft:` one."""
    base = [v for v in task.variants.values() if not v.is_tuned]
    with_examples = [v for v in base if v.example_count]
    found = with_examples or base
    return found[0] if found else None


def prompt_format(task: Task, as_variant: str | None = None) -> PromptFormat:
    """The prompt format exported examples take; raises `TuningTargetMissing`."""
    if as_variant is not None:
        variant = task.variants.get(as_variant)
        if variant is None:
            raise TuningTargetMissing(
                f"--as: task {task.name!r} has no variant {as_variant!r}; "
                f"use one of: {', '.join(task.variants)}."
            )
        return PromptFormat(variant.system, f"variants.{variant.name}.system")
    if task.tuning is not None and task.tuning.system is not None:
        return PromptFormat(task.tuning.system, "tuning.system")
    tuned = tuned_variant(task)
    if tuned is None:
        raise TuningTargetMissing(
            f"task {task.name!r} has neither `tuning.system` nor an `ft:` variant to take "
            "the prompt format from; add `tuning: {system: ...}` or pass --as VARIANT."
        )
    return PromptFormat(tuned.system, f"variants.{tuned.name}.system")


def base_model(task: Task) -> tuple[str, str]:
    """(base model, upstream name) a tuning job for `task` uses; raises
    `TuningTargetMissing`."""
    target = task.tuning
    few_shot = few_shot_variant(task)
    model = target.base_model if target and target.base_model else None
    upstream = target.upstream if target and target.upstream else None
    if few_shot is not None:
        model = model or few_shot.model
        upstream = upstream or few_shot.upstream
    if model is None or upstream is None:
        missing = "tuning.base_model" if model is None else "tuning.upstream"
        raise TuningTargetMissing(
            f"task {task.name!r} has no few-shot variant to tune from; set `{missing}`."
        )
    return model, upstream


def candidate_name(task: Task) -> str:
    """`candidate`, or `candidate-2`, `candidate-3`, ... when taken."""
    name, number = "candidate", 1
    while name in task.variants:
        number += 1
        name = f"candidate-{number}"
    return name


def candidate_overlay(task: Task, model: str, upstream: str) -> dict[str, object]:
    """The config to add a tuned `model` to `task` as the next candidate: the prompt
    format it was tuned on, the tuned (else few-shot) variant's parameters, weight 0 and
    served as the shadow at rate 0.2 (SPEC §12). Merged into the config file (keys at the
    same paths replace), it passes `tunegate check-config`."""
    name = candidate_name(task)
    variant: dict[str, object] = {"upstream": upstream, "model": model}
    try:
        system = prompt_format(task).system
    except TuningTargetMissing:
        system = None  # exported with --as: the user knows which prompt it learnt
    if system is not None:
        variant["system"] = system
    like = tuned_variant(task) or few_shot_variant(task)
    if like is not None and like.params:
        variant["params"] = dict(like.params)
    weights: dict[str, float | int] = {
        n: int(w) if w == int(w) else w for n, w in task.routing.weights.items()
    }
    weights[name] = 0
    routing = {"weights": weights, "shadow": {"variant": name, "rate": 0.2}}
    return {"tasks": {task.name: {"variants": {name: variant}, "routing": routing}}}
