"""One generation request, as every route that generates runs it: the image API's
`POST /v1/images/generations` and the console's Generate page and its JSON twin. One sequence, so
a decision (the policy, the grant and its quota, the in-flight cap, the committed acceptance)
cannot differ between them.

With `approvals.required`, the images are charged against the caller's grant after the plan and
before the in-flight cap (zguard.services.approvals), refunded if the generation does not
complete, and what is left shown in `X-Zguard-Grant-Remaining-Today` / `-Total`: the usage joins
the request's rate-limit state, which `RateLimitHeaders` copies into whatever response follows."""

from __future__ import annotations

from starlette.requests import Request

from zguard.app.auth import request_info
from zguard.app.context import Services
from zguard.app.disconnect import ClientDisconnected, run_unless_disconnected
from zguard.app.middleware.audit_requests import request_record
from zguard.app.middleware.rate_limit_headers import STATE_KEY as RATE_LIMIT_STATE
from zguard.errors import PromptRejected
from zguard.services.approvals import GrantUsage
from zguard.services.auth import Identity
from zguard.services.images import GeneratedImages, ImageRequest


async def run_generation(
    request: Request, services: Services, identity: Identity, req: ImageRequest
) -> GeneratedImages | None:
    """Plan, the in-flight cap, the committed acceptance, the generation; None when the client
    went away (the record says `client_disconnected`). Raises what those raise."""
    images = services.images
    try:
        plan = images.plan(req, roles=identity.roles)
    except PromptRejected as rejected:  # the refusal's audit event names category, detector and term id
        if (refused := request_record(request.scope)) is not None:
            refused.policy = rejected.policy
        raise
    request_id: str = request.state.request_id
    record = request_record(request.scope)
    approvals = services.approvals
    usage = None
    if approvals is not None and approvals.required:
        usage = await approvals.charge(identity.name, plan.job.n, job=plan.job)
        request.scope.setdefault("state", {})[RATE_LIMIT_STATE] = _WithGrant(
            request.scope.get("state", {}).get(RATE_LIMIT_STATE), usage
        )
    try:
        where = request_info(request)
        async with services.rate_limits.concurrency(identity, where):
            # Committed before any GPU work; AuditUnavailable (503) stops the request here.
            await images.record_accepted(plan, where, identity, record)
            result = await run_unless_disconnected(request.receive, images.generate(plan, request_id, record))
    except ClientDisconnected:
        if usage is not None and approvals is not None:
            await approvals.refund(usage)
        if record is not None:
            record.type = "generation.failed"
            record.set_outcome("failed", "client_disconnected")
        return None
    except BaseException:
        if usage is not None and approvals is not None:
            await approvals.refund(usage)
        if record is not None:
            record.type = "generation.failed"
        raise
    if usage is not None and approvals is not None:
        await approvals.record_use(usage)
    if record is not None:
        record.type = "generation.completed"
        record.set_outcome("done")
    return result


class _WithGrant:
    """The request's rate-limit state (if any) and its grant usage, as one set of headers."""

    def __init__(self, rates: object, usage: GrantUsage) -> None:
        self._rates = rates
        self._usage = usage

    def headers(self) -> dict[str, str]:
        rates = self._rates
        base: dict[str, str] = rates.headers() if hasattr(rates, "headers") else {}
        return {**base, **self._usage.headers()}
