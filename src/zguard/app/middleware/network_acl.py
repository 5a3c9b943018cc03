"""The network allowlist as pure ASGI middleware: the first check a request meets.

Each app mounts it right inside `RequestContext` (so a refusal still carries the request id and
the security headers) and outside everything else, so a refused address costs no body reading,
no authentication and no route. `/healthz` and `/readyz` are behind it too: a load balancer's
address must be listed like any other client's.

An allowed request leaves its client address (as text) in ``scope["state"]["client_address"]``
for the layers after it; a refused one is logged with the listener and the addresses involved.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from zguard.app.errors import error_response
from zguard.app.middleware.audit_requests import request_record
from zguard.audit import AuditEvent, AuditSink, report
from zguard.errors import IpNotAllowed
from zguard.security.netacl import Client, NetworkAllowlist, client_address

log = logging.getLogger("zguard.http")
FORWARDED_FOR = b"x-forwarded-for"
WEBSOCKET_POLICY_VIOLATION = 1008


def refusal(listener: str, client: Client) -> IpNotAllowed:
    """The 403 for `client` on `listener`, telling the operator which setting admits it."""
    if client.address is None and client.forwarded:
        message = (
            f"address {client.shown} is not allowed on the {listener} listener; "
            "the proxies in trusted_proxies must append the client's IP address to X-Forwarded-For"
        )
    elif client.address is None:
        message = f"address {client.shown} is not allowed on the {listener} listener; only IP clients listed in {listener}.allow are"
    else:
        source = " (from X-Forwarded-For)" if client.forwarded else ""
        message = (
            f"address {client.shown}{source} is not allowed on the {listener} listener; add it to {listener}.allow"
        )
    return IpNotAllowed(message, listener=listener, address=client.shown)


class NetworkAcl:
    """Answer 403 `ip_not_allowed` to any client outside `allow`; pass everyone else on."""

    def __init__(
        self,
        app: ASGIApp,
        listener: str,
        allow: NetworkAllowlist,
        trusted_proxies: NetworkAllowlist,
        audit: AuditSink | None = None,
    ) -> None:
        self.app = app
        self.audit = audit
        self.listener = listener
        self.allow = allow
        self.trusted_proxies = trusted_proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan carries no client
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        forwarded = [value.decode("latin-1") for name, value in scope["headers"] if name == FORWARDED_FOR]
        client = client_address(peer[0] if peer else None, forwarded, self.trusted_proxies)
        state = scope.setdefault("state", {})
        if self.allow.allows(client.address):
            state["client_address"] = str(client.address)
            await self.app(scope, receive, send)
            return
        state["client_address"] = client.shown
        error = refusal(self.listener, client)
        log.warning(
            "request %s refused: ip_not_allowed on the %s listener: client %s, TCP peer %s, %d X-Forwarded-For header(s)",
            scope.get("state", {}).get("request_id", "-"),
            self.listener,
            client.shown,
            peer[0] if peer else None,
            len(forwarded),
        )
        if self.audit is not None:
            report(
                self.audit,
                request_record(scope),
                AuditEvent(
                    type="network.denied",
                    outcome="denied",
                    code=error.code,
                    request_id=scope.get("state", {}).get("request_id"),
                    listener=self.listener,
                    client=client.shown,
                    # the allowlist in force, so `doctor --explain` tells the decision as it was made
                    detail={
                        "peer": peer[0] if peer else None,
                        "forwarded_headers": len(forwarded),
                        "allowlist": " ".join(self.allow.entries()),
                        "allowlist_sha256": self.allow.digest(),
                    },
                ),
            )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WEBSOCKET_POLICY_VIOLATION})
            return
        await error_response(error)(scope, receive, send)


def client_of(scope: Scope) -> str:
    """The client address NetworkAcl decided on, else the TCP peer, else "unknown": the one
    fallback every later layer uses, so all of them name the same client."""
    decided = scope.get("state", {}).get("client_address")
    if decided:
        return str(decided)
    peer = scope.get("client")
    return str(peer[0]) if peer else "unknown"
