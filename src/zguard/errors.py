"""zguard's exceptions: one base class, each subclass with a stable `code` a client can act on.

    ZguardError                        code, HTTP status, OpenAI error type, optional `param`
    ├── ConfigError                    bad settings: names every offending key and its fix
    ├── RequestError (400)             the request is wrong; do not retry it unchanged
    │   ├── InvalidJSON                invalid_json
    │   ├── MissingField               missing_required_field
    │   ├── UnknownField               unknown_field
    │   ├── InvalidType                invalid_type
    │   ├── InvalidValue               invalid_value
    │   ├── InvalidPrompt              invalid_prompt
    │   ├── InvalidSize                invalid_size
    │   ├── UnsupportedResponseFormat  unsupported_response_format
    │   ├── ModelNotFound              model_not_found
    │   └── PromptRejected             prompt_rejected: the prompt policy blocked it; names the category
    ├── UnsupportedMediaType (415)     unsupported_media_type
    ├── RequestTooLarge (413)          request_too_large
    ├── IpNotAllowed (403)             ip_not_allowed: the client address is not in the listener's allowlist
    ├── AuthenticationError (401)      carries the `WWW-Authenticate` challenge
    │   ├── MissingCredentials         missing_credentials
    │   └── InvalidApiKey              invalid_api_key: wrong, unknown, revoked, expired or disabled
    ├── PermissionDenied (403)         permission_denied: names the missing permission
    ├── TooManyRequests (429)          carries `retry_after` seconds
    │   ├── TooManyFailedLogins        too_many_failed_logins: checked before any password work
    │   ├── RateLimitExceeded          rate_limit_exceeded: the principal's request rate; RateLimit-* headers
    │   └── TooManyConcurrentRequests  too_many_concurrent_requests: the principal's in-flight generations
    ├── RouteNotFound (404)            not_found
    ├── MethodNotAllowed (405)         method_not_allowed
    ├── ServiceUnavailable (503)       carries `retry_after` seconds
    │   ├── ServerBusy                 server_busy: the admission queue is full
    │   ├── NotReady                   model_not_ready: loading or warming up
    │   └── RateLimiterUnavailable     rate_limiter_unavailable: the counter storage (Redis) failed; fail closed
    ├── GenerationTimeout (504)        generation_timeout
    └── InternalError (500)            internal_error: details go to the log, never to the client

The public `message` is written for the client and never contains `str()` of another exception;
`detail` holds what the operator needs and stays server-side.

Exit codes, one table for every `zguard` command (README "Exit codes"):

    0  EXIT_OK           done; the check passed
    1  EXIT_NO           the command ran and the answer is no: `db current` not at head,
                         `audit verify` damaged, `model verify` mismatch, `trace` found nothing or
                         the label is invalid, `policy test` would block, `policy reload` found no
                         server, `scan` findings at or above --fail-on, `doctor` WARN
    2  EXIT_FIX          the operator must change something: settings, arguments, a refused
                         action, an unusable key file, a schema not current, `doctor` FAIL
    3  EXIT_UNAVAILABLE  a dependency failed: the state database cannot be reached, the audit
                         trail could not record the command, the model failed to load (`serve`)
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_NO = 1
EXIT_FIX = 2
EXIT_UNAVAILABLE = 3


class ZguardError(Exception):
    """Base of every error zguard raises on purpose."""

    code = "internal_error"
    status = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.detail = detail
        self.headers: dict[str, str] = {}  # extra response headers (e.g. RateLimit-*)


class ConfigError(ZguardError):
    """Settings that cannot be used; `problems` holds one line per offending key."""

    code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class RequestError(ZguardError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(RequestError):
    code = "invalid_json"


class MissingField(RequestError):
    code = "missing_required_field"


class UnknownField(RequestError):
    code = "unknown_field"


class InvalidType(RequestError):
    code = "invalid_type"


class InvalidValue(RequestError):
    code = "invalid_value"


class InvalidPrompt(RequestError):
    code = "invalid_prompt"


class InvalidSize(RequestError):
    code = "invalid_size"


class UnsupportedResponseFormat(RequestError):
    code = "unsupported_response_format"


class ModelNotFound(RequestError):
    code = "model_not_found"


class PromptRejected(RequestError):
    """The prompt policy blocked `prompt` or `negative_prompt` (`param`); no GPU work was done.

    The message names the category, and the matched list entry only under `policy.reveal_terms`;
    `policy` holds the verdict's audit fields (verdict, category, detector, term id), never text.
    """

    code = "prompt_rejected"

    def __init__(
        self,
        message: str,
        *,
        param: str,
        category: str,
        detector: str,
        policy: dict[str, str | int | float | bool | None],
        detail: str | None = None,
    ) -> None:
        super().__init__(message, param=param, detail=detail)
        self.category = category
        self.detector = detector
        self.policy = policy


class UnsupportedMediaType(ZguardError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RequestTooLarge(ZguardError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class IpNotAllowed(ZguardError):
    """The client address is outside the listener's allowlist; refused before any other work."""

    status = 403
    type = "permission_error"
    code = "ip_not_allowed"

    def __init__(self, message: str, *, listener: str, address: str, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.listener = listener
        self.address = address


class AuthenticationError(ZguardError):
    status = 401
    type = "authentication_error"
    code = "authentication_failed"
    challenge = 'Bearer realm="zguard", Basic realm="zguard", charset="UTF-8"'


class MissingCredentials(AuthenticationError):
    code = "missing_credentials"


class InvalidApiKey(AuthenticationError):
    code = "invalid_api_key"


class PermissionDenied(ZguardError):
    status = 403
    type = "permission_error"
    code = "permission_denied"

    def __init__(self, message: str, *, permission: str, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.permission = permission


class TooManyRequests(ZguardError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = max(1, int(retry_after))


class TooManyFailedLogins(TooManyRequests):
    code = "too_many_failed_logins"


class RateLimitExceeded(TooManyRequests):
    """Over one of the principal's rates; `headers` carries RateLimit-Limit/-Remaining/-Reset."""

    code = "rate_limit_exceeded"


class TooManyConcurrentRequests(TooManyRequests):
    """The principal already has its maximum of generations in flight."""

    code = "too_many_concurrent_requests"


class RouteNotFound(ZguardError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ZguardError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ServiceUnavailable(ZguardError):
    status = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = max(1, int(retry_after))


class ServerBusy(ServiceUnavailable):
    code = "server_busy"


class NotReady(ServiceUnavailable):
    code = "model_not_ready"


class RateLimiterUnavailable(ServiceUnavailable):
    """The rate limiter's storage could not be asked; requests are refused rather than let through."""

    code = "rate_limiter_unavailable"


AUDIT_RETRY_AFTER_S = 5


class AuditUnavailable(ServiceUnavailable):
    """The audit store could not record the request, so it was refused: nothing runs unrecorded."""

    code = "audit_unavailable"

    def __init__(self, message: str, *, retry_after: int = AUDIT_RETRY_AFTER_S, detail: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after, detail=detail)


class GenerationTimeout(ZguardError):
    status = 504
    type = "server_error"
    code = "generation_timeout"


class InternalError(ZguardError):
    code = "internal_error"
