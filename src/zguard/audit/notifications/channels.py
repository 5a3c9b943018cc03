"""The two ways out: a signed HTTPS POST, and an e-mail through an SMTP relay.

Each channel sends one notice per call from the notifier's thread and raises `Undelivered` when
it could not, saying whether trying again can help (`retry`). Neither follows redirects, reads
more than `MAX_RESPONSE_BYTES` of an answer, or writes a secret into a message or a log line.
"""

from __future__ import annotations

import http.client
import smtplib
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

from zguard.audit.notifications.message import (
    EVENT_ID_HEADER,
    Notice,
    email_subject,
    email_text,
    signed_headers,
    webhook_body,
)
from zguard.config.notifications import EmailSettings

MAX_RESPONSE_BYTES: Final = 64 * 1024  # read (and dropped) of a receiver's answer, so the connection closes cleanly
USER_AGENT: Final = "zguard-notifications/1"
RETRY_STATUSES: Final = frozenset({408, 425, 429})  # and every 5xx


class Undelivered(Exception):
    """A notice that did not get through; `message` is in zguard's words, with no secret in it."""

    def __init__(self, message: str, *, retry: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry
        self.retry_after_s = retry_after_s


class Channel(Protocol):
    """Where a notifier sends; `send` is called from one thread at a time."""

    @property
    def name(self) -> str:
        """`webhook` or `email`: in the cursor's name, the log and `notification.failed`."""

    @property
    def target(self) -> str:
        """Where it sends, for status and log lines (no credentials)."""

    def send(self, notice: Notice) -> None:
        """Deliver `notice` or raise Undelivered."""


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificates and host names checked, against `ca_file` or the system's CAs."""
    return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)


def _retry_after(value: str | None, ceiling: float) -> float | None:
    if value is None or not value.strip().isdigit():
        return None  # an HTTP date is rare from a webhook receiver: the backoff applies
    return min(float(value.strip()), ceiling)


class WebhookChannel:
    """POST the signed JSON body to `url` (see zguard.audit.notifications.message)."""

    name = "webhook"

    def __init__(
        self,
        url: str,
        key: bytes,
        *,
        timeout_s: float,
        max_backoff_s: float,
        context: ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)  # explicit: http.client reads `::1` as host `:` port 1
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._key = key
        self._timeout_s = timeout_s
        self._max_backoff_s = max_backoff_s
        self._context = context if context is not None or not self._https else tls_context(None)
        self._clock = clock
        self.target = f"{parts.scheme}://{parts.netloc}{parts.path or '/'}"  # the query may hold a receiver's token

    def send(self, notice: Notice) -> None:
        body = webhook_body(notice)
        headers = signed_headers(self._key, int(self._clock()), notice, body)
        headers["User-Agent"] = USER_AGENT
        connection: http.client.HTTPConnection = (
            http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout_s, context=self._context)
            if self._https
            else http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        )
        try:
            connection.request("POST", self._path, body=body, headers=headers)
            response = connection.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            status, retry_after = response.status, response.getheader("Retry-After")
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, TLS, a garbled answer
            raise Undelivered(f"POST {self.target}: {type(exc).__name__}", retry=True) from None
        finally:
            connection.close()
        if 200 <= status < 300:
            return
        raise Undelivered(
            f"POST {self.target}: HTTP {status}",
            retry=status >= 500 or status in RETRY_STATUSES,
            retry_after_s=_retry_after(retry_after, self._max_backoff_s),
        )


class EmailChannel:
    """One plain-text message per notice, to `email.to`, through `email.host`."""

    name = "email"

    def __init__(self, settings: EmailSettings, password: str | None, context: ssl.SSLContext | None = None) -> None:
        if settings.host is None or settings.from_address is None:
            raise ValueError("notifications.email needs host and from_address")
        self._settings = settings
        self._host = settings.host
        self._sender = settings.from_address
        self._password = password
        self._context = context if context is not None else tls_context(settings.ca_file)
        self.target = f"smtp://{settings.host}:{settings.port} ({settings.security})"

    def message(self, notice: Notice) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = email_subject(notice)
        message["From"] = self._sender
        message["To"] = ", ".join(self._settings.to)
        message["Date"] = formatdate(usegmt=True)
        # The same event always has the same Message-ID, so a repeat after a restart is recognisable.
        message["Message-ID"] = f"<{notice.event_id}@{self._sender.rpartition('@')[2]}>"
        message[EVENT_ID_HEADER] = notice.event_id
        message.set_content(email_text(notice))
        return message

    def send(self, notice: Notice) -> None:
        settings = self._settings
        message = self.message(notice)
        try:
            smtp = (
                smtplib.SMTP_SSL(self._host, settings.port, timeout=settings.timeout_s, context=self._context)
                if settings.security == "tls"
                else smtplib.SMTP(self._host, settings.port, timeout=settings.timeout_s)
            )
            with smtp:
                smtp.ehlo()
                if settings.security == "starttls":
                    if not smtp.has_extn("starttls"):  # never fall back to clear text
                        raise Undelivered(f"{self.target}: the relay does not offer STARTTLS", retry=False)
                    smtp.starttls(context=self._context)
                    smtp.ehlo()
                if settings.username is not None and self._password is not None:
                    smtp.login(settings.username, self._password)
                smtp.send_message(message)
        except smtplib.SMTPResponseException as exc:  # the relay's answer: 4xx is temporary, 5xx final
            raise Undelivered(f"{self.target}: SMTP {exc.smtp_code}", retry=400 <= exc.smtp_code < 500) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = sorted({code for code, _ in exc.recipients.values()})
            temporary = all(400 <= code < 500 for code in codes)
            raise Undelivered(f"{self.target}: every recipient refused (SMTP {codes})", retry=temporary) from None
        except (OSError, smtplib.SMTPException) as exc:  # refused, reset, timed out, TLS, a garbled answer
            raise Undelivered(f"{self.target}: {type(exc).__name__}", retry=True) from None
