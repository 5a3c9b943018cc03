"""zguard's settings: the typed model (`settings`) and how it is read (`loader`).

Everything outside imports from here. The model imports nothing above it: only `zguard.errors`,
the pure parsers of `zguard.security` and its own pure size rules (`zguard.config.sizes`).
"""

from zguard.config.identity import IdentitySettings, JwtSettings
from zguard.config.settings import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG,
    ENV_PREFIX,
    ApiAuthSettings,
    ApiSettings,
    AuditSettings,
    ConfigUser,
    ConsoleSettings,
    DatabaseSettings,
    GenerationSettings,
    IntegritySettings,
    IsolationSettings,
    ListenerSettings,
    ModelSettings,
    PolicySettings,
    ProvenanceSettings,
    RateLimitSettings,
    Settings,
    SyslogSettings,
    TransportSettings,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "ApiAuthSettings",
    "ApiSettings",
    "AuditSettings",
    "ConfigUser",
    "ConsoleSettings",
    "DatabaseSettings",
    "GenerationSettings",
    "IdentitySettings",
    "IntegritySettings",
    "IsolationSettings",
    "JwtSettings",
    "ListenerSettings",
    "ModelSettings",
    "PolicySettings",
    "ProvenanceSettings",
    "RateLimitSettings",
    "Settings",
    "SyslogSettings",
    "TransportSettings",
]
