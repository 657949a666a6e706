"""Every metric the gateway exports (SPEC §5): name, help, label names and buckets. Plain
data: the recording and the exposition are in `metrics/__init__.py`."""

from __future__ import annotations

from dataclasses import dataclass

NO_VARIANT = "none"
CACHE_RESULTS = ("hit", "miss", "bypass", "error")
FLUSH_DELAY_S = 1.0

# Seconds. Cache hits answer in about a millisecond; deadlines reach minutes.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
)  # fmt: skip
# The gateway's own time per request: tens of microseconds when all is well.
OVERHEAD_BUCKETS = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
FEEDBACK_BUCKETS = tuple(i / 10 for i in range(11))

Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: its name, help, label names and, for a histogram, its buckets."""

    name: str
    doc: str
    labels: Labels
    buckets: tuple[float, ...] = ()

    @property
    def is_histogram(self) -> bool:
        return bool(self.buckets)


REQUESTS = Family(
    "tunegate_requests_total",
    "Requests by task, serving variant, cache state and outcome.",
    ("task", "variant", "cache", "outcome"),
)
REQUEST_DURATION = Family(
    "tunegate_request_duration_seconds",
    "Whole-request latency, retries and fallbacks included.",
    ("task", "variant", "cache"),
    LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Family(
    "tunegate_upstream_duration_seconds",
    "Latency of each upstream call, failed ones included.",
    ("task", "variant", "model"),
    LATENCY_BUCKETS,
)
OVERHEAD_DURATION = Family(
    "tunegate_overhead_duration_seconds",
    "Time a request spent in the gateway itself, not waiting on upstream or store.",
    ("task",),
    OVERHEAD_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Family(
    "tunegate_time_to_first_token_seconds",
    "Time from the request to the first streamed token.",
    ("task", "variant"),
    LATENCY_BUCKETS,
)
TOKENS = Family(
    "tunegate_tokens_total",
    "Upstream tokens by kind (prompt, completion).",
    ("task", "variant", "model", "kind"),
)
COST = Family(
    "tunegate_cost_usd_total",
    "Upstream cost in USD, re-asks and failed attempts included.",
    ("task", "variant", "model"),
)
CACHE_LOOKUPS = Family(
    "tunegate_cache_lookups_total",
    "Cache lookups by result (hit, miss, bypass, error).",
    ("task", "result"),
)
CACHE_SAVED = Family(
    "tunegate_cache_saved_usd_total",
    "Upstream cost the cache saved, in USD.",
    ("task",),
)
JSON_VALIDATION = Family(
    "tunegate_json_validation_total",
    "JSON output checks by result (valid, repaired, invalid).",
    ("task", "variant", "result"),
)
CHECK_RESULTS = Family(
    "tunegate_check_results_total",
    "Output checks by kind (language, max_sentences, ...) and result (pass, fail), for "
    "every evaluated answer, under the variant that made it.",
    ("task", "variant", "check", "result"),
)
UPSTREAM_ERRORS = Family(
    "tunegate_upstream_errors_total",
    "Failed upstream calls by kind of failure.",
    ("task", "variant", "kind"),
)
FALLBACKS = Family(
    "tunegate_fallbacks_total",
    "Moves from a failed variant to the next one, by reason.",
    ("task", "from_variant", "to_variant", "reason"),
)
FEEDBACK_SCORE = Family(
    "tunegate_feedback_score",
    "Feedback scores (0..1) by the variant that served the request.",
    ("task", "variant"),
    FEEDBACK_BUCKETS,
)
SHADOW_REQUESTS = Family(
    "tunegate_shadow_requests_total",
    "Shadow calls by shadow variant and result (ok, invalid, error, skipped).",
    ("task", "variant", "result"),
)
SHADOW_COST = Family(
    "tunegate_shadow_cost_usd_total",
    "Upstream cost of shadow calls in USD, apart from the callers' cost.",
    ("task", "variant", "model"),
)
JUDGE_REQUESTS = Family(
    "tunegate_judge_requests_total",
    "Judgements by kind (point, pair) and result (ok, invalid, error, skipped).",
    ("task", "kind", "result"),
)
JUDGE_COST = Family(
    "tunegate_judge_cost_usd_total",
    "Upstream cost of judge calls in USD, apart from the callers' cost.",
    ("task", "model"),
)
JUDGE_SCORE = Family(
    "tunegate_judge_score",
    "Judge scores of served samples, score/10 (0..1), by the judged variant.",
    ("task", "variant"),
    FEEDBACK_BUCKETS,
)
IN_FLIGHT = Family("tunegate_in_flight_requests", "Task requests being served now.", ())

# Experiment gauges, read from the shared store (the same in every worker), so exported
# by whichever worker answers the scrape and never through the multiprocess files.
EXPERIMENT_WEIGHT = Family(
    "tunegate_experiment_weight",
    "Share of traffic each variant gets now (adaptive splits move it; else configured).",
    ("task", "variant"),
)
EXPERIMENT_STATE = Family(
    "tunegate_experiment_state",
    "1 for the split's current state (configured, warming, exploring, stopped), else 0.",
    ("task", "state"),
)
EXPERIMENT_DIFFERENCE = Family(
    "tunegate_experiment_difference",
    "Compared figure, a - b (tuned minus the other): estimate, fixed-horizon 95% interval "
    "(ci_low, ci_high) and anytime-valid 95% confidence sequence (cs_low, cs_high).",
    ("task", "figure", "bound"),
)
EXPERIMENT_DECISION = Family(
    "tunegate_experiment_decision",
    "1 for each figure's current decision (a variant's name, equivalent or undecided); "
    "figure overall is the policy's recommendation.",
    ("task", "figure", "decision"),
)
EXPERIMENT_SAMPLES = Family(
    "tunegate_experiment_samples",
    "Experiment samples per variant (requests the router chose it for), from the store.",
    ("task", "variant"),
)

STORE_STATE = Family(
    "tunegate_store_state",
    "1 for the store's state as this process sees it (ok; slow after a timeout; down "
    "after 3 failures in a row, until a probe succeeds), else 0.",
    ("state",),
)

CAPTURE = Family(
    "tunegate_capture_total",
    "Sampled exchanges kept for fine-tuning, or skipped (opted-out key, failed check, stream).",
    ("task", "result"),
)
FAMILIES = (
    REQUESTS,
    REQUEST_DURATION,
    UPSTREAM_DURATION,
    OVERHEAD_DURATION,
    TIME_TO_FIRST_TOKEN,
    TOKENS,
    COST,
    CACHE_LOOKUPS,
    CACHE_SAVED,
    JSON_VALIDATION,
    CHECK_RESULTS,
    CAPTURE,
    UPSTREAM_ERRORS,
    FALLBACKS,
    FEEDBACK_SCORE,
    SHADOW_REQUESTS,
    SHADOW_COST,
    JUDGE_REQUESTS,
    JUDGE_COST,
    JUDGE_SCORE,
)
EXPERIMENT_FAMILIES = (
    EXPERIMENT_WEIGHT,
    EXPERIMENT_STATE,
    EXPERIMENT_SAMPLES,
    EXPERIMENT_DIFFERENCE,
    EXPERIMENT_DECISION,
)
