"""The systemd units zguard installs, rendered from the templates in `zguard/ops/units/`.

A template names each install path as `@FIELD@` (`@USER@`, `@ZGUARD@`, `@STATE_DIRECTIVES@`...);
`render_unit` replaces every one and refuses a template that keeps a field it was not given, so
a unit is never written with a placeholder systemd would read literally.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources

SERVICE = "zguard.service"
SCAN_SERVICE = "zguard-scan.service"
SCAN_TIMER = "zguard-scan.timer"
UNIT_NAMES = (SERVICE, SCAN_SERVICE, SCAN_TIMER)
ENABLED_UNITS = (SERVICE, SCAN_TIMER)  # the scan service is started by its timer
_FIELD = re.compile(r"@([A-Z_]+)@")


def unit_template(name: str) -> str:
    """The shipped template of unit `name` (one of UNIT_NAMES)."""
    if name not in UNIT_NAMES:
        raise ValueError(f"no unit template {name!r}; known: {', '.join(UNIT_NAMES)}")
    return resources.files("zguard.ops").joinpath("units", name).read_text(encoding="utf-8")


def render_unit(name: str, fields: Mapping[str, str]) -> str:
    """Unit `name` with every `@FIELD@` replaced by `fields[FIELD]`; KeyError names a missing one."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in fields:
            raise KeyError(f"{name}: no value for @{key}@")
        return fields[key]

    return _FIELD.sub(value, unit_template(name))
