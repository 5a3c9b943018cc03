"""How many open files `zguard serve` needs for its connection caps, and the check at start.

Each connection is a descriptor. Caps are enforced after accept() (zguard.serve.transport), and
one accept wake-up takes up to `ACCEPT_BATCH` connections before any is refused, so a listener
may briefly hold its cap plus a batch. The rest of the process (model files, state
database, logs, syslog, CUDA) gets `RESERVE`. When the soft RLIMIT_NOFILE is lower, `serve`
raises it up to the hard limit; if that is still too low it refuses to start, naming the fix.
Under the limit, accept() fails with EMFILE, which asyncio logs with a traceback per attempt
and every other client of the process times out: refusing at start is the safer failure.
"""

from __future__ import annotations

import logging
import resource

from zguard.config import Settings
from zguard.errors import ConfigError
from zguard.serve.listeners import ACCEPT_BATCH

log = logging.getLogger("zguard.serve.lifecycle")
RESERVE = 512


def open_files_needed(settings: Settings) -> int:
    """Descriptors `serve` may need at once under `settings`' connection caps."""
    listeners = (settings.api, settings.console)
    return sum(listener.transport.max_connections + ACCEPT_BATCH for listener in listeners) + RESERVE


def ensure_open_files(settings: Settings) -> int:
    """Raise the soft open-file limit to what the caps need (within the hard limit); return the
    limit in force. ConfigError naming the settings and the fix when it cannot be reached."""
    needed = open_files_needed(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):  # the unit's system call filter may forbid it: checked below
            pass
        else:
            log.info("raised the open-file limit from %d to %d for the connection caps", soft, target)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        caps = f"api.transport.max_connections {settings.api.transport.max_connections}"
        caps += f" + console.transport.max_connections {settings.console.transport.max_connections}"
        raise ConfigError(
            [
                f"api.transport.max_connections: {caps} need {needed} open files (with the accept backlog "
                f"and {RESERVE} for the rest of the process), but this process may open only {soft}; "
                f"set LimitNOFILE={needed} in the unit (systemctl edit zguard) or run `ulimit -n {needed}` "
                "before `zguard serve`, or lower the caps"
            ]
        )
    return int(soft)
