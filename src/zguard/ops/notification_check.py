"""`zguard doctor`'s notification check: the secret files `serve` will read for `notifications`.

The host checks (`secret_file_private`) already FAIL a webhook key or relay password that other
accounts can read; they skip a file that does not exist. This check reads both the way `serve`
does (zguard.audit.notifications.setup), so a missing, group-readable or short key is found
before a restart refuses to start. No network: the receiver and the relay are not called.
"""

from __future__ import annotations

from zguard.audit.notifications.setup import read_password, read_webhook_key
from zguard.config import Settings
from zguard.ops.findings import CheckResult
from zguard.security.keys import KeyFileError

CHECK = "notifications"


def notification_findings(settings: Settings) -> list[CheckResult]:
    """One finding per configured channel; none when notifications are off."""
    webhook, email = settings.notifications.webhook, settings.notifications.email
    findings: list[CheckResult] = []
    if webhook.url is not None and webhook.secret_file is not None:
        try:
            read_webhook_key(webhook.secret_file)
        except KeyFileError as exc:
            findings.append(CheckResult(CHECK, "fail", f"notifications.webhook.secret_file: {exc.message}", exc.fix))
        else:
            findings.append(
                CheckResult(CHECK, "pass", f"webhook notifications signed with the key in {webhook.secret_file}")
            )
    if email.host is not None:
        try:
            if email.password_file is not None:
                read_password(email.password_file)
        except KeyFileError as exc:
            findings.append(CheckResult(CHECK, "fail", f"notifications.email.password_file: {exc.message}", exc.fix))
        else:
            findings.append(
                CheckResult(
                    CHECK,
                    "pass",
                    f"e-mail notifications to {len(email.to)} recipient(s) through "
                    f"{email.host}:{email.port} ({email.security})",
                )
            )
    return findings
