"""The simulated files and fine-tuning jobs API: `/v1/files`, `/v1/fine_tuning/jobs`
(create, list, retrieve, events, cancel) and `DELETE /v1/models/{model}`, in OpenAI's
shapes, so the official SDK's `files` and `fine_tuning.jobs` calls work against it.

A job's life is a function of the time since it was created (the scenario's
`fine_tuning` entry sets the seconds per state): `validating_files` → `queued` →
`running` → `succeeded`, or `failed` when its training file is invalid (at the end of
validation, error `invalid_training_file`) or its suffix is one of `fail_suffixes`
(halfway through running), or `cancelled` when cancelled before it ended. A succeeded job's
`ft:` model is then served by the chat endpoint with the scenario's `fine_tuning.model`
behaviour; deleting it (`DELETE /v1/models/{model}`, any `ft:` model) makes it answer
404 `model_not_found`, as a retired model does.

A training file is checked as OpenAI checks it: one JSON object per line with a `messages`
list, each message a known role with string content, an `assistant` turn in each, and at
least `MIN_EXAMPLES` examples. An upload whose lines are not JSON objects is refused at
once (400 `invalid_file_format`).
"""

from __future__ import annotations

import email.parser
import email.policy
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from tunegate.pricing import default_epochs
from tunegate.simulator.scenario import ModelBehaviour, Scenario, Tuning

MIN_EXAMPLES = 10
ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
ORGANIZATION = "org-tunegate-sim"

Reply = tuple[int, bytes]


@dataclass(frozen=True, slots=True)
class StoredFile:
    id: str
    filename: str
    purpose: str
    created_at: int
    content: bytes

    def shown(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.content),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


@dataclass(slots=True)
class Job:
    id: str
    model: str
    training_file: str
    validation_file: str | None
    suffix: str | None
    epochs: int
    examples: int
    tokens: int
    problem: str | None
    doomed: bool
    created: float
    metadata: dict[str, str] | None
    cancelled_at: float | None = None
    seed: int = 0
    steps: list[float] = field(default_factory=list)

    @property
    def fine_tuned_model(self) -> str:
        return f"ft:{self.model}:tunegate-sim:{self.suffix or ''}:{self.id[-8:]}"


def check_training_file(content: bytes, minimum: int = MIN_EXAMPLES) -> tuple[str | None, int, int]:
    """(the first problem or None, examples, tokens) of a chat fine-tuning JSONL file;
    tokens by the simulator's approximation (4 characters a token, 4 per message)."""
    examples = tokens = 0
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError:
            return f"line {number}: not valid JSON", examples, tokens
        messages = example.get("messages") if isinstance(example, dict) else None
        if not isinstance(messages, list) or not messages:
            return f"line {number}: no `messages` list", examples, tokens
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return f"line {number}: a message with an unknown role", examples, tokens
            if not isinstance(message.get("content"), str):
                return f"line {number}: a message without string content", examples, tokens
            tokens += 4 + math.ceil(len(message["content"]) / 4)
        if not any(m["role"] == "assistant" for m in messages):
            return f"line {number}: no assistant message", examples, tokens
        examples += 1
    if examples < minimum:
        return f"{examples} examples; at least {minimum} are required", examples, tokens
    return None, examples, tokens


class TuningService:
    """Files, jobs and retired models of one simulator run (kept in memory)."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float] = time.time) -> None:
        self._scenario = scenario
        self._tuning: Tuning = scenario.tuning
        self._clock = clock
        self._files: dict[str, StoredFile] = {}
        self._jobs: dict[str, Job] = {}
        self._deleted: set[str] = set()

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(("/v1/files", "/v1/fine_tuning/", "/v1/models/"))

    def behaviour_for(self, model: str) -> ModelBehaviour | None:
        """How `model` answers: None once deleted; a scenario entry by its exact name;
        a model a job produced; else the scenario's `"*"` entry (or None)."""
        if model in self._deleted:
            return None
        named = self._scenario.models.get(model)
        if named is not None:
            return named
        if model.startswith("ft:") and any(
            self._status(job)[0] == "succeeded" and job.fine_tuned_model == model
            for job in self._jobs.values()
        ):
            return self._tuning.model
        return self._scenario.behaviour_for(model)

    def handle(
        self, method: str, path: str, query: str, content_type: str, body: bytes
    ) -> Reply | None:
        """The reply to one request, or None when no route matches."""
        parts = path.removeprefix("/v1/").split("/")
        if parts[0] == "files":
            return self._files_route(method, parts[1:], content_type, body)
        if parts[:2] == ["fine_tuning", "jobs"]:
            return self._jobs_route(method, parts[2:], parse_qs(query), body)
        if parts[0] == "models" and len(parts) >= 2 and method == "DELETE":
            return self._delete_model("/".join(parts[1:]))
        return None

    # -- files ----------------------------------------------------------------------------

    def _files_route(
        self, method: str, rest: list[str], content_type: str, body: bytes
    ) -> Reply | None:
        if method == "POST" and not rest:
            return self._upload(content_type, body)
        if method == "GET" and not rest:
            data = [f.shown() for f in self._files.values()]
            return 200, orjson.dumps({"object": "list", "data": data, "has_more": False})
        if method == "GET" and len(rest) == 1:
            found = self._files.get(rest[0])
            if found is None:
                return _not_found(f"No such File object: {rest[0]}", "file")
            return 200, orjson.dumps(found.shown())
        return None

    def _upload(self, content_type: str, body: bytes) -> Reply:
        fields = _form_fields(content_type, body)
        if fields is None or "file" not in fields:
            return _bad("Send multipart/form-data with `file` and `purpose`.", "file")
        purpose = fields.get("purpose", (None, b""))[1].decode(errors="replace")
        if purpose != "fine-tune":
            return _bad(f"purpose: {purpose!r} is not simulated; use 'fine-tune'.", "purpose")
        filename, content = fields["file"]
        for number, line in enumerate(content.splitlines(), start=1):
            if line.strip() and not _is_json_object(line):
                message = f"Invalid file format for Fine-Tuning API: line {number} is not JSON."
                return _bad(message, "file", code="invalid_file_format")
        stored = StoredFile(
            "file-" + secrets.token_hex(12),
            filename or "upload.jsonl",
            purpose,
            int(self._clock()),
            content,
        )
        self._files[stored.id] = stored
        return 200, orjson.dumps(stored.shown())

    # -- jobs -----------------------------------------------------------------------------

    def _jobs_route(
        self, method: str, rest: list[str], query: dict[str, list[str]], body: bytes
    ) -> Reply | None:
        if not rest:
            if method == "POST":
                return self._create(body)
            if method == "GET":
                return self._list(query)
            return None
        job = self._jobs.get(rest[0])
        if job is None:
            return _not_found(f"Could not find fine-tune job: {rest[0]}", "fine_tuning_job_id")
        if method == "GET" and len(rest) == 1:
            return 200, orjson.dumps(self._shown(job))
        if method == "GET" and rest[1:] == ["events"]:
            return self._events(job, query)
        if method == "POST" and rest[1:] == ["cancel"]:
            return self._cancel(job)
        return None

    def _create(self, body: bytes) -> Reply:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("model"), str):
            return _bad("you must provide a model parameter", "model")
        training = self._files.get(str(request.get("training_file")))
        if training is None:
            return _bad("training_file: no such file; upload it first.", "training_file")
        validation_id = request.get("validation_file")
        validation = self._files.get(str(validation_id)) if validation_id else None
        if validation_id and validation is None:
            return _bad("validation_file: no such file; upload it first.", "validation_file")
        problem, examples, tokens = check_training_file(training.content)
        if problem is None and validation is not None:
            found, _, _ = check_training_file(validation.content, minimum=1)
            problem = f"validation file: {found}" if found else None
        hyper = request.get("hyperparameters") or {}
        epochs = hyper.get("n_epochs") if isinstance(hyper, dict) else None
        suffix = request.get("suffix") if isinstance(request.get("suffix"), str) else None
        metadata = request.get("metadata") if isinstance(request.get("metadata"), dict) else None
        job = Job(
            id="ftjob-" + secrets.token_hex(12),
            model=request["model"],
            training_file=training.id,
            validation_file=validation.id if validation else None,
            suffix=suffix,
            epochs=epochs if isinstance(epochs, int) and epochs > 0 else default_epochs(examples),
            examples=examples,
            tokens=tokens,
            problem=problem,
            doomed=suffix in self._tuning.fail_suffixes,
            created=self._clock(),
            metadata=metadata,
            seed=int(request["seed"]) if isinstance(request.get("seed"), int) else 0,
        )
        self._jobs[job.id] = job
        return 200, orjson.dumps(self._shown(job))

    def _list(self, query: dict[str, list[str]]) -> Reply:
        jobs = sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)
        after = query.get("after", [None])[0]
        if after is not None:
            ids = [j.id for j in jobs]
            jobs = jobs[ids.index(after) + 1 :] if after in ids else []
        limit = _limit(query)
        data = [self._shown(j) for j in jobs[:limit]]
        body = {"object": "list", "data": data, "has_more": len(jobs) > limit}
        return 200, orjson.dumps(body)

    def _cancel(self, job: Job) -> Reply:
        status, _ = self._status(job)
        if status in ("succeeded", "failed", "cancelled"):
            return _bad(f"Job {job.id} has already {status}; it cannot be cancelled.", None)
        job.cancelled_at = self._clock()
        return 200, orjson.dumps(self._shown(job))

    def _delete_model(self, model: str) -> Reply:
        if not model.startswith("ft:") or model in self._deleted:
            return _not_found(f"The model `{model}` does not exist.", "model")
        self._deleted.add(model)
        return 200, orjson.dumps({"id": model, "object": "model", "deleted": True})

    # -- a job's life ---------------------------------------------------------------------

    def _timeline(self, job: Job) -> list[tuple[float, str, str, str]]:
        """Every (time, state entered or "", level, message) of the job's whole life,
        ignoring cancellation."""
        t = self._tuning
        validated = job.created + t.validating_s
        started = validated + t.queued_s
        events = [
            (job.created, "validating_files", "info", f"Created fine-tuning job: {job.id}"),
            (job.created, "", "info", f"Validating training file: {job.training_file}"),
        ]
        if job.problem is not None:
            message = f"Training file {job.training_file} is invalid: {job.problem}"
            return [*events, (validated, "failed", "error", message)]
        events.append((validated, "queued", "info", "Files validated, moving job to queued state"))
        events.append((started, "running", "info", "Fine-tuning job started"))
        total = t.steps * job.epochs
        end = started + (t.running_s / 2 if job.doomed else t.running_s)
        for step in range(1, total + 1):
            at = started + t.running_s * step / total
            if at >= end and job.doomed:
                break
            loss = 1.8 * math.exp(-3 * step / total) + 0.05
            events.append((at, "", "info", f"Step {step}/{total}: training loss={loss:.4f}"))
        if job.doomed:
            message = "The job failed due to an internal error while training."
            return [*events, (end, "failed", "error", message)]
        created = f"New fine-tuned model created: {job.fine_tuned_model}"
        events.append((end, "", "info", created))
        events.append((end, "succeeded", "info", "The job has successfully completed"))
        return events

    def _seen(self, job: Job) -> list[tuple[float, str, str, str]]:
        """The events that have happened by now (a cancellation ends the timeline)."""
        now = self._clock()
        cut = now if job.cancelled_at is None else min(now, job.cancelled_at)
        seen = [e for e in self._timeline(job) if e[0] <= cut]
        if job.cancelled_at is not None and job.cancelled_at <= now:
            seen.append((job.cancelled_at, "cancelled", "info", "Job cancelled"))
        return seen

    def _status(self, job: Job) -> tuple[str, float | None]:
        """The job's state now and, when final, when it got there."""
        states = [(at, state) for at, state, _, _ in self._seen(job) if state]
        at, state = states[-1]
        return state, at if state in ("succeeded", "failed", "cancelled") else None

    def _shown(self, job: Job) -> dict[str, Any]:
        status, finished = self._status(job)
        error = None
        if status == "failed":
            code = "invalid_training_file" if job.problem else "training_failed"
            message = self._seen(job)[-1][3]
            param = "training_file" if job.problem else None
            error = {"code": code, "message": message, "param": param}
        succeeded = status == "succeeded"
        return {
            "id": job.id,
            "object": "fine_tuning.job",
            "created_at": int(job.created),
            "error": error,
            "fine_tuned_model": job.fine_tuned_model if succeeded else None,
            "finished_at": int(finished) if finished is not None else None,
            "hyperparameters": {
                "n_epochs": job.epochs,
                "batch_size": 1,
                "learning_rate_multiplier": 2.0,
            },
            "model": job.model,
            "organization_id": ORGANIZATION,
            "result_files": [],
            "seed": job.seed,
            "status": status,
            "trained_tokens": job.tokens * job.epochs if succeeded else None,
            "training_file": job.training_file,
            "validation_file": job.validation_file,
            "estimated_finish": None,
            "integrations": [],
            "metadata": job.metadata,
            "user_provided_suffix": job.suffix,
        }

    def _events(self, job: Job, query: dict[str, list[str]]) -> Reply:
        """Newest first, as OpenAI lists them; `after` (an event id) pages to older ones."""
        events = [
            {
                "id": f"ftevent-{job.id[-12:]}-{index}",
                "object": "fine_tuning.job.event",
                "created_at": int(at),
                "level": level,
                "message": message,
                "data": {},
                "type": "message",
            }
            for index, (at, _, level, message) in enumerate(self._seen(job))
        ][::-1]
        after = query.get("after", [None])[0]
        if after is not None:
            ids = [e["id"] for e in events]
            events = events[ids.index(after) + 1 :] if after in ids else []
        limit = _limit(query)
        body = {"object": "list", "data": events[:limit], "has_more": len(events) > limit}
        return 200, orjson.dumps(body)


def _limit(query: dict[str, list[str]]) -> int:
    raw = query.get("limit", ["20"])[0]
    return max(1, min(1000, int(raw))) if raw.isdigit() else 20


def _form_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]] | None:
    """The parts of a multipart/form-data body by field name: (filename, bytes)."""
    if not content_type.startswith("multipart/form-data"):
        return None
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return None
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def _error(message: str, param: str | None, code: str | None) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return orjson.dumps({"error": error})


def _bad(message: str, param: str | None, code: str | None = None) -> Reply:
    return 400, _error(message, param, code)


def _not_found(message: str, param: str | None) -> Reply:
    return 404, _error(message, param, "model_not_found" if param == "model" else None)
