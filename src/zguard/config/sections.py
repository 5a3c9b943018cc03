"""What every settings section shares: the base model and the loopback test.

Apart from `zguard.config.settings` so that sections declared in modules of their own
(`zguard.config.identity`) use the same rules without importing the whole model.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A settings section: unknown keys are refused and defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
