"""The field names of the experiment hashes in the store, in one place: the recorder
writes them, the report reads them (recorder.py's docstring says what each one counts).

Per task and variant (`tunegate:exp:{task}:{variant}`): the samples' counters and sums,
the latency histogram (`h:<bucket>`) and two sets of feedback sums. Per shadow pair
(`tunegate:pair:{task}:{primary}:{shadow}`): `N`, `ANSWERED`, `INVALID`, `AGREE`, the
differences `D_LATENCY` and `D_COST` (with their squares) and the shadow's `COST`.
"""

from __future__ import annotations

N = "n"
OK = "ok"
FIRST_VALID = "first_valid"
REPAIRED = "repaired"
CALLS = "calls"
PROMPT_TOKENS = "pt"
COMPLETION_TOKENS = "ct"
LATENCY = "lat"
COST = "cost"
COST_OK = "cost_ok"
FIRST_TS = "first_ts"
LAST_TS = "last_ts"
HISTOGRAM = "h:"
FEEDBACK = "fb"  # feedback on samples, compared
FEEDBACK_NOT_SAMPLED = "fbx"  # feedback on answers that were no sample, shown only

CHECKED = "chk_n"  # samples whose first answer the output checks evaluated
CHECKS_PASSED_FIRST = "chk_first"  # ... and that answer passed them all
CHECK_FAILURE = "chkf:"  # chkf:<kind>: the first answer failed that kind of check
JUDGE_SCORE = "js"  # judge scores of samples (/10): js_n, js_s, js_ss

ANSWERED = "answered"
INVALID = "invalid"
AGREE = "agree"
D_LATENCY = "dl"
D_COST = "dc"
JUDGED_PAIRS = "jp_n"  # shadow pairs the judge compared
JUDGED_TIES = "jp_ties"
JUDGED_PRIMARY_WINS = "jp_primary"  # ... where the answer the caller got was better


def squared(field: str) -> str:
    """The sum of squares kept beside a sum."""
    return f"{field}_sq"


def histogram(bucket: int) -> str:
    """The count of samples in latency bucket `bucket` (stats.bucket_of)."""
    return f"{HISTOGRAM}{bucket}"


def feedback(prefix: str) -> tuple[str, str, str]:
    """The count, sum and sum of squares of the scores under `prefix` (feedback, judge)."""
    return f"{prefix}_n", f"{prefix}_s", f"{prefix}_ss"


def check_failure(kind: str) -> str:
    """The count of samples whose first answer failed checks of `kind`."""
    return f"{CHECK_FAILURE}{kind}"
