"""The simulator's files and fine-tuning jobs API, through the official `openai` client
against a real simulator process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.harness import Simulator
from tunegate.pricing import default_epochs
from tunegate.simulator.tuning import check_training_file

KEY = "sk-sim-tuning"
SCENARIO = f"""
api_key: {KEY}
models:
  "gpt-3.5-turbo": {{}}
fine_tuning:
  validating_s: 0.1
  queued_s: 0.1
  running_s: 0.3
  steps: 2
  fail_suffixes: [doomed]
  model: {{quality: {{valid: 1.0}}}}
"""
FINAL = ("succeeded", "failed", "cancelled")


def example(i: int) -> str:
    messages = [
        {"role": "system", "content": "Classify the support ticket."},
        {"role": "user", "content": f"I was charged twice ({i})."},
        {"role": "assistant", "content": '{"category": "billing", "priority": "high"}'},
    ]
    return json.dumps({"messages": messages})


GOOD = "\n".join(example(i) for i in range(12)).encode()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    path = tmp_path_factory.mktemp("tuning") / "scenario.yaml"
    path.write_text(SCENARIO)
    simulator = Simulator(path)
    yield simulator
    simulator.stop()


@pytest.fixture
def client(sim: Simulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=KEY, base_url=f"{sim.url}/v1", max_retries=0) as client:
        yield client


def wait_final(client: openai.OpenAI, job_id: str) -> FineTuningJob:
    deadline = time.monotonic() + 10
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in FINAL or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def upload(client: openai.OpenAI, content: bytes = GOOD) -> str:
    return client.files.create(file=("train.jsonl", content), purpose="fine-tune").id


def test_a_job_passes_every_state_and_its_model_answers(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(
        model="gpt-3.5-turbo", training_file=upload(client), suffix="triage", seed=3
    )
    assert job.status == "validating_files"
    done = wait_final(client, job.id)
    assert done.status == "succeeded"
    assert done.fine_tuned_model is not None
    assert done.fine_tuned_model.startswith("ft:gpt-3.5-turbo:tunegate-sim:triage:")
    assert done.hyperparameters.n_epochs == default_epochs(12) == 8
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in reversed(events)]
    assert messages[0].startswith("Created fine-tuning job")
    assert "Files validated, moving job to queued state" in messages
    assert "Fine-tuning job started" in messages
    assert any(m.startswith("Step 16/16") for m in messages)
    assert messages[-1] == "The job has successfully completed"
    answer = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[
            {"role": "system", "content": "Classify the support ticket."},
            {"role": "user", "content": "I was charged twice!"},
        ],
    )
    assert answer.choices[0].message.content == '{"category": "billing", "priority": "high"}'
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=100).data]


def test_an_invalid_training_file_fails_validation(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(
        model="gpt-3.5-turbo", training_file=upload(client, example(1).encode())
    )
    done = wait_final(client, job.id)
    assert done.status == "failed"
    assert done.error is not None
    assert done.error.code == "invalid_training_file"
    assert "at least 10" in done.error.message


def test_a_file_that_is_not_jsonl_is_refused_at_upload(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        upload(client, b"not json\n")
    assert caught.value.code == "invalid_file_format"


def test_a_doomed_suffix_fails_while_running(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(
        model="gpt-3.5-turbo", training_file=upload(client), suffix="doomed"
    )
    done = wait_final(client, job.id)
    assert done.status == "failed"
    assert done.error is not None and done.error.code == "training_failed"
    assert done.fine_tuned_model is None


def test_cancel_ends_a_job_and_a_final_one_cannot_be_cancelled(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model="gpt-3.5-turbo", training_file=upload(client))
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert wait_final(client, job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")


def test_a_deleted_model_answers_model_not_found(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model="gpt-3.5-turbo", training_file=upload(client))
    model = wait_final(client, job.id).fine_tuned_model
    assert model is not None
    assert client.models.delete(model).deleted
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"


def test_the_file_check_names_the_first_problem(tmp_path: Path) -> None:
    no_answer = json.dumps({"messages": [{"role": "user", "content": "q"}]}).encode()
    assert check_training_file(no_answer)[0] == "line 1: no assistant message"
    bad_role = json.dumps({"messages": [{"role": "robot", "content": "q"}]}).encode()
    assert check_training_file(bad_role)[0] == "line 1: a message with an unknown role"
    assert check_training_file(GOOD)[:2] == (None, 12)
