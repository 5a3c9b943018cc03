"""zguard's settings: one typed model with help text on every key.

`zguard.config.loader` reads it from a YAML file plus ``ZGUARD_*`` variables; this module only
declares what can be set, its defaults and its validation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from zguard.config.approvals import ApprovalSettings
from zguard.config.identity import IdentitySettings, check_role_map
from zguard.config.notifications import NotificationSettings
from zguard.config.replicas import ServeSettings
from zguard.config.sections import Section, is_loopback
from zguard.config.sizes import SIZE_STEP, check_size, parse_size
from zguard.config.throughput import ThroughputSettings
from zguard.security.detectors import DEFAULT_ACTIONS, DETECTORS, Action
from zguard.security.netacl import LOOPBACK_NETWORKS, parse_networks
from zguard.security.passwords import is_bcrypt_hash
from zguard.security.rates import parse_rates
from zguard.security.rbac import CustomRole, RoleError, RoleRegistry, build_registry, check_assignment

DEFAULT_CONFIG_PATH = Path("config/zguard.yaml")
ENV_PREFIX = "ZGUARD_"
ENV_CONFIG = "ZGUARD_CONFIG"


# The names this module has always used (zguard.config.sections holds them for every section module).
_Section = Section
_is_loopback = is_loopback


def _as_list(value: Any) -> Any:
    """A single string becomes a list, split at commas and spaces: `ZGUARD_API__ALLOW=10.0.0.0/8`."""
    return value.replace(",", " ").split() if isinstance(value, str) else value


def _canonical_networks(entries: list[str]) -> list[str]:
    """Each entry as the network it means (`10.0.0.5` → `10.0.0.5/32`); every bad entry named."""
    return [str(network) for network in parse_networks(entries)]


class TransportSettings(_Section):
    """Limits the listener enforces on bytes and sockets before the app sees a request
    (zguard.serve.transport)."""

    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request line plus headers, in bytes; a request over it gets 431 `request_header_fields_too_large` and the connection is closed, before the headers are parsed further.",
    )
    max_headers: int = Field(
        100,
        ge=8,
        le=1000,
        description="Most header fields one request may carry; more get 431 `request_header_fields_too_large`.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds a client has to send a complete request line and headers, counted from the connection's opening (first request) or from the request's first byte (later requests on a kept-alive connection). Late headers get 408 `request_timeout`; a connection that sent nothing is closed. Each connection's deadline is up to 10% shorter, at random, so sockets opened together do not all expire at once.",
    )
    body_idle_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Longest pause, in seconds, between two pieces of a request body; a longer one gets 408 `request_timeout` and the connection is closed.",
    )
    body_timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Seconds a client has to send a whole request body, counted from the end of its headers; later gets 408 `request_timeout`. Time the server itself is not reading (a full buffer) does not count.",
    )
    keep_alive_timeout_s: int = Field(
        5,
        ge=1,
        le=300,
        description="Seconds an idle kept-alive connection stays open waiting for the next request.",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        le=65536,
        description="Most open connections on this listener. At the cap a new connection replaces the one that has waited longest without a request in progress (an idle or slow-header socket); when every connection has a request in progress, the new one gets 503 `too_many_connections` and is closed. The process needs open files for it: see `zguard serve`'s open-file check (README, Transport limits).",
    )
    max_connections_per_client: int = Field(
        128,
        ge=1,
        le=65536,
        description="Most open connections from one client address (the TCP peer); more get 503 `too_many_connections` and are closed. Peers in `trusted_proxies` are exempt (behind a proxy, `max_connections` applies).",
    )


class ListenerSettings(_Section):
    host: str = Field(
        "127.0.0.1",
        description="Address to bind. Loopback by default; a non-loopback address exposes the listener to the network.",
    )
    port: int = Field(5000, ge=1, le=65535, description="TCP port to listen on.")
    allow: list[str] = Field(
        default_factory=lambda: list(LOOPBACK_NETWORKS),
        description="Networks (CIDR, IPv4 or IPv6; a bare address means just that address) whose clients may call this listener; everyone else gets 403 `ip_not_allowed` before any other check, `/healthz` and `/readyz` included. Checked against the TCP peer, or against `X-Forwarded-For` when the peer is in `trusted_proxies`. Loopback only by default; an empty list refuses everyone, and a listener bound to a non-loopback address refuses to start with it.",
    )

    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate (chain) to serve HTTPS with, TLS 1.2 or newer. Unset: plain HTTP, for loopback or behind a TLS-terminating proxy (see README, Fronting with nginx).",
    )
    tls_key_file: Path | None = Field(
        None,
        description="PEM private key of `tls_cert_file`; must not be readable by every account (0600, or 0640 with the service group), or the listener refuses to start.",
    )

    server_names: list[str] = Field(
        default_factory=list,
        description="Host names (and `name:port`) clients may send in `Host`; any other gets 400 `invalid_host`. Empty (the default): any `Host` is accepted — zguard never writes it into a response (no redirects, no absolute URLs), so it cannot be used to forge links. Set it when the listener is reached by known names, as DNS rebinding protection.",
    )

    transport: TransportSettings = Field(
        default_factory=TransportSettings,
        description="Header size and count limits, read deadlines and connection caps, enforced before the app sees a request.",
    )

    _allow_as_list = field_validator("allow", mode="before")(_as_list)
    _allow_networks = field_validator("allow")(_canonical_networks)
    _names_as_list = field_validator("server_names", mode="before")(_as_list)

    @field_validator("server_names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        bad = [
            name
            for name in value
            if not re.fullmatch(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", name)
        ]
        if bad:
            raise ValueError(f"not a host name or host:port: {', '.join(repr(b) for b in bad)}")
        return [name.lower() for name in value]

    @model_validator(mode="after")
    def _tls_pair(self) -> ListenerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file: set both (certificate and its private key) or neither")
        return self

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.host)


class ApiSettings(ListenerSettings):
    max_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description="Largest request body accepted; larger bodies get 413 `request_too_large`.",
    )
    docs_enabled: bool = Field(
        False,
        description="Serve `/docs`, `/redoc` and `/openapi.json`. Off by default: the document is published in `docs/openapi.json`.",
    )
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA certificate(s): when set (with `tls_cert_file`), clients must present a certificate signed by one of them (mTLS) or the TLS handshake fails.",
    )

    @model_validator(mode="after")
    def _client_ca_needs_tls(self) -> ApiSettings:
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file: client certificates need TLS; set tls_cert_file and tls_key_file too")
        return self


class ConsoleSettings(ListenerSettings):
    port: int = Field(7860, ge=1, le=65535, description="TCP port to listen on.")
    session_idle_s: int = Field(
        900,
        ge=60,
        le=86400,
        description="A console session without a request for this long ends (401 `session_expired`); activity is recorded every 30 s, so it ends up to 30 s late. ASVS 5.0 7.3.1.",
    )
    session_max_s: int = Field(
        8 * 3600,
        ge=300,
        le=7 * 86400,
        description="A console session ends this long after sign-in, however active (ASVS 5.0 7.3.2). Every session also ends at sign-out, when the user is disabled, or their password or roles change.",
    )

    totp_required_roles: list[str] = Field(
        default_factory=lambda: ["admin"],
        description="Roles whose holders must give a TOTP code (RFC 6238) with their password to sign in to the console (ASVS 5.0 6.3.3). Anyone may enrol one from My account; a user of these roles without one is refused (403 `second_factor_not_enrolled`) until an operator runs `zguard user totp NAME`. Empty: optional for everyone.",
    )

    @model_validator(mode="after")
    def _idle_within_max(self) -> ConsoleSettings:
        if self.session_idle_s > self.session_max_s:
            raise ValueError("console.session_idle_s must not exceed console.session_max_s")
        return self


class ModelSettings(_Section):
    path: Path | None = Field(
        None,
        description="Directory of the Z-Image pipeline (diffusers layout, safetensors). Unset: zguard builds and serves a tiny random-weight demo model whose images are noise.",
    )
    id: str = Field(
        "z-image-turbo",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="Model name clients send in `model` and see in `/v1/models`.",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="`auto` uses CUDA with bfloat16 when a GPU is present, else the CPU with float32."
    )
    warmup: bool = Field(True, description="Run one small generation at start; `/readyz` reports ready only after it.")
    manifest_required: bool = Field(
        True,
        description="Refuse to start when the model directory has no `zguard-manifest.json` (write one with `zguard model pin DIR`). Every start checks each file's size and SHA-256 against it while loading; false serves an unpinned model (still safetensors only).",
    )
    manifest_public_key: Path | None = Field(
        None,
        description="Ed25519 public key (PEM) whose signature the model manifest must carry (`zguard model pin DIR --key FILE` signs it). Unset: the signature, if any, is not checked.",
    )
    change_approval_required: bool = Field(
        False,
        description="Four eyes on model changes: refuse to start (`model_change_unapproved`) unless the manifest's digest has a `model.change_approved` audit event by an admin other than the one who pinned it (`zguard model pin DIR --as ADMIN`, then `zguard model approve DIR --as OTHER_ADMIN`). Off by default so existing deployments keep starting; banks should turn it on. The demo model (model.path unset) is exempt.",
    )


class GenerationSettings(ThroughputSettings):  # postprocess_workers, max_batch_images, batch_wait_ms
    max_queue: int = Field(
        8,
        ge=0,
        le=10_000,
        description="Requests allowed to wait while one generates; the next gets 503 `server_busy` with `Retry-After`.",
    )
    timeout_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Longest a request may take, queueing included; past it the client gets 504 `generation_timeout` and the generation is stopped at the next step.",
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="On SIGTERM/SIGINT, how long in-flight generations may run before the process exits.",
    )
    max_prompt_chars: int = Field(
        2000, ge=1, le=100_000, description="Longest `prompt` and `negative_prompt`, in characters."
    )
    default_size: str | None = Field(
        None, description="`WxH` used when a request has no `size`. Unset: `1024x1024`, or `256x256` on the demo model."
    )
    min_side: int = Field(64, ge=SIZE_STEP, description="Smallest width or height, in pixels.")
    max_side: int = Field(2048, ge=SIZE_STEP, le=8192, description="Largest width or height, in pixels.")
    max_pixels: int = Field(2048 * 2048, ge=SIZE_STEP * SIZE_STEP, description="Largest width × height of one image.")
    max_n: int = Field(4, ge=1, le=16, description="Most images one request may ask for (`n`).")
    default_steps: int = Field(
        8, ge=1, le=200, description="`num_inference_steps` when a request has none (8 for Z-Image-Turbo)."
    )
    max_steps: int = Field(50, ge=1, le=200, description="Largest `num_inference_steps` a request may ask for.")

    @field_validator("min_side", "max_side")
    @classmethod
    def _multiple_of_step(cls, value: int) -> int:
        if value % SIZE_STEP:
            raise ValueError(f"must be a multiple of {SIZE_STEP}")
        return value

    @field_validator("default_size")
    @classmethod
    def _size_shape(cls, value: str | None) -> str | None:
        if value is not None and parse_size(value) is None:
            raise ValueError("must be written WxH, e.g. 1024x1024")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GenerationSettings:
        if self.min_side > self.max_side:
            raise ValueError("generation.min_side must not exceed generation.max_side")
        if self.min_side * self.min_side > self.max_pixels:
            raise ValueError("generation.min_side squared must not exceed generation.max_pixels")
        if self.default_steps > self.max_steps:
            raise ValueError("generation.default_steps must not exceed generation.max_steps")
        if self.default_size is not None:
            size = parse_size(self.default_size)
            if size is not None and check_size(size, self) is not None:
                raise ValueError(f"generation.default_size: {check_size(size, self)}")
        return self


class ConfigUser(_Section):
    username: str = Field(min_length=1, max_length=128, description="Login name.")
    password: SecretStr = Field(
        description="bcrypt hash (`$2a$`, `$2b$` or `$2y$`) of the password; never the password itself."
    )
    roles: list[str] = Field(
        default_factory=lambda: ["generator"],
        description="Roles granted to this user. Default `[generator]`: the deployment guide's users call the image API.",
    )

    @field_validator("password")
    @classmethod
    def _bcrypt_only(cls, value: SecretStr) -> SecretStr:
        if not is_bcrypt_hash(value.get_secret_value()):
            raise ValueError(
                "must be a bcrypt hash ($2a$/$2b$/$2y$...), not a plaintext password; "
                "hash it with `zguard user hash-password` (reads the password from the terminal or stdin)"
            )
        return value


class ApiAuthSettings(_Section):
    enabled: bool = Field(
        True,
        description="Require authentication on both listeners. `false` is allowed only while both are bound to loopback; requests then act as a local `generator` and `viewer`.",
    )
    users: list[ConfigUser] = Field(
        default_factory=list, description="Users declared in configuration, with bcrypt password hashes."
    )
    basic_enabled: bool = Field(
        True, description="Accept `Authorization: Basic` for users with a password (configured or in the database)."
    )
    basic_cache_s: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="How long a verified Basic credential is trusted without another bcrypt check; dropped at once when the user's password, roles or state change. 0 disables the cache.",
    )
    failed_logins_per_user_address: str = Field(
        "5/minute;20/hour",
        description="Failed Basic logins allowed for one username from one client address; past it that username is refused from that address without checking the password (429 `too_many_failed_logins`). Other addresses are not affected. Counted in `rate_limits.storage`, so replicas share it.",
    )
    failed_logins_per_address: str = Field(
        "20/minute;200/hour",
        description="Failed Basic logins allowed from one client address, whatever the username; past it the address is refused for every username. Unknown or invalid API tokens from one address are counted against the same rates separately: past them an unknown token is refused (429) without a database lookup, while a valid token still works.",
    )
    failed_logins_per_user: str = Field(
        "100/hour",
        description="Failed Basic logins allowed for one username from all addresses together (a loose budget against guessing from many addresses); past it that username is refused only from addresses that failed within `failed_logins_per_address`'s longest period, so its owner can still log in from a clean address. Keeps its name from earlier versions, where it locked the username out everywhere.",
    )
    password_min_length: int = Field(
        12,
        ge=8,
        le=64,
        description="Fewest characters a new password may have (`zguard user passwd`, `zguard user hash-password`). New passwords are also refused when they contain the username, are among the most common passwords, or repeat one short pattern (zguard/security/password_policy.py); existing hashes are not re-checked.",
    )
    token_expiry_days: int = Field(
        90,
        ge=0,
        le=3650,
        description="Lifetime of a new API token when `zguard token create` is given no `--expires-in` (and of `zguard init`'s admin token), in days. 0: tokens never expire unless asked — `zguard scan` flags such tokens. `--no-expiry` makes one that never expires, on purpose and recorded.",
    )
    token_key_file: Path | None = Field(
        None,
        description="File with the server key that API tokens are hashed under (HMAC-SHA256), created mode 0600 on first use. Unset: `token.key` in `state_dir`. Replacing it invalidates every token.",
    )

    @field_validator("failed_logins_per_user_address", "failed_logins_per_address", "failed_logins_per_user")
    @classmethod
    def _rates(cls, value: str) -> str:
        parse_rates(value)
        return value

    @model_validator(mode="after")
    def _unique_usernames(self) -> ApiAuthSettings:
        names = [user.username.casefold() for user in self.users]  # one namespace, without case
        if duplicates := sorted({user.username for user in self.users if names.count(user.username.casefold()) > 1}):
            raise ValueError(
                f"api_auth.users names {', '.join(duplicates)} more than once (names are compared without case)"
            )
        return self


class CustomRoleSettings(_Section):
    name: str = Field(min_length=1, max_length=64, description="Role name; must not be a built-in role's.")
    permissions: list[str] = Field(default_factory=list, description="Permissions granted, e.g. `images:generate`.")
    inherits: list[str] = Field(default_factory=list, description="Built-in roles whose permissions it also grants.")


DATABASE_SCHEMES = ("sqlite", "postgresql+psycopg")


class DatabaseSettings(_Section):
    url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the state database: `sqlite:////var/lib/zguard/zguard.db` or `postgresql+psycopg://user:password@host:5432/zguard`. Unset: the SQLite file `zguard.db` in `state_dir` (WAL mode, mode 0600). A secret: it may hold a password, so `zguard config check` masks it.",
    )

    @field_validator("url")
    @classmethod
    def _supported_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        # Never echo the URL itself in the message: it may carry a password.
        scheme, sep, rest = value.get_secret_value().partition("://")
        if not sep or scheme not in DATABASE_SCHEMES:
            raise ValueError(
                "must start with sqlite:/// (a file) or postgresql+psycopg:// (PostgreSQL through psycopg 3); "
                "other databases and drivers are not supported"
            )
        if scheme == "sqlite" and rest.lstrip("/") in ("", ":memory:"):
            raise ValueError(
                "an in-memory SQLite database loses all state on exit; give a file, sqlite:////path/zguard.db"
            )
        return value


RATE_LIMIT_SCHEMES = ("memory", "redis", "rediss")


def _rate_map(value: dict[str, str]) -> dict[str, str]:
    """Every value a valid rate list and every key non-empty; each bad entry named."""
    problems = []
    for name, rates in value.items():
        if not name.strip():
            problems.append("an empty name")
            continue
        try:
            parse_rates(rates)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    return value


class RateLimitSettings(_Section):
    storage: SecretStr = Field(
        SecretStr("memory://"),
        description="Where request counters live: `memory://` (the default: this process only) or `redis://host:6379/0` (`rediss://` for TLS) so every replica shares them. A secret: the URL may hold a password. When Redis cannot be reached, requests that need a permission get 503 `rate_limiter_unavailable` (fail closed).",
    )
    strategy: Literal["moving-window", "sliding-window-counter"] = Field(
        "moving-window",
        description="`moving-window` counts every request of the last period exactly; `sliding-window-counter` approximates it from two fixed windows with less storage.",
    )
    key_prefix: str = Field(
        "zguard",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Prefix of every counter key in the storage; replicas that share counters must use the same one.",
    )
    per_role: dict[str, str] = Field(
        default_factory=dict,
        description="Rates per role, e.g. `{generator: 10/minute;100/hour}`. A principal must stay within the rates of every role it holds and the top-level `rate_limit`.",
    )
    per_principal: dict[str, str] = Field(
        default_factory=dict,
        description="Rates per principal name, e.g. `{batch-service: 1000/hour}`; replaces that principal's role rates and the top-level `rate_limit` entirely. The local identity of `api_auth.enabled: false` is named `local`.",
    )
    other_routes: str | None = Field(
        "600/minute",
        description="Rate every principal must stay within on the routes other than image generation (`/v1/models`, audit reads, trace, console pages, `/metrics`), counted apart from the generation rates above: a Prometheus scrape or an auditor's paging never spends a principal's `10/分钟`, and a generation flood never blocks reads. Null: those routes are not rate limited.",
    )
    max_concurrent_per_principal: int = Field(
        2,
        ge=1,
        le=1000,
        description="Generations one principal may have queued or running at once; the next gets 429 `too_many_concurrent_requests`. With Redis `storage` the cap holds across every replica (leased slots, `serve.in_flight_lease_s`); with `memory://`, per process.",
    )

    _rates = field_validator("per_role", "per_principal")(_rate_map)

    @field_validator("other_routes")
    @classmethod
    def _other_rates(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rates(value)
        return value

    @field_validator("storage")
    @classmethod
    def _storage_scheme(cls, value: SecretStr) -> SecretStr:
        # Never echo the URL itself in the message: it may carry a password.
        scheme, sep, rest = value.get_secret_value().partition("://")
        if not sep or scheme not in RATE_LIMIT_SCHEMES:
            raise ValueError("must be memory:// or a Redis URL, redis://host:6379/0 (rediss:// for TLS)")
        if scheme != "memory" and not rest.strip("/"):
            raise ValueError("a Redis URL needs a host, e.g. redis://127.0.0.1:6379/0")
        return value


RETENTION_FLOOR_DAYS = 180


class SyslogSettings(_Section):
    transport: Literal["off", "udp", "tcp", "tls"] = Field(
        "off",
        description="How audit events are forwarded to the central log server: `udp`, `tcp` (RFC 6587 octet counting) or `tls` (RFC 5425). `off` keeps them only in the audit store; a bank's deployment should forward them.",
    )
    host: str = Field("127.0.0.1", min_length=1, description="The syslog collector's host name or address.")
    port: int = Field(
        6514, ge=1, le=65535, description="The collector's port (514 for UDP/TCP by convention, 6514 for TLS)."
    )
    ca_file: Path | None = Field(
        None,
        description="CA certificate(s) (PEM) that the collector's TLS certificate must chain to; unset: the system's CAs.",
    )
    cert_file: Path | None = Field(
        None, description="Client certificate (PEM) for TLS mutual authentication; optional."
    )
    key_file: Path | None = Field(None, description="Private key (PEM) of `cert_file`; kept mode 0600.")
    server_name: str | None = Field(
        None,
        description="Name the collector's certificate must carry; unset: `host`. Verification is never switched off.",
    )
    enterprise_number: int = Field(
        32473,
        ge=1,
        description="IANA private enterprise number in the structured-data id `zguard@<number>`; 32473 is the number IANA reserves for documentation: set your organisation's.",
    )
    app_name: str = Field(
        "zguard", min_length=1, max_length=48, pattern=r"^[!-~]+$", description="APP-NAME of every message."
    )
    facility: int = Field(13, ge=0, le=23, description="Syslog facility number (13: log audit).")
    batch_size: int = Field(500, ge=1, le=10_000, description="Events sent per round from the outbox.")
    max_backoff_s: float = Field(
        30.0, gt=0, le=3600, description="Longest wait between retries while the collector is down."
    )
    timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds to connect (TLS handshake included) or send before the collector counts as down, and the longest it may leave sent bytes unacknowledged.",
    )

    @model_validator(mode="after")
    def _key_needs_cert(self) -> SyslogSettings:
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("audit.syslog.key_file is set without cert_file: set cert_file to its certificate (PEM)")
        return self


class AuditSettings(_Section):
    retention_days: int = Field(
        RETENTION_FLOOR_DAYS,
        description=f"Days audit events are kept in the audit store before `zguard audit purge` archives and deletes them; at least {RETENTION_FLOOR_DAYS} (the deployment guide's floor).",
    )
    prompt_capture: Literal["hmac", "none", "encrypted"] = Field(
        "hmac",
        description="What the audit trail keeps of a prompt: `hmac` (a keyed HMAC-SHA256 and the length: an investigator holding a suspect prompt can confirm it, the log alone reveals nothing), `none` (the length only), or `encrypted` (sealed to `auditor_public_key_file`, so the server cannot read it back; `zguard audit reveal` opens it).",
    )
    auditor_public_key_file: Path | None = Field(
        None,
        description="The auditor's X25519 public key (PEM) that prompts are sealed to when `prompt_capture` is `encrypted`; its private key never belongs on this server.",
    )
    checkpoint_every: int = Field(
        1000, ge=1, le=1_000_000, description="Write a signed checkpoint of the chain head after this many events."
    )
    checkpoint_interval_s: float = Field(
        300.0, gt=0, le=86_400, description="…and at least this often while events arrive (seconds)."
    )
    signing_key_file: Path | None = Field(
        None,
        description="Ed25519 private key (PEM, mode 0600) that signs checkpoints; unset: `audit-signing.pem` in `state_dir`, created at first start. Keep a copy of its public key (`zguard audit public-key`) off-host.",
    )
    checkpoint_keys: list[Path] = Field(
        default_factory=list,
        description="With several replicas writing one trail: the public keys (PEM files, or directories of `*.pem`) whose checkpoints `zguard audit verify` accepts, one per replica, each named by its file name without `.pem`; a checkpoint signed by any other key is reported forged. Empty: only the public half of `signing_key_file`.",
    )
    archive_dir: Path | None = Field(
        None, description="Where `zguard audit purge` writes signed archives; unset: `audit-archive` in `state_dir`."
    )
    field_max_chars: int = Field(
        256,
        ge=64,
        le=4096,
        description="Longest string an audit event stores (a username, path, client address, each `detail` value). A longer one keeps its head and ends in `…[+N chars sha256:xxxxxxxx]`: the characters cut and a hash of the whole value. Every event is cut so in the store, whoever produced it; its fields, roles and mappings (`detail`, `http`, ...) together get 8192 characters (as JSON writes them): mapping entries past that are left out and counted in `detail.bounded_dropped`.",
    )
    unauthenticated_events_per_minute: int = Field(
        60,
        ge=1,
        le=100_000,
        description="Refusals of requests that never authenticated (4xx before authorization: 401, 403 `ip_not_allowed`, 404, 405, 429 `too_many_failed_logins`, ...) recorded one event each per client address (IPv6: per /64) and listener in each minute; further ones are counted and written as one `audit.suppressed` event per address and minute, with the counts by code. The clients are refused all the same.",
    )
    unauthenticated_events_per_minute_total: int = Field(
        600,
        ge=1,
        le=1_000_000,
        description="…and at most this many such refusals recorded one event each per minute from all addresses together; beyond it they are counted in one `audit.suppressed` event per listener and minute. It also caps the addresses tracked, so a flood from many addresses costs bounded memory and bytes.",
    )
    syslog: SyslogSettings = Field(default_factory=SyslogSettings, description="Forwarding to a central syslog server.")

    @field_validator("retention_days")
    @classmethod
    def _retention_floor(cls, value: int) -> int:
        if value < RETENTION_FLOOR_DAYS:
            raise ValueError(
                f"{value} days is below the {RETENTION_FLOOR_DAYS}-day floor audit records must be kept; "
                f"set it to {RETENTION_FLOOR_DAYS} or more"
            )
        return value

    @model_validator(mode="after")
    def _encrypted_needs_key(self) -> AuditSettings:
        if self.prompt_capture == "encrypted" and self.auditor_public_key_file is None:
            raise ValueError(
                "prompt_capture 'encrypted' needs audit.auditor_public_key_file: the auditor's X25519 public key (PEM); "
                "`zguard audit keygen DIR` makes a pair"
            )
        return self


class PolicySettings(_Section):
    banned_terms_files: list[str] = Field(
        default_factory=lambda: ["builtin:guide", "builtin:bank"],
        description="Banned-term lists, UTF-8, one term per line (format in `zguard/policy/terms.py`): file paths, or `builtin:guide` (the deployment guide's 机密, 客户名单, 内部代号, with pinyin) and `builtin:bank` (a starter list for a bank in Chinese and English, meant to be copied and extended). SIGHUP or `zguard policy reload` re-reads them; a list that fails to load leaves the previous policy in force. At start a bad list stops the server (fail closed). Empty: no banned terms; the personal-data detectors still run.",
    )
    reveal_terms: bool = Field(
        False,
        description="Name the matched list entry in the 400 `prompt_rejected` message. Off: the message names only the category, so clients cannot probe the list. The audit trail never gets the term, only its id (a hash of the normalised term).",
    )
    actions: dict[str, Action] = Field(
        default_factory=lambda: dict(DEFAULT_ACTIONS),
        description="What each detector does: `block` (400 `prompt_rejected`, no GPU work) or `flag` (served; the audit event records the finding). Detectors: `terms` (banned terms), `resident_id` (Chinese resident ID: real birth date, ISO 7064 MOD 11-2 check), `bank_card` (13-19 digits, Luhn check), `mobile` (Chinese mobile number), `email`. Detectors not named keep their defaults.",
    )
    per_role: dict[str, dict[str, Action]] = Field(
        default_factory=dict,
        description="Actions replacing `actions` for principals holding a role, e.g. `{red-team: {terms: flag, resident_id: flag}}`. When several of a principal's roles set the same detector, `flag` wins.",
    )
    allow_phrases: list[str] = Field(
        default_factory=lambda: ["手机密码", "随机密码"],
        description="Phrases in which a finding is ignored (compared after the same normalisation as terms): known false positives, e.g. 手机密码 (phone password) and 随机密码 (random password), which contain 机密.",
    )

    @field_validator("actions")
    @classmethod
    def _all_detectors(cls, value: dict[str, Action]) -> dict[str, Action]:
        if unknown := sorted(set(value) - set(DETECTORS)):
            raise ValueError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS)}")
        return {**DEFAULT_ACTIONS, **value}

    @field_validator("per_role")
    @classmethod
    def _known_detectors(cls, value: dict[str, dict[str, Action]]) -> dict[str, dict[str, Action]]:
        for role, actions in value.items():
            if unknown := sorted(set(actions) - set(DETECTORS)):
                raise ValueError(f"{role}: unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS)}")
        return value

    @field_validator("banned_terms_files")
    @classmethod
    def _named_files(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ValueError("an empty file name; give a path or builtin:guide / builtin:bank")
        return value


class IntegritySettings(_Section):
    require_encrypted_model_storage: bool = Field(
        False,
        description="Refuse to start unless the model directory lies on a dm-crypt/LUKS block device (found through `/proc/self/mountinfo` and `/sys/dev/block`, through LVM and other device-mapper layers). `zguard doctor` reports the volume either way.",
    )
    allow_root: bool = Field(
        False,
        description="Let `zguard serve` run as root. Off by default: run it as a dedicated service account that can read, but not write, the model files. Set it only where the account cannot be changed (containers whose user namespace maps root away, CI).",
    )


class IsolationSettings(_Section):
    runtime_dir: Path | None = Field(
        None,
        description="Private directory (mode 0700) that `TMPDIR` and every torch, diffusers, transformers and Hugging Face cache point into while serving; emptied at start, at exit, on SIGTERM/SIGINT and every `cleanup_interval_s`. Unset: `$RUNTIME_DIRECTORY` when systemd sets it (`RuntimeDirectory=zguard`), else `run` in `state_dir`.",
    )
    cleanup_interval_s: float = Field(
        300.0,
        ge=1,
        le=86_400,
        description="How often the runtime directory is swept while serving (seconds); the sweep removes what has not been touched for this long, so a file a library is still using is left for the next sweep. The last sweep's time is kept in `state_dir/runtime-cleanup.json` for `zguard doctor`.",
    )


class ProvenanceSettings(_Section):
    watermark: bool = Field(
        True,
        description="Embed an invisible keyed watermark (a random 64-bit id, recorded on the generation's audit event) in every generated image, so `zguard trace` can name the request that produced it after re-compression, resizing or cropping.",
    )
    watermark_key_file: Path | None = Field(
        None,
        description="The watermark's secret key (32 random bytes, mode 0600), created on first use; unset: `watermark.key` in `state_dir`. Whoever holds it can read and forge marks: keep it as secret as the token key, and keep a copy, or images marked under it can no longer be traced.",
    )
    embed_on_device: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Where the watermark is added. `auto`: on the GPU when the model runs on CUDA, before the image leaves the device, else on the CPU after decoding; `always`: on the engine's device whatever it is (the CPU included: tests force the device path so); `never`: always on the CPU. Both run the same embedder, so the mark is the same either way (on a GPU a float reduction in another order may move a rounding boundary by one level on a few pixels). With `explicit_label` on, the mark is always added on the CPU, after the label is drawn.",
    )
    implicit_label: bool = Field(
        True,
        description="Write the GB 45438-2025 implicit label into every image's metadata: XMP (namespace `http://www.tc260.org.cn/ns/AIGC/1.0/`, prefix `TC260`, property `AIGC`) in PNG iTXt, JPEG APP1 and WebP XMP chunks, signed over the label and the pixels.",
    )
    content_producer: str = Field(
        "zguard",
        min_length=1,
        max_length=256,
        description="The label's `ContentProducer`: the name or code of the service provider that generated the content.",
    )
    content_propagator: str = Field(
        "",
        max_length=256,
        description="The label's `ContentPropagator`: the name or code of the party that distributes the content; empty when zguard does not distribute it.",
    )
    signing_key_file: Path | None = Field(
        None,
        description="Ed25519 private key (PEM, mode 0600) that signs labels (`ReservedCode1`); unset: `provenance-signing.pem` in `state_dir`, created on first use. Separate from the audit key: its public key is handed to whoever checks labels outside the bank.",
    )
    explicit_label: bool = Field(
        False,
        description="Draw a visible label on every image (GB 45438-2025's explicit label, needed for content provided to the public). Off by default for internal use.",
    )
    explicit_label_text: str = Field("AI生成", min_length=1, max_length=32, description="The visible label's text.")
    explicit_label_corner: Literal["top-left", "top-right", "bottom-left", "bottom-right"] = Field(
        "bottom-right", description="Where the visible label goes."
    )
    explicit_label_font: Path | None = Field(
        None,
        description="A TrueType/OpenType font that can draw the label's text (CJK for the default), e.g. `/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc` from Debian's `fonts-noto-cjk`. Unset: a CJK font fontconfig lists (`fc-list :lang=zh`, Noto CJK preferred); the server refuses to start with `explicit_label` on and no such font.",
    )
    trace_max_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Largest image `POST /v1/provenance/trace` accepts (bytes, before base64).",
    )
    trace_max_pixels: int = Field(
        2048 * 2048,
        ge=64 * 64,
        le=8192 * 8192,
        description="Largest image (width × height) a trace decodes, `POST /v1/provenance/trace` and `zguard trace` alike: a larger one is refused with 400 `invalid_value` before a pixel is decoded (a JPEG up to 4× larger is read at half size), and the decoder never resamples beyond it. A mark is read at the size it was generated at: keep it at least `generation.max_pixels`. A running trace holds up to 96 bytes per pixel of it (about 400 MB at the default).",
    )
    trace_workers: int = Field(
        2,
        ge=1,
        le=32,
        description="Traces `POST /v1/provenance/trace` runs at once, in a thread pool of its own (not the one image encoding, password checks and audit reads use), at a lower CPU priority than generation; one more is refused at once with 503 `server_busy` and `Retry-After`. Per process: each replica protects its own memory and CPU.",
    )
    trace_timeout_s: float = Field(
        30.0,
        gt=0,
        le=600,
        description="Longest one `POST /v1/provenance/trace` may run (seconds); then it is answered 504 `trace_timeout` and its work stops at the decoder's next step, as it does when the client disconnects.",
    )


class Settings(_Section):
    """Everything zguard can be told. Loaded once at start; never created at import time."""

    state_dir: Path = Field(
        Path("state"), description="Directory for zguard's state (database, demo model). Created with mode 0700."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level written to the log."
    )
    api: ApiSettings = Field(default_factory=ApiSettings, description="The OpenAI-compatible image API listener.")
    console: ConsoleSettings = Field(default_factory=ConsoleSettings, description="The admin console listener.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="Which model to serve and where.")
    generation: GenerationSettings = Field(
        default_factory=GenerationSettings, description="Request limits, queueing and timeouts."
    )
    api_auth: ApiAuthSettings = Field(
        default_factory=ApiAuthSettings,
        description="Authentication, in the deployment guide's `config/security.yaml` format plus zguard's own keys.",
    )
    roles: list[CustomRoleSettings] = Field(
        default_factory=list,
        description="Custom roles beside the built-in admin, auditor, approver, generator and viewer; separation of duties applies to them too.",
    )
    database: DatabaseSettings = Field(
        default_factory=DatabaseSettings,
        description="The state database (principals, API tokens); `zguard db upgrade` creates and migrates it.",
    )
    rate_limit: str | None = Field(
        None,
        description="Request rate every principal must stay within, in the deployment guide's format: `10/分钟`, `10/minute`, `100/hour;1000/天`. Applies to routes that need a permission; `rate_limits.per_principal` replaces it for the principals it names. Unset: no baseline rate.",
    )
    rate_limits: RateLimitSettings = Field(
        default_factory=RateLimitSettings,
        description="Per-principal request rates and in-flight caps, and where the counters are kept.",
    )
    audit: AuditSettings = Field(
        default_factory=AuditSettings,
        description="The tamper-evident audit trail: retention, prompt capture, checkpoints, syslog forwarding.",
    )
    policy: PolicySettings = Field(
        default_factory=PolicySettings,
        description="The prompt policy: banned terms, personal-data detectors, per-role actions, the allow-list.",
    )
    integrity: IntegritySettings = Field(
        default_factory=IntegritySettings,
        description="Start-up refusals about the host: encrypted model storage, running as root.",
    )
    isolation: IsolationSettings = Field(
        default_factory=IsolationSettings,
        description="Zero persistence: the private runtime directory that temporary files and caches are confined to.",
    )
    provenance: ProvenanceSettings = Field(
        default_factory=ProvenanceSettings,
        description="Provenance of generated images: the invisible watermark `zguard trace` reads, and the GB 45438-2025 implicit and explicit labels.",
    )
    identity: IdentitySettings = Field(
        default_factory=IdentitySettings,
        description="The bank's identity provider: its JWTs as API bearer tokens (`identity.jwt`), console sign-in with OpenID Connect (`identity.oidc`), directory passwords over LDAP (`identity.ldap`), and SCIM provisioning (`identity.scim`); docs/identity.md.",
    )
    approvals: ApprovalSettings = Field(
        default_factory=ApprovalSettings,
        description="Model-use approvals: requests, four-eyes decisions, expiring and quota-bound grants enforced on generation; docs/governance.md.",
    )
    notifications: NotificationSettings = Field(
        default_factory=NotificationSettings,
        description="Approval and model-change events sent to a signed webhook and by e-mail, from the audit trail (at least once); off until a target is set; docs/governance.md.",
    )
    serve: ServeSettings = Field(
        default_factory=ServeSettings,
        description="This process as one replica of several behind a load balancer: its name, its leases, policy digests compared across replicas; docs/scale-out.md.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) of the reverse proxies and load balancers in front of zguard. Only when the TCP peer is one of them is `X-Forwarded-For` read, taking the right-most address that is not a trusted proxy; from anyone else the header is ignored. Empty by default: the peer is always the client.",
    )

    _proxies_as_list = field_validator("trusted_proxies", mode="before")(_as_list)
    _proxies_networks = field_validator("trusted_proxies")(_canonical_networks)

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        if value is not None:
            parse_rates(value)
        return value

    @model_validator(mode="after")
    def _rate_limit_roles(self) -> Settings:
        known = set(self.role_registry().roles)
        unknown = sorted(set(self.rate_limits.per_role) - known)
        if unknown:
            raise ValueError(
                f"rate_limits.per_role: unknown role(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return self

    @model_validator(mode="after")
    def _known_roles(self) -> Settings:
        registry = self.role_registry()  # raises on bad custom roles
        for index, user in enumerate(self.api_auth.users):
            unknown = sorted(set(user.roles) - set(registry.roles))
            if unknown:
                raise ValueError(
                    f"api_auth.users.{index}.roles: unknown role(s) {', '.join(unknown)}; "
                    f"known: {', '.join(sorted(registry.roles))}"
                )
            try:
                check_assignment(user.roles, registry)
            except RoleError as exc:
                raise ValueError(f"api_auth.users.{index}.roles: {exc}") from None
        return self

    @model_validator(mode="after")
    def _identity_roles(self) -> Settings:
        check_role_map(self.identity, self.role_registry(), api_auth_enabled=self.api_auth.enabled)
        return self

    def role_registry(self) -> RoleRegistry:
        """Built-in roles plus the configured custom ones."""
        try:
            return build_registry(
                CustomRole(name=r.name, permissions=tuple(r.permissions), inherits=tuple(r.inherits))
                for r in self.roles
            )
        except RoleError as exc:
            raise ValueError(f"roles: {exc}") from None

    @model_validator(mode="after")
    def _distinct_listeners(self) -> Settings:
        if self.api.port == self.console.port and self.api.host == self.console.host:
            raise ValueError("api.port and console.port must differ: each listener needs its own port")
        return self
