"""Where the model stands, for `/readyz`, the console and request admission."""

from __future__ import annotations

import time
from enum import StrEnum


class ModelState(StrEnum):
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


class Readiness:
    """Shared by both listeners; changed only by the server's start-up and shutdown code."""

    def __init__(self) -> None:
        self.state = ModelState.LOADING
        self.since = time.time()
        self.ready_at: float | None = None

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    def set(self, state: ModelState) -> None:
        self.state = state
        self.since = time.time()
        if state is ModelState.READY:
            self.ready_at = self.since
