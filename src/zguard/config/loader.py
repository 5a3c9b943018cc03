"""Loading settings: a YAML file plus ``ZGUARD_*`` environment variables, validated at once.

Precedence, lowest first: defaults declared in `zguard.config`, the YAML file, then environment
variables named ``ZGUARD_<SECTION>__<KEY>`` (``ZGUARD_API__PORT=15000``) or ``ZGUARD_<KEY>`` for
top-level keys (``ZGUARD_STATE_DIR``). Environment values are parsed as YAML scalars, so
``15000`` is a number and ``true`` a boolean. Every problem is reported at once, naming the key,
the environment variable and the fix.

A ``ZGUARD_<NAME>`` variable (no ``__``) that names no top-level setting is not zguard's to
refuse: clients keep their key in ``ZGUARD_API_KEY`` (as the README's examples do) on the same
host. Those in `CLIENT_VARIABLES` are ignored quietly, any other with a warning naming it (a
misspelt top-level key). A variable with a section (``ZGUARD_API__ALOW``,
``ZGUARD_GENRATION__MAX_QUEUE``) is still refused: it was meant as a setting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from zguard.config import DEFAULT_CONFIG_PATH, ENV_CONFIG, ENV_PREFIX, ConfigUser, Settings
from zguard.errors import ConfigError

log = logging.getLogger("zguard.config")


def config_path(cli_value: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file to read and whether the user named it (a named file must exist)."""
    if cli_value:
        return Path(cli_value), True
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG]), True
    return DEFAULT_CONFIG_PATH, False


CLIENT_VARIABLES = frozenset({"ZGUARD_API_KEY", "ZGUARD_BASE_URL", "ZGUARD_URL"})


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(path) == 1 and path[0] not in Settings.model_fields:
            if name not in CLIENT_VARIABLES:
                log.warning("ignoring %s: it names no setting (see docs/settings.md)", name)
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)) and not raw.lstrip().startswith(("{", "[")):
            value = raw
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[path[-1]] = value
    return overrides


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _env_name(loc: tuple[int | str, ...]) -> str:
    # A list item (`api.allow.0`) is set through the variable holding the whole list.
    keys = [str(part) for part in loc[: next((i for i, p in enumerate(loc) if isinstance(p, int)), len(loc))]]
    return ENV_PREFIX + "__".join(key.upper() for key in keys)


def _field_help(loc: tuple[int | str, ...]) -> str | None:
    model: type[BaseModel] = Settings
    field = None
    for part in loc:
        if not isinstance(part, str) or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return field.description if field else None


def _problems(error: ValidationError, source: Path) -> list[str]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        key = ".".join(str(p) for p in loc) or "(file)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            problems.append(
                f"{key}: unknown setting (from {source} or {_env_name(loc)}); remove it or check its spelling in docs/settings.md"
            )
            continue
        if not loc:  # a rule across several settings: its message names them
            problems.append(f"{message} (in {source} or the ZGUARD_* environment)")
            continue
        hint = _field_help(loc)
        fix = f" — {hint}" if hint else ""
        problems.append(f"{key}: {message} (set it in {source} or {_env_name(loc)}){fix}")
    return problems


def load_settings(path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate settings; raise ConfigError naming every bad key and how to fix it."""
    env = os.environ if environ is None else environ
    source, named = config_path(path, env)
    data: Any = {}
    try:
        present = source.exists()
    except OSError:  # a folder above it refuses this account: reading it says so below
        present = True
    if present:
        try:
            data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                [f"{source}: cannot read the file ({exc.__class__.__name__}); check its permissions"]
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError([f"{source}: not valid YAML{where}; fix the syntax"]) from None
        if not isinstance(data, dict):
            raise ConfigError([f"{source}: the top level must be a mapping of settings"])
    elif named:
        raise ConfigError([f"{source}: file not found; pass an existing file with --config or {ENV_CONFIG}"])
    try:
        return Settings.model_validate(_merge(data, _env_overrides(env)))
    except ValidationError as exc:
        raise ConfigError(_problems(exc, source)) from None


def masked_settings(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret replaced by ``**********``."""
    return settings.model_dump(mode="json")  # SecretStr dumps as '**********' in JSON mode


def iter_settings_fields(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """Every leaf setting as (dotted key, default, help text), for the settings reference."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and annotation is not ConfigUser:
            yield from iter_settings_fields(annotation, key + ".")
        else:
            default = None if field.is_required() else field.get_default(call_default_factory=True)
            if isinstance(default, SecretStr):  # a default is no secret: show it (`memory://`), not stars
                default = default.get_secret_value()
            yield key, default, field.description or ""
