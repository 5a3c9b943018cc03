"""Generate the published reference documents from the code: `python -m zguard.cli.docs` (`make docs`).

`docs/openapi.json` is the API contract (the live `/openapi.json` is off by default),
`docs/console-openapi.json` the console's JSON API, and `docs/settings.md` the settings
reference; tests fail when any drifts from the code.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zguard import errors
from zguard.app.api import create_api_app
from zguard.app.console import create_console_app
from zguard.audit.memory import MemoryAuditSink
from zguard.audit.prompts import PromptCapture
from zguard.config import Settings
from zguard.config.loader import iter_settings_fields
from zguard.engine import GenerationJob, ModelInfo
from zguard.provenance.marking import ProvenanceMarker
from zguard.security.keys import KEY_BYTES
from zguard.serve.wiring import build_auth, build_runtime

if TYPE_CHECKING:
    from PIL.Image import Image

DOCS_DIR = Path("docs")


class _NoEngine:
    """Stands in for the engine when only the app's shape is needed."""

    info = ModelInfo(id="z-image-turbo", demo=False, device="none", dtype="none")

    def load(self) -> None:
        raise NotImplementedError

    def generate(self, job: GenerationJob, should_stop: Callable[[], bool]) -> list[Image]:
        raise NotImplementedError


def openapi_document(listener: str = "api", settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI document of the API listener, or of the console's JSON API (`listener="console"`:
    its pages are HTML for people and left out), under `settings` (the defaults: what is published)."""
    settings = settings or Settings()
    audit, unused_key = MemoryAuditSink(), bytes(KEY_BYTES)  # the document needs the app's shape, no keys
    runtime = build_runtime(
        settings,
        _NoEngine(),
        auth=build_auth(settings, None, unused_key, audit),
        audit=audit,
        prompts=PromptCapture("none"),
        provenance=ProvenanceMarker.ephemeral(settings.provenance),
    )
    try:
        factory = create_api_app if listener == "api" else create_console_app
        document: dict[str, Any] = factory(settings, runtime.services).openapi()
    finally:
        runtime.worker.stop(timeout=1)
    return document


def render_openapi(listener: str = "api") -> str:
    return json.dumps(openapi_document(listener), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _cell(value: Any) -> str:
    text = "(none)" if value is None else json.dumps(value, ensure_ascii=False, default=str)
    return f"`{text}`"


def render_settings_reference() -> str:
    lines = [
        "# Settings reference",
        "",
        "Generated from `zguard.config.Settings` by `make docs`; a test keeps it in sync.",
        "",
        "Settings come from the YAML file given by `--config` (or `ZGUARD_CONFIG`, else",
        "`config/zguard.yaml` when present), then from environment variables: `ZGUARD_<SECTION>__<KEY>`",
        "for a key in a section (`ZGUARD_API__PORT=15000`) and `ZGUARD_<KEY>` for a top-level key",
        "(`ZGUARD_STATE_DIR=/var/lib/zguard`). Environment values are read as YAML scalars.",
        "`zguard config check` prints the effective settings with secrets masked.",
        "",
        "| key | default | environment variable | meaning |",
        "|---|---|---|---|",
    ]
    for key, default, help_text in iter_settings_fields():
        env = "ZGUARD_" + key.upper().replace(".", "__")
        lines.append(f"| `{key}` | {_cell(default)} | `{env}` | {help_text} |")
    return "\n".join(lines) + "\n"


# The modules that define error classes outside zguard.errors (the drawing in its docstring names them).
ERROR_MODULES = (
    "zguard.services.admin",
    "zguard.services.model_changes",
    "zguard.store.errors",
    "zguard.security.keys",
    "zguard.security.tls",
    "zguard.integrity.manifest",
    "zguard.engine.verified_load",
    "zguard.services.prompt_policy",
    "zguard.audit.prompts",
    "zguard.audit.retention",
    "zguard.audit.syslog_transport",
    "zguard.cli.audit",
    "zguard.provenance.visible",
    "zguard.ops.install",
    "zguard.ops.osv",
    "zguard.serve.pidfile",
)


def render_errors_reference() -> str:
    for name in ERROR_MODULES:
        importlib.import_module(name)
    lines = [
        "# Error codes",
        "",
        "Generated from `zguard.errors` (and the modules it names) by `make docs`; a test keeps it in sync.",
        'HTTP errors reach clients in the OpenAI shape `{"error": {"message", "type", "param", "code"}}`;',
        "`zguard doctor --explain REQUEST_ID` prints the fix for a refused request. Operator errors are",
        "printed by the `zguard` command (message, then `fix:`) and end it with the exit code shown.",
        "",
        "| code | class | HTTP status / exit code | fix |",
        "|---|---|---|---|",
    ]
    for cls in sorted(errors.error_classes(), key=lambda c: (issubclass(c, errors.OperatorError), c.code)):
        where = f"exit {cls.exit_code}" if issubclass(cls, errors.OperatorError) else f"HTTP {cls.status}"
        lines.append(f"| `{cls.code}` | `{cls.__module__}.{cls.__name__}` | {where} | {cls.fix or '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    DOCS_DIR.mkdir(exist_ok=True)
    (DOCS_DIR / "openapi.json").write_text(render_openapi(), encoding="utf-8")
    (DOCS_DIR / "console-openapi.json").write_text(render_openapi("console"), encoding="utf-8")
    (DOCS_DIR / "settings.md").write_text(render_settings_reference(), encoding="utf-8")
    (DOCS_DIR / "errors.md").write_text(render_errors_reference(), encoding="utf-8")
    print("wrote docs/openapi.json, docs/console-openapi.json, docs/settings.md and docs/errors.md")


if __name__ == "__main__":
    main()
