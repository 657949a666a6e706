"""The one error hierarchy of tunegate.

Foreign exceptions are translated where they enter (the upstream module turns SDK errors
into `UpstreamError`s; the config module turns YAML and pydantic errors into
`ConfigError`); every `GatewayError` becomes an HTTP answer in one place (`api/errors.py`).

    TunegateError
    ├── ConfigError                    an invalid config file; never reaches a caller
    ├── TuningError                    a files or fine-tuning call failed (`tunegate tune`)
    ├── UsageError                     a command's arguments do not fit (exit 2)
    ├── UpstreamError                  one failed upstream attempt (retry and fallback decide)
    │   ├── UpstreamRateLimited        429 rate_limit_exceeded        retryable, retry_after
    │   ├── UpstreamQuotaExhausted     429 insufficient_quota         final
    │   ├── UpstreamServerError        5xx                            retryable
    │   ├── UpstreamTimeout            the attempt timed out          retryable
    │   ├── UpstreamConnectionError    refused, reset, dropped        retryable
    │   ├── UpstreamBadRequest         400/409/422                    final
    │   │   └── UpstreamModelNotFound  404 (a retired model)          final, falls back
    │   │   └── UpstreamInputRefused   400 blaming the caller's input  final, no fallback
    │   ├── UpstreamAuthError          401/403                        final
    │   └── UpstreamInvalidOutput      answer failed the JSON guard   final for this attempt
    └── GatewayError                   what a caller sees: status, code, OpenAI error type
        ├── InvalidRequest             400 invalid_request
        ├── AuthenticationFailed       401 invalid_api_key
        ├── PermissionDenied           403 task_not_allowed, override_not_allowed
        ├── NotFound                   404 task_not_found, request_not_found
        ├── MethodNotAllowed           405 method_not_allowed
        ├── Conflict                   409 feedback_exists
        ├── RequestTooLarge            413 request_too_large
        ├── LimitExceeded              429 rate_limited, budget_exceeded
        ├── CallerGone                 499 client_closed_request (logged; nobody reads it)
        ├── AllAttemptsFailed          502 upstream_error, invalid_output
        ├── Unavailable                503 overloaded, not_ready, limits_unavailable
        └── DeadlineExceeded           504 deadline_exceeded
"""

from __future__ import annotations


class TunegateError(Exception):
    """Base of every error tunegate raises on purpose."""


class ConfigError(TunegateError):
    """The configuration is invalid; the message names the file, the YAML path and the fix."""


class TuningError(TunegateError):
    """A files or fine-tuning API call failed; the message says why, never a key."""


class UsageError(TunegateError):
    """A command's arguments do not fit together or with the config: exit 2 with this."""


class UpstreamError(TunegateError):
    """One upstream attempt failed. `kind` is a bounded label for metrics."""

    kind = "error"
    retryable = False

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UpstreamRateLimited(UpstreamError):
    kind = "rate_limited"
    retryable = True


class UpstreamQuotaExhausted(UpstreamError):
    kind = "quota_exhausted"


class UpstreamServerError(UpstreamError):
    kind = "server_error"
    retryable = True


class UpstreamTimeout(UpstreamError):
    kind = "timeout"
    retryable = True


class UpstreamConnectionError(UpstreamError):
    kind = "connection"
    retryable = True


class UpstreamBadRequest(UpstreamError):
    kind = "bad_request"


class UpstreamInputRefused(UpstreamBadRequest):
    """The upstream refused the caller's input (`context_length_exceeded`): no variant
    would take it, so the caller gets a 400 with the upstream's `code`."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class UpstreamModelNotFound(UpstreamBadRequest):
    """404: the variant's model is gone (a tuned model deleted or retired). Final for
    the variant; the fallback serves, as in an outage, and it is never a 404 to the
    caller."""

    kind = "model_not_found"


class UpstreamAuthError(UpstreamError):
    kind = "auth"


class UpstreamInvalidOutput(UpstreamError):
    kind = "invalid_output"


class GatewayError(TunegateError):
    """An error answered to the caller in OpenAI's error shape."""

    status = 500
    error_type = "api_error"
    code = "internal_error"
    should_retry: bool | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
        should_retry: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.retry_after_s = retry_after_s
        if should_retry is not None:
            self.should_retry = should_retry
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "permission_error"
    code = "task_not_allowed"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "task_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(GatewayError):
    status = 409
    error_type = "invalid_request_error"
    code = "feedback_exists"


class RequestTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class LimitExceeded(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limited"
    should_retry = True


class CallerGone(GatewayError):
    """The caller hung up before its answer: its work was cancelled. The answer goes
    nowhere; the status (nginx's 499) is for the access line."""

    status = 499
    error_type = "invalid_request_error"
    code = "client_closed_request"


class AllAttemptsFailed(GatewayError):
    status = 502
    error_type = "api_error"
    code = "upstream_error"
    should_retry = True


class Unavailable(GatewayError):
    status = 503
    error_type = "api_error"
    code = "overloaded"
    should_retry = True


class DeadlineExceeded(GatewayError):
    status = 504
    error_type = "api_error"
    code = "deadline_exceeded"
    should_retry = False
