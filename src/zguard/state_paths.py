"""Every file and directory zguard keeps under `state_dir`, and where a setting moves one elsewhere.

One table, so the server, the CLI, `doctor`, `scan` and the storage checks name the same files:

    state_dir/
      zguard.db                  state database (SQLite; `database.url` replaces it)
      zguard.pid                 the running server's pid (and its single-server lock)
      token.key                  HMAC key of API token digests        (`api_auth.token_key_file`)
      demo-token                 the demo principal's token, demo model only
      audit-signing.pem          Ed25519 key of audit checkpoints      (`audit.signing_key_file`)
      audit-prompt.key           HMAC key of prompt fingerprints
      audit-archive/             signed audit archives                 (`audit.archive_dir`)
      watermark.key              HMAC key of watermark ids             (`provenance.watermark_key_file`)
      provenance-signing.pem     Ed25519 key of AIGC label signatures  (`provenance.signing_key_file`)
      demo-model/                the tiny random-weight demo pipeline, built on first start
      run/                       private runtime directory (`isolation.runtime_dir`, systemd's RUNTIME_DIRECTORY)
      runtime-cleanup.json       what the last sweep of the runtime directory removed

Functions take the settings and return absolute paths; nothing here reads or creates a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zguard.config import Settings

DB_FILE = "zguard.db"
PID_FILE = "zguard.pid"
TOKEN_KEY_FILE = "token.key"  # noqa: S105 - a file name, not a secret
DEMO_TOKEN_FILE = "demo-token"  # noqa: S105 - a file name, not a secret
AUDIT_SIGNING_KEY_FILE = "audit-signing.pem"
AUDIT_PROMPT_KEY_FILE = "audit-prompt.key"
AUDIT_ARCHIVE_DIR = "audit-archive"
WATERMARK_KEY_FILE = "watermark.key"
PROVENANCE_SIGNING_KEY_FILE = "provenance-signing.pem"
DEMO_MODEL_DIR = "demo-model"
RUNTIME_DIR = "run"
CLEANUP_RECORD_FILE = "runtime-cleanup.json"


def database_file(settings: Settings) -> Path:
    """The SQLite file used when `database.url` is not set."""
    return settings.state_dir / DB_FILE


def pid_file(state_dir: Path) -> Path:
    return state_dir / PID_FILE


def token_key_file(settings: Settings) -> Path:
    """`api_auth.token_key_file`, else ``token.key`` in `state_dir` (the same file `serve` reads)."""
    return settings.api_auth.token_key_file or settings.state_dir / TOKEN_KEY_FILE


def demo_token_file(settings: Settings) -> Path:
    return settings.state_dir / DEMO_TOKEN_FILE


def audit_signing_key_file(settings: Settings) -> Path:
    return settings.audit.signing_key_file or settings.state_dir / AUDIT_SIGNING_KEY_FILE


def audit_prompt_key_file(settings: Settings) -> Path:
    return settings.state_dir / AUDIT_PROMPT_KEY_FILE


def audit_archive_dir(settings: Settings) -> Path:
    return settings.audit.archive_dir or settings.state_dir / AUDIT_ARCHIVE_DIR


def watermark_key_file(settings: Settings) -> Path:
    return settings.provenance.watermark_key_file or settings.state_dir / WATERMARK_KEY_FILE


def provenance_signing_key_file(settings: Settings) -> Path:
    return settings.provenance.signing_key_file or settings.state_dir / PROVENANCE_SIGNING_KEY_FILE


def demo_model_dir(settings: Settings) -> Path:
    return settings.state_dir / DEMO_MODEL_DIR


def cleanup_record_file(settings: Settings) -> Path:
    return settings.state_dir / CLEANUP_RECORD_FILE


def runtime_dir(settings: Settings, environ: Mapping[str, str]) -> Path:
    """`isolation.runtime_dir`, else systemd's `$RUNTIME_DIRECTORY` (its first entry), else `state_dir/run`."""
    if settings.isolation.runtime_dir is not None:
        return settings.isolation.runtime_dir
    systemd = environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(systemd) if systemd else settings.state_dir / RUNTIME_DIR


def key_files(settings: Settings) -> dict[str, Path]:
    """Every key file zguard creates or reads, by the setting (or description) that names it."""
    return {
        "api_auth.token_key_file": token_key_file(settings),
        "audit.signing_key_file": audit_signing_key_file(settings),
        "audit prompt HMAC key": audit_prompt_key_file(settings),
        "provenance.watermark_key_file": watermark_key_file(settings),
        "provenance.signing_key_file": provenance_signing_key_file(settings),
        "demo token": demo_token_file(settings),
    }
