"""The pure ASGI middleware every listener runs, one concern per module.

Outermost first, as a request meets them (`zguard.app.stack` installs them in this order):

    request_context     RequestContext: request id, security headers, last-resort 500 in the error shape
    audit_requests      AuditRequests: one audit event per request, committed before the response starts
    network_acl         NetworkAcl: the listener's allowlist, before any other work (403 ip_not_allowed)
    access_control      AccessControl: authentication, the route's permission, rate limits (401/403/429)
    body_limit          BodyLimit: 413 for bodies over the listener's cap
    rate_limit_headers  RateLimitHeaders: RateLimit-* on the response
"""
