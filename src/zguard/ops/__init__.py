"""Operating zguard on a host.

- `zguard scan` (scan.py, osv.py, review.py): the monthly offline security scan.
- `zguard install` (install.py): accounts, directories and the systemd units, rendered from the
  templates in `units/` (package data) by units.py: `zguard.service` runs `zguard serve`,
  `zguard-scan.service` with its monthly `zguard-scan.timer` runs `zguard scan`. The audit
  retention job needs no timer: `zguard serve` runs it in-process every day.
"""
