"""zguard's exceptions: one tree, every class with a stable `code`, a `message` and a `fix`.

Two branches. The HTTP branch is what a client is told: an HTTP status, the OpenAI error `type`,
the `code` a client can act on, and headers (Retry-After, WWW-Authenticate, RateLimit-*); its
`fix` is the operator's hint that `zguard doctor --explain` prints for a refused request. The
operator branch is what someone at the command line or watching `serve` start is told: the
message names the file, key or setting, `fix` the command that mends it, and `exit_code` comes
from the one table below. Every CLI catches `ZguardError` once (zguard.cli.main) and prints the
message and the fix; the HTTP layer (zguard.app.errors) answers an operator error as a generic
`internal_error`, never with its message.

    ZguardError                             code, message, fix; `detail` stays server-side
    ├── HTTP branch                         status, type, param, headers
    │   ├── RequestError (400)              the request is wrong; do not retry it unchanged
    │   │   ├── InvalidJSON                 invalid_json
    │   │   ├── MissingField                missing_required_field
    │   │   ├── UnknownField                unknown_field
    │   │   ├── InvalidType                 invalid_type
    │   │   ├── InvalidValue                invalid_value
    │   │   ├── InvalidPrompt               invalid_prompt
    │   │   ├── InvalidSize                 invalid_size: outside the settings or what the model can draw
    │   │   ├── DuplicateHeader             duplicate_header: Authorization, Host, Content-Length ... sent twice
    │   │   ├── InvalidHost                 invalid_host: `Host` is none of the listener's server_names
    │   │   ├── MalformedRequest            malformed_request: the HTTP parser refused the bytes (zguard.serve.transport)
│   │   ├── UnsupportedResponseFormat   unsupported_response_format
    │   │   ├── ModelNotFound               model_not_found
    │   │   └── PromptRejected              prompt_rejected: the prompt policy blocked it; names the category
    │   ├── UnsupportedMediaType (415)      unsupported_media_type
    │   ├── RequestTooLarge (413)           request_too_large
│   ├── RequestHeaderFieldsTooLarge (431) request_header_fields_too_large: request line and headers over the listener's limit
│   ├── RequestTimeout (408)            request_timeout: the headers or the body came too slowly
    │   ├── IpNotAllowed (403)              ip_not_allowed: the client address is not in the listener's allowlist
    │   ├── AuthenticationError (401)       carries the `WWW-Authenticate` challenge
    │   │   ├── MissingCredentials          missing_credentials
    │   │   ├── InvalidApiKey               invalid_api_key: wrong, unknown, revoked, expired or disabled
    │   │   ├── SessionExpired              session_expired: a console session timed out, was revoked or its user changed
    │   │   ├── SecondFactorRequired        second_factor_required: the password was right; the one-time code is missing or wrong
    │   │   └── SignInFailed                sign_in_failed: a sign-in through the IdP (OIDC) did not complete: state, code or id_token refused
    │   ├── PermissionDenied (403)          permission_denied: names the missing permission
    │   ├── CsrfFailed (403)                csrf_failed: a console change without its session's token, or from another origin
    │   ├── SecondFactorNotEnrolled (403)   second_factor_not_enrolled: the user's role requires TOTP and they have none
    │   ├── SignInRefused (403)             sign_in_refused: the IdP vouched for the person; zguard's rules refuse them (separation of duties, disabled, MFA)
    │   ├── TooManyRequests (429)           carries `retry_after` seconds
    │   │   ├── TooManyFailedLogins         too_many_failed_logins: checked before any password work
    │   │   ├── RateLimitExceeded           rate_limit_exceeded: the principal's request rate; RateLimit-* headers
    │   │   └── TooManyConcurrentRequests   too_many_concurrent_requests: the principal's in-flight generations
    │   ├── RouteNotFound (404)             not_found
    │   ├── MethodNotAllowed (405)          method_not_allowed
    │   ├── ServiceUnavailable (503)        carries `retry_after` seconds
    │   │   ├── ServerBusy                  server_busy: the admission queue, or the trace pool, is full
    │   │   ├── NotReady                    model_not_ready: loading or warming up
    │   │   ├── RateLimiterUnavailable      rate_limiter_unavailable: the counter storage (Redis) failed; fail closed
    │   │   ├── TooManyConnections          too_many_connections: the listener's or the client address's connection cap
    │   │   ├── IdentityProviderUnavailable identity_provider_unavailable: the IdP's keys (JWKS) could not be fetched
│   │   └── AuditUnavailable            audit_unavailable: the trail could not record the request; fail closed
    │   ├── GenerationTimeout (504)         generation_timeout
    │   ├── TraceTimeout (504)              trace_timeout: a trace ran past provenance.trace_timeout_s
    │   ├── InternalError (500)             internal_error: details go to the log, never to the client
    │   ├── ScimError (400)                 scim_invalid_request: a SCIM request refused, in the SCIM error shape with its `scim_type`
    │   │   ├── ScimUnauthorized (401)      scim_unauthorized: no SCIM bearer, or not the one identity.scim.token_sha256 digests
    │   │   ├── ScimNotFound (404)          scim_not_found: no such SCIM user or group
    │   │   ├── ScimConflict (409)          scim_conflict: the userName or group name is taken (`uniqueness`), a local user's included
    │   │   └── ScimRoleConflict (409)      scim_role_conflict: memberships whose mapped roles combine separated duties; names the groups
    │   ├── ApprovalError (400)             approval_refused: a model-use approval step refused (zguard.services.approvals)
    │   │   ├── ApprovalRequired (403)      approval_required: no active grant for the served model (approvals.required)
    │   │   │   └── GrantExhausted          grant_exhausted: the grant's total quota is used up
    │   │   ├── SelfApproval (403)          self_approval: nobody decides on their own request
    │   │   ├── GroupMemberApproval (403)   group_member_approval: a member of the requesting group decides (four eyes)
    │   │   ├── NotGroupMember (403)        not_group_member: only a member asks for a group's grant
    │   │   ├── UnknownGroup                unknown_group: no SCIM group of that name
    │   │   ├── GrantScopeExceeded (403)    grant_scope_exceeded: the size or steps are over the grant's max_size / max_steps
    │   │   ├── AlreadyDecided (409)        already_decided: this approver has decided on the request
    │   │   ├── RequestDecided (409)        request_decided: the request is approved or rejected already
    │   │   ├── RequestExpired (409)        request_expired: the request was not decided in approvals.request_ttl_days
    │   │   ├── GrantNotActive (409)        grant_not_active: the grant is revoked, expired or exhausted already
    │   │   ├── QuotaOverMaximum            quota_over_maximum: over approvals.max_images_per_day / max_images_total
    │   │   ├── ValidityOverMaximum         validity_over_maximum: over approvals.max_validity_days
    │   │   ├── UnknownModel                unknown_model: neither the served model's id nor its manifest digest
    │   │   ├── CommentRequired             comment_required: a rejection or revocation without its reason
    │   │   ├── OwnGrantRecertification (403) own_grant_recertification: nobody re-certifies their own grant
    │   │   ├── CampaignClosed (409)        campaign_closed: the re-certification campaign is closed; no more decisions
    │   │   ├── CampaignExists (409)        campaign_exists: a campaign for that quarter is open or was run already
    │   │   └── ApprovalNotFound (404)      approval_not_found: no such request or grant
    │   ├── GrantQuotaExceeded (429)        grant_quota_exceeded: the grant's images for today (UTC) are used up
    │   ├── ModelChangeRefused (403)        model_change_refused (zguard.services.model_changes): CLI and console alike
    │   │   ├── ModelChangeSelfApproval     model_change_self_approval: the requester cannot approve
    │   │   └── ModelChangeAlreadyApproved (409) model_change_already_approved
    │   ├── AdminError                      admin_refused (zguard.services.admin)
    │   │   ├── RolesRefused                roles_refused
    │   │   ├── AlreadyInitialized          already_initialized
    │   │   ├── NameReserved                name_reserved
    │   │   ├── DeclaredInSettings          declared_in_settings: a settings-file user, changed there
    │   │   ├── PrincipalDisabled           principal_disabled
    │   │   ├── NotAUser                    not_a_user
    │   │   └── InvalidInput                invalid_input
    │   └── StoreError                      store_error (zguard.store.errors)
    │       ├── SchemaNotCurrent            schema_not_current: run `zguard db upgrade`
    │       ├── PrincipalExists             principal_exists
    │       ├── PrincipalNotFound           principal_not_found
    │       ├── TokenExists                 token_exists
    │       └── TokenNotFound               token_not_found
    └── OperatorError                       exit_code (the table below)
        ├── ConfigError                     invalid_config: names every offending key and its fix
        ├── KeyFileError                    key_file_unusable (zguard.security.keys)
        ├── TlsError                        tls_file_unusable (zguard.security.tls)
        ├── ManifestError                   model_manifest_mismatch (zguard.integrity.manifest)
        ├── ModelLoadError                  model_load_failed (zguard.engine.verified_load)
        ├── ModelChangeUnapproved           model_change_unapproved: the manifest has no second admin's approval
        ├── PolicyLoadError                 policy_lists_unusable (zguard.services.prompt_policy)
        ├── SealError                       sealed_prompt_unreadable (zguard.audit.prompts)
        ├── PurgeRefused                    audit_purge_refused (zguard.audit.retention)
        ├── SyslogUnavailable               syslog_unavailable (zguard.audit.syslog_transport)
        ├── AuditCommandRefused             audit_command_refused (zguard.cli.audit)
        ├── AuditNotRecorded                audit_not_recorded (zguard.cli.audit): exit 3, the action was not done
        ├── FontNotFound                    label_font_not_found (zguard.provenance.visible)
        ├── InstallError                    install_step_failed (zguard.ops.install)
        ├── StateDirInUse                   state_dir_in_use (zguard.serve.pidfile): another server holds the lock
        └── VulnDbError                     vuln_db_unusable (zguard.ops.osv)

A test imports every module and checks that this drawing lists every subclass of ZguardError.

The public `message` of an HTTP error is written for the client and never contains `str()` of
another exception; `detail` holds what the operator needs and stays server-side.

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
  141  EXIT_PIPE_CLOSED  the reader closed the pipe (`zguard audit tail | head`), as for SIGPIPE
"""

from __future__ import annotations

from collections.abc import Mapping

EXIT_OK = 0
EXIT_NO = 1
EXIT_FIX = 2
EXIT_UNAVAILABLE = 3
EXIT_PIPE_CLOSED = 128 + 13  # what a shell reports for a program killed by SIGPIPE


class ZguardError(Exception):
    """Base of every error zguard raises on purpose. The HTTP branch's classes derive from it
    directly (status, type, param, headers); the operator branch from `OperatorError`."""

    code = "internal_error"
    status = 500
    type = "server_error"
    fix: str | None = None  # how to mend it; an instance may say more than its class

    def __init__(
        self, message: str, *, param: str | None = None, detail: str | None = None, fix: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.detail = detail
        if fix is not None:
            self.fix = fix
        self.headers: dict[str, str] = {}  # extra response headers (e.g. RateLimit-*)


class OperatorError(ZguardError):
    """A refusal for the operator: at the command line, or when `serve` starts. The message names
    the file, key or setting; `fix` the command that mends it; the CLI exits with `exit_code`.
    Never shown to an HTTP client (zguard.app.errors answers `internal_error` instead)."""

    code = "operator_error"
    exit_code = EXIT_FIX


class ConfigError(OperatorError):
    """Settings that cannot be used; `problems` holds one line per offending key, each with its fix."""

    code = "invalid_config"
    fix = "change the named keys in the settings file or their ZGUARD_* variables, then `zguard config check`"

    def __init__(self, problems: list[str], *, fix: str | None = None) -> None:
        """`fix`: when every line carries its own fix (the host checks), what to say instead of the class's."""
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems), fix=fix)
        self.problems = problems


class ModelChangeUnapproved(OperatorError):
    """`model.change_approval_required` is on and the manifest about to be served has no
    `model.change_approved` event by an admin other than its requester (zguard.audit.model_changes)."""

    code = "model_change_unapproved"
    fix = "`zguard model approve DIR --as OTHER_ADMIN` (an admin other than the one who pinned it)"


class RequestError(ZguardError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    fix = "the client changes the request: the message names the field and what is allowed (docs/openapi.json)"


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


class DuplicateHeader(RequestError):
    """A header that must appear once came twice (Authorization, Host, Content-Length, ...): a
    proxy reading the first and zguard the last would disagree about who is calling."""

    code = "duplicate_header"
    fix = "send the header once; a proxy that adds a second copy must replace it instead"


class InvalidHost(RequestError):
    """The `Host` header names none of the listener's `server_names`."""

    code = "invalid_host"
    fix = "call the listener by a name in api.server_names (console.server_names), or add the name there"


class MalformedRequest(RequestError):
    """The HTTP parser refused the bytes (request line, header syntax, chunked framing); answered
    by the listener itself (zguard.serve.transport), which then closes the connection."""

    code = "malformed_request"
    fix = "the client sends well-formed HTTP/1.1; a proxy in between may be rewriting the request"


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
    fix = "rephrase the prompt; if it is legitimate, an admin adds the phrase to policy.allow_phrases (check with zguard policy test)"

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
    fix = "send the body as application/json (or the image type the route names)"


class RequestTooLarge(ZguardError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    fix = "send a smaller body, or raise api.max_body_bytes (console.max_body_bytes)"


class RequestHeaderFieldsTooLarge(ZguardError):
    """The request line and headers exceeded the listener's byte or count limit (zguard.serve.transport)."""

    status = 431
    type = "invalid_request_error"
    code = "request_header_fields_too_large"
    fix = "send fewer or smaller headers (cookies, tokens), or raise api.transport.max_header_bytes / max_headers (console.transport.*)"


class RequestTimeout(ZguardError):
    """The headers or the body did not arrive within the listener's deadlines (zguard.serve.transport)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    fix = "send the request promptly; on slow links raise api.transport.header_timeout_s / body_timeout_s / body_idle_timeout_s"


class IpNotAllowed(ZguardError):
    """The client address is outside the listener's allowlist; refused before any other work."""

    status = 403
    type = "permission_error"
    code = "ip_not_allowed"
    fix = "add the client's network to the listener's allow list (api.allow / console.allow); behind a proxy, list the proxy in trusted_proxies"

    def __init__(self, message: str, *, listener: str, address: str, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.listener = listener
        self.address = address


class AuthenticationError(ZguardError):
    status = 401
    type = "authentication_error"
    code = "authentication_failed"
    challenge = 'Bearer realm="zguard", Basic realm="zguard", charset="UTF-8"'
    fix = "send 'Authorization: Bearer <zguard API key>' (zguard token create --user NAME), or HTTP Basic"


class MissingCredentials(AuthenticationError):
    code = "missing_credentials"


class InvalidApiKey(AuthenticationError):
    code = "invalid_api_key"
    fix = "check the key is copied whole (zg_...), not revoked, expired or disabled (zguard token list); issue a new one with zguard token create --user NAME"


class SessionExpired(AuthenticationError):
    code = "session_expired"
    fix = "sign in to the console again (/login); sessions end after console.session_idle_s idle or console.session_max_s in all"


class SecondFactorRequired(AuthenticationError):
    code = "second_factor_required"
    fix = "enter the 6-digit code of your authenticator app with the password; a code works once"


class SecondFactorNotEnrolled(ZguardError):
    status = 403
    type = "permission_error"
    code = "second_factor_not_enrolled"
    fix = "an operator enrols the user's authenticator: zguard user totp NAME (console.totp_required_roles lists the roles that need one)"


class CsrfFailed(ZguardError):
    status = 403
    type = "permission_error"
    code = "csrf_failed"
    fix = "reload the console page and submit again from it: changes need the page's token and the console's own origin"


class SignInFailed(AuthenticationError):
    """A sign-in through the IdP (zguard.services.oidc) that did not complete: a login transaction
    missing, expired or used, the IdP's error, a token endpoint refusal, an id_token refused."""

    code = "sign_in_failed"
    fix = "start the sign-in again from the console's login page; the audit event's `reason` names the check"

    def __init__(
        self, message: str, *, reason: str, detail: str | None = None, context: Mapping[str, str] | None = None
    ) -> None:
        """`reason` is stable (the audit event's); `context` goes into the event's detail too."""
        super().__init__(message, detail=detail)
        self.reason = reason
        self.context: Mapping[str, str] = context or {}


class SignInRefused(ZguardError):
    """The IdP vouched for the person, and zguard's own rules refuse them: mapped roles that combine
    separated duties, a disabled or unprovisioned principal, a missing `acr`/`amr` (zguard.services.oidc)."""

    status = 403
    type = "permission_error"
    code = "sign_in_refused"
    fix = "the audit event's `reason` names the rule: fix the person's groups at the IdP, enable or provision the principal, or sign in with the factor the role requires"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        principal: str | None = None,
        detail: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        """`reason` is stable (the audit event's); `principal` the name the IdP gave; `context`
        goes into the event's detail too (the groups of a separation-of-duties conflict)."""
        super().__init__(message, detail=detail)
        self.reason = reason
        self.principal = principal
        self.context: Mapping[str, str] = context or {}


class PermissionDenied(ZguardError):
    status = 403
    type = "permission_error"
    code = "permission_denied"
    fix = "give the principal a role that grants the permission: zguard user roles NAME --role ROLE (zguard role list)"

    def __init__(self, message: str, *, permission: str, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.permission = permission


class TooManyRequests(ZguardError):
    status = 429
    type = "rate_limit_error"
    code = "too_many_requests"
    fix = "retry after Retry-After seconds"

    def __init__(self, message: str, *, retry_after: int, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = max(1, int(retry_after))


class TooManyFailedLogins(TooManyRequests):
    code = "too_many_failed_logins"
    fix = "fix the password in the client and wait out the lockout, which holds only at the address that failed; limits: api_auth.failed_logins_per_user_address, api_auth.failed_logins_per_address, api_auth.failed_logins_per_user"


class RateLimitExceeded(TooManyRequests):
    """Over one of the principal's rates; `headers` carries RateLimit-Limit/-Remaining/-Reset."""

    code = "rate_limit_exceeded"
    fix = "retry after Retry-After seconds, or raise rate_limit / rate_limits.per_principal / rate_limits.per_role"


class TooManyConcurrentRequests(TooManyRequests):
    """The principal already has its maximum of generations in flight."""

    code = "too_many_concurrent_requests"
    fix = "wait for a generation to finish, or raise rate_limits.max_concurrent_per_principal"


class RouteNotFound(ZguardError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    fix = "check the path against docs/openapi.json"


class MethodNotAllowed(ZguardError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    fix = "check the method against docs/openapi.json"


class ServiceUnavailable(ZguardError):
    status = 503
    type = "server_error"
    code = "service_unavailable"
    fix = "retry after Retry-After seconds"

    def __init__(self, message: str, *, retry_after: int, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = max(1, int(retry_after))


class ServerBusy(ServiceUnavailable):
    code = "server_busy"
    fix = "the admission queue (or the trace pool) was full: retry later, or raise generation.max_queue (provenance.trace_workers)"


class NotReady(ServiceUnavailable):
    code = "model_not_ready"
    fix = "the model was loading: wait until /readyz answers 200"


class RateLimiterUnavailable(ServiceUnavailable):
    """The rate limiter's storage could not be asked; requests are refused rather than let through."""

    code = "rate_limiter_unavailable"
    fix = "the rate-limit storage (rate_limits.storage, Redis) failed: check it is up"


class TooManyConnections(ServiceUnavailable):
    """A new connection over the listener's or the client address's cap; it is closed after this answer."""

    code = "too_many_connections"
    fix = "close idle connections (smaller client pools), or raise api.transport.max_connections / max_connections_per_client"


class IdentityProviderUnavailable(ServiceUnavailable):
    """The bank's identity provider could not be asked (its JWKS or discovery document) and no key
    for the credential is cached; refused rather than let through (zguard.services.jwt_bearer)."""

    code = "identity_provider_unavailable"
    fix = "check the IdP is up and reachable from this host (identity.jwt.issuer, identity.jwt.jwks_url, identity.jwt.ca_file); the server log has the error"


AUDIT_RETRY_AFTER_S = 5


class AuditUnavailable(ServiceUnavailable):
    """The audit store could not record the request, so it was refused: nothing runs unrecorded."""

    code = "audit_unavailable"
    fix = "check the state database (zguard audit status, zguard doctor); the server log has the error"

    def __init__(self, message: str, *, retry_after: int = AUDIT_RETRY_AFTER_S, detail: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after, detail=detail)


class GenerationTimeout(ZguardError):
    status = 504
    type = "server_error"
    code = "generation_timeout"
    fix = "fewer steps or a smaller size, or raise generation.timeout_s"


class TraceTimeout(ZguardError):
    """A trace did not finish within `provenance.trace_timeout_s`; its work stops at the decoder's next step."""

    status = 504
    type = "server_error"
    code = "trace_timeout"
    fix = "trace a smaller image (fewer pixels), or raise provenance.trace_timeout_s"


class InternalError(ZguardError):
    code = "internal_error"
    fix = "the server log has the error under the request id"


class ScimError(ZguardError):
    """A SCIM request refused (zguard.services.scim), answered in the SCIM error shape of
    RFC 7644 3.12 (`urn:ietf:params:scim:api:messages:2.0:Error`) with `scim_type` when RFC 7644
    names one: invalidFilter, invalidValue, invalidSyntax, invalidPath, noTarget, mutability, uniqueness."""

    status = 400
    type = "invalid_request_error"
    code = "scim_invalid_request"
    fix = "the IdP's provisioning log shows the request; the message names the attribute or filter zguard refused (docs/identity.md lists what it understands)"

    def __init__(self, message: str, *, scim_type: str | None = None, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.scim_type = scim_type


class ScimUnauthorized(ScimError):
    status = 401
    type = "authentication_error"
    code = "scim_unauthorized"
    fix = "paste the secret whose SHA-256 is in identity.scim.token_sha256 into the IdP's provisioning settings (Secret Token / API Token)"


class ScimNotFound(ScimError):
    status = 404
    code = "scim_not_found"
    fix = "the IdP refers to a user or group zguard does not hold (deleted here, or provisioned to another server); let the IdP create it again"


class ScimConflict(ScimError):
    status = 409
    code = "scim_conflict"
    fix = "another user or group holds that name (a local zguard user included: SCIM never takes one over); rename one of them"


class ScimRoleConflict(ScimError):
    """Group memberships whose mapped roles one user may not hold together; nothing was changed."""

    status = 409
    code = "scim_role_conflict"
    fix = "take the user out of one of the named groups at the IdP, or change identity.scim.group_role_map"

    def __init__(self, message: str, *, groups: tuple[str, ...], detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.groups = groups


class ApprovalError(ZguardError):
    """A model-use approval step refused (zguard.services.approvals); the message says why."""

    status = 400
    type = "invalid_request_error"
    code = "approval_refused"
    fix = "change what the message names; `zguard approvals list` shows requests and grants"


class ApprovalRequired(ApprovalError):
    """`approvals.required` is on and the caller holds no active grant for the served model."""

    status = 403
    type = "permission_error"
    code = "approval_required"
    fix = "ask for one: `zguard approvals request --model MODEL --purpose ...` or POST /console/api/approvals; an approver decides"


class GrantExhausted(ApprovalRequired):
    code = "grant_exhausted"
    fix = "the grant's total quota is used up: request a new approval (`zguard approvals request`)"


class SelfApproval(ApprovalError):
    status = 403
    type = "permission_error"
    code = "self_approval"
    fix = "another approver decides; nobody approves or rejects their own request"


class GroupMemberApproval(ApprovalError):
    status = 403
    type = "permission_error"
    code = "group_member_approval"
    fix = "an approver outside the requesting group decides; nobody approves a grant they would use"


class NotGroupMember(ApprovalError):
    status = 403
    type = "permission_error"
    code = "not_group_member"
    fix = "a member of the group asks for it (its SCIM membership, from the IdP); or ask for yourself without --group"


class UnknownGroup(ApprovalError):
    code = "unknown_group"
    fix = "name a SCIM group by its displayName as the IdP provisioned it (GET /scim/v2/Groups lists them)"


class GrantScopeExceeded(ApprovalError):
    """The generation asks for more than the grant's scope (max_size, max_steps); nothing charged."""

    status = 403
    type = "permission_error"
    code = "grant_scope_exceeded"
    fix = "ask within the grant's max_size / max_steps (`zguard approvals list` shows them), or request a wider grant"


class AlreadyDecided(ApprovalError):
    status = 409
    code = "already_decided"
    fix = "each approver decides once; a second approver completes the quorum"


class RequestDecided(ApprovalError):
    status = 409
    code = "request_decided"
    fix = "the request is approved or rejected already; `zguard approvals list` shows its grant or ask again"


class RequestExpired(ApprovalError):
    status = 409
    code = "request_expired"
    fix = "the request was not decided within approvals.request_ttl_days; the requester asks again"


class OwnGrantRecertification(ApprovalError):
    status = 403
    type = "permission_error"
    code = "own_grant_recertification"
    fix = "another approver (approvals:decide) confirms or revokes the grant; nobody re-certifies their own"


class CampaignClosed(ApprovalError):
    status = 409
    code = "campaign_closed"
    fix = "the campaign is closed (by --close or its deadline); its export shows the decisions; open the next quarter's"


class CampaignExists(ApprovalError):
    status = 409
    code = "campaign_exists"
    fix = "one campaign per quarter: `zguard approvals campaign ID` shows it; name another --quarter"


class GrantNotActive(ApprovalError):
    status = 409
    code = "grant_not_active"
    fix = "the grant is revoked, expired or exhausted already; nothing to revoke"


class QuotaOverMaximum(ApprovalError):
    code = "quota_over_maximum"
    fix = "ask for at most approvals.max_images_per_day a day and approvals.max_images_total in all"


class ValidityOverMaximum(ApprovalError):
    code = "validity_over_maximum"
    fix = "ask for at most approvals.max_validity_days days"


class UnknownModel(ApprovalError):
    code = "unknown_model"
    fix = "name the served model by its id or manifest digest (GET /v1/models shows both)"


class CommentRequired(ApprovalError):
    code = "comment_required"
    fix = "give the reason: --comment for a rejection, --reason for a revocation"


class ApprovalNotFound(ApprovalError):
    status = 404
    code = "approval_not_found"
    fix = "`zguard approvals list` shows the request and grant ids"


class GrantQuotaExceeded(ZguardError):
    """The grant's per-day quota is spent; `retry_after` is the seconds to the next UTC day."""

    status = 429
    type = "rate_limit_error"
    code = "grant_quota_exceeded"
    fix = "wait for the next UTC day (Retry-After), ask for fewer images, or request a larger quota"

    def __init__(self, message: str, *, retry_after: int, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = max(1, int(retry_after))
        self.headers["Retry-After"] = str(self.retry_after)


def error_classes() -> list[type[ZguardError]]:
    """Every subclass of ZguardError defined in the modules imported so far, depth first."""
    found: list[type[ZguardError]] = []
    stack = list(reversed(ZguardError.__subclasses__()))
    while stack:
        cls = stack.pop()
        found.append(cls)
        stack.extend(reversed(cls.__subclasses__()))
    return found


def fix_for(code: str) -> str | None:
    """The operator's fix for an error `code`, from the class that carries it."""
    return next((cls.fix for cls in error_classes() if cls.code == code and cls.fix), None)
