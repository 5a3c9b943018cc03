"""`RequestHeaders`: headers that must be unambiguous before anything reads them.

Decisions written here:
- A header that decides who is calling or how the body is framed must come once: a repeated
  `Authorization`, `Proxy-Authorization`, `Host`, `Content-Length`, `Content-Type` or
  `Transfer-Encoding` gets 400 `duplicate_header`. Starlette keeps the last copy, a proxy or WAF
  in front may read the first; refusing both copies leaves nothing to disagree about.
- `Host` is checked against the listener's `server_names` when they are set (400
  `invalid_host`, DNS rebinding protection); a name without a port matches any port. It is never
  reflected in a response either way: slash redirects are off and no route builds absolute URLs.
- It runs after the network allowlist (a stranger outside it learns nothing) and before
  authentication, so no credential is read from an ambiguous request.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from zguard.app.errors import error_response
from zguard.errors import DuplicateHeader, InvalidHost

SINGLETON_HEADERS = frozenset(
    {b"authorization", b"proxy-authorization", b"host", b"content-length", b"content-type", b"transfer-encoding"}
)


class RequestHeaders:
    def __init__(self, app: ASGIApp, *, server_names: Iterable[str] = ()) -> None:
        self.app = app
        names = [name.lower() for name in server_names]
        self._exact = frozenset(names)
        self._any_port = frozenset(name for name in names if not name.endswith("]") and ":" not in name)
        self._any_port |= frozenset(name for name in names if name.startswith("[") and name.endswith("]"))

    def _host_allowed(self, host: bytes | None) -> bool:
        if not self._exact:
            return True
        if host is None:
            return False
        text = host.decode("latin-1").strip().lower()
        if text in self._exact:
            return True
        bare, sep, port = text.rpartition(":")
        return bool(sep) and port.isdigit() and not bare.endswith(":") and bare in self._any_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen: set[bytes] = set()
        host: bytes | None = None
        for name, value in scope["headers"]:
            if name in SINGLETON_HEADERS:
                if name in seen:
                    error = DuplicateHeader(
                        f"the header {name.decode('latin-1').title()} was sent more than once; send it once",
                        param=name.decode("latin-1"),
                    )
                    await error_response(error)(scope, receive, send)
                    return
                seen.add(name)
                if name == b"host":
                    host = value
        if not self._host_allowed(host):
            await error_response(InvalidHost("this listener is not served under that Host name"))(scope, receive, send)
            return
        await self.app(scope, receive, send)
