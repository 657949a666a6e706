"""A simulated OpenAI-compatible upstream for tests, the demo and benchmarks.

The gateway talks to it with the `openai` SDK exactly as to OpenAI: `POST
/v1/chat/completions` (plain and streamed) and `GET /v1/models` answer in OpenAI's shapes,
and errors carry OpenAI's status, `type`, `code` and headers, so the SDK raises its usual
exception classes. What each model answers, how fast and how it fails is set by a
scenario file (`scenario.py`); what the answers are is decided in `answers.py`.
The files and fine-tuning jobs API (`/v1/files`, `/v1/fine_tuning/jobs`) and
`DELETE /v1/models/{model}` live in `tuning.py`; the `ft:` models its jobs produce are
served here with the scenario's `fine_tuning.model` behaviour.

Faults: forced on one request with the header `x-sim-fault: KIND`, else the next one
queued for its model with `POST /_sim/script {"model": M, "faults": [KIND, ...]}`, else
drawn at random per the scenario's rates:

    429             429 rate_limit_exceeded (type requests) with `retry-after`
                    (the model's `retry_after_s`, or the `x-sim-retry-after` header)
    429:SECONDS     (script and header only) the same with `retry-after: SECONDS`
    quota           429 insufficient_quota, no `retry-after`
    500, 503        server_error
    400             invalid_request_error context_length_exceeded
    401             invalid_request_error invalid_api_key
    404             invalid_request_error model_not_found
    hang            never answers; waits until the client goes away
    drop            starts the answer, then closes the connection halfway
    slow            streams drip one chunk per `slow_chunk_ms` (plain answers wait as long)
    huge            200 with the answer followed by `HUGE_ANSWER_BYTES` (4 MiB) of prose,
                    max_tokens ignored (streams send it as one chunk)
    invalid_json, fenced, trailing_comma, missing_field, wrong_enum, prose
                    200 with the answer broken that way (German replies: in English;
                    judges: prose instead of JSON)
    english, too_long, unsigned, as_an_ai, markup
                    a German reply with that flaw (`replies.py`)
    valid           200 with the right answer, whatever the quality draw
    ok              (script and header only) behave normally, no random fault

Inspection for tests: `GET /_sim/requests[?model=X]` lists the last 10,000 chat requests,
each its body's keys (model, messages, every other parameter) plus `has_authorization`
(whether an Authorization header came; never the key) and `fault` (the one applied);
`DELETE /_sim/requests` forgets them; `DELETE /_sim/script` empties every fault queue and
restarts every model's request count, so random faults replay from the start.
"""

from __future__ import annotations

from pathlib import Path

import uvicorn

from tunegate.simulator.app import create_simulator_app
from tunegate.simulator.scenario import load_scenario

__all__ = ["create_simulator_app", "load_scenario", "serve_simulator"]


def serve_simulator(
    host: str, port: int, scenario_path: Path | None, seed: int | None = None
) -> None:
    """Serve the scenario at `scenario_path` (None: the default) until interrupted.
    `seed` None uses the scenario's seed. Raises `ValueError` for a bad scenario file."""
    app = create_simulator_app(load_scenario(scenario_path), seed)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        # Nothing sits in front of it, and no client reads these: each costs per request.
        proxy_headers=False,
        server_header=False,
        date_header=False,
        backlog=4096,
        # A `hang` request would otherwise hold the shutdown until its client gives up.
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run()
