"""`PolicyHolder`: the policy in force, loaded from the configured lists and swapped on reload.

The policy itself (zguard.policy) is pure; this service reads the lists, handles SIGHUP, audits
reloads and turns a blocking verdict into `PromptRejected`. A reload builds a whole new
`PromptPolicy` aside and then replaces the reference in one assignment, so a check sees either
the old policy or the new one, never a mixture. A list that cannot be read, is not UTF-8 or has
a bad line leaves the old policy in force and says why (fail closed: the server never runs
without the lists it was given; at start the same failure stops it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from zguard.audit import AuditEvent, AuditSink
from zguard.config import PolicySettings, Settings
from zguard.errors import ConfigError, OperatorError, PromptRejected
from zguard.policy.prompt_policy import PolicyError, PromptPolicy
from zguard.policy.terms import BUILTIN, Term, TermListError, parse_term_list
from zguard.policy.verdict import Verdict
from zguard.security.detectors import TERMS

log = logging.getLogger("zguard.policy")
RELOAD_EVENT = "policy.reloaded"


class PolicyLoadError(OperatorError):
    """The lists could not make a policy; `hashes` has the SHA-256 of each list read so far."""

    code = "policy_lists_unusable"
    fix = "mend the list the message names (UTF-8, one term per line), check it with `zguard policy test`, then `zguard policy reload`"

    def __init__(self, message: str, hashes: dict[str, str]) -> None:
        super().__init__(message)
        self.hashes = hashes


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    hashes: dict[str, str]  # list name → SHA-256 (hex) of its bytes as read
    terms: int = 0
    error: str | None = None

    def audit_event(self, trigger: str, principal: str | None = None) -> AuditEvent:
        """`policy.reloaded`: `trigger` (`SIGHUP`, which `zguard policy reload` sends, or `console`)
        and `principal` (who pressed the console's button; None for a signal) say who or what."""
        detail: dict[str, str | int | None] = {"trigger": trigger, "terms": self.terms}
        detail.update({f"sha256:{name}": digest for name, digest in self.hashes.items()})
        if self.error is not None:
            detail["error"] = self.error
        code = None if self.ok else PolicyLoadError.code
        return AuditEvent(
            type=RELOAD_EVENT, outcome="done" if self.ok else "failed", code=code, principal=principal, detail=detail
        )


def builtin_names() -> list[str]:
    lists = resources.files("zguard.policy") / "lists"
    return sorted(BUILTIN + item.name.removesuffix(".txt") for item in lists.iterdir() if item.name.endswith(".txt"))


def read_list(name: str) -> bytes:
    """The bytes of a configured list: `builtin:NAME` from the package, else a file path."""
    if name.startswith(BUILTIN):
        if name not in builtin_names():
            raise FileNotFoundError(f"no such built-in list; built-in lists: {', '.join(builtin_names())}")
        return (resources.files("zguard.policy") / "lists" / f"{name.removeprefix(BUILTIN)}.txt").read_bytes()
    return Path(name).read_bytes()


def load_terms(names: Sequence[str]) -> tuple[list[Term], dict[str, str]]:
    """Every term of the lists and each list's SHA-256; raise PolicyLoadError naming the problem."""
    terms: list[Term] = []
    hashes: dict[str, str] = {}
    for name in names:
        try:
            data = read_list(name)
        except OSError as exc:
            raise PolicyLoadError(f"{name}: cannot read it ({exc.strerror or exc})", hashes) from None
        hashes[name] = hashlib.sha256(data).hexdigest()
        try:
            text = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as exc:
            raise PolicyLoadError(f"{name}: not UTF-8 (byte {exc.start}); save it as UTF-8", hashes) from None
        try:
            terms.extend(parse_term_list(text, name))
        except TermListError as exc:
            raise PolicyLoadError(str(exc), hashes) from None
    return terms, hashes


def build_policy(settings: PolicySettings) -> tuple[PromptPolicy, dict[str, str]]:
    terms, hashes = load_terms(settings.banned_terms_files)
    try:
        policy = PromptPolicy(
            terms, actions=settings.actions, per_role=settings.per_role, allow_phrases=settings.allow_phrases
        )
    except PolicyError as exc:
        raise PolicyLoadError(str(exc), hashes) from None
    return policy, hashes


@dataclass(frozen=True)
class LoadedPolicy:
    policy: PromptPolicy
    hashes: dict[str, str]  # list name → SHA-256 (hex) of the bytes it was built from


@dataclass
class PolicyHolder:
    """The policy in force. `check` and `enforce` may run on any thread while `reload` runs."""

    settings: PolicySettings
    loaded: LoadedPolicy  # replaced whole, in one assignment
    _reloading: threading.Lock = field(default_factory=threading.Lock, repr=False)
    reloads: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})  # for /metrics

    @property
    def policy(self) -> PromptPolicy:
        return self.loaded.policy

    @property
    def hashes(self) -> dict[str, str]:
        return self.loaded.hashes

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicyHolder:
        """Load the configured lists; raise ConfigError (the server does not start) when they fail."""
        known = set(settings.role_registry().roles)
        if unknown := sorted(set(settings.policy.per_role) - known):
            raise ConfigError(
                [f"policy.per_role: unknown role(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"]
            )
        try:
            policy, hashes = build_policy(settings.policy)
        except PolicyLoadError as exc:
            raise ConfigError([f"policy.banned_terms_files: {exc.message}"]) from None
        log.info("prompt policy: %d terms from %d list(s)", policy.term_count, len(hashes))
        return cls(settings.policy, LoadedPolicy(policy, hashes))

    def check(self, prompt: str | None, negative_prompt: str | None = None, roles: Collection[str] = ()) -> Verdict:
        return self.policy.check(prompt, negative_prompt, roles)

    def enforce(self, prompt: str | None, negative_prompt: str | None = None, roles: Collection[str] = ()) -> Verdict:
        """The verdict when it allows the request; raise PromptRejected when it blocks."""
        verdict = self.check(prompt, negative_prompt, roles)
        deciding = verdict.deciding
        if deciding is None or verdict.allowed:
            return verdict
        if deciding.detector == TERMS:
            reason = f"category '{deciding.category}'"
            if self.settings.reveal_terms and deciding.term is not None:
                reason += f", term '{deciding.term}'"
        else:
            reason = f"category '{deciding.category}' ({deciding.detector.replace('_', ' ')})"
        raise PromptRejected(
            f"'{deciding.field}' was rejected by the prompt policy: {reason}",
            param=deciding.field,
            category=deciding.category,
            detector=deciding.detector,
            policy=verdict.audit_fields(),
        )

    def reload(self) -> ReloadResult:
        """Re-read the lists and swap the new policy in; on any failure keep the old one."""
        with self._reloading:
            try:
                policy, hashes = build_policy(self.settings)
            except PolicyLoadError as exc:
                log.error("prompt policy reload failed, the previous policy stays in force: %s", exc.message)
                self.reloads["failed"] += 1
                return ReloadResult(ok=False, hashes=exc.hashes, terms=self.policy.term_count, error=exc.message)
            self.loaded = LoadedPolicy(policy, hashes)  # one reference swap: checks see old or new
            self.reloads["ok"] += 1
        log.info("prompt policy reloaded: %d terms from %d list(s)", policy.term_count, len(hashes))
        return ReloadResult(ok=True, hashes=hashes, terms=policy.term_count)


def reload_and_audit(
    holder: PolicyHolder, audit: AuditSink, trigger: str, principal: str | None = None
) -> ReloadResult:
    """Reload and record `policy.reloaded` with each list's hash. Blocking: run it off the event loop."""
    result = holder.reload()
    try:
        audit.emit(result.audit_event(trigger, principal))
    except Exception:  # the reload stands either way; a missing audit record must be visible in the log
        log.exception("could not audit the prompt policy reload")
    return result


class ReloadOnSignal:
    """SIGHUP for `serve`: reload in a worker thread (100,000 terms take seconds to compile, which
    must not stall the event loop), then audit the outcome."""

    def __init__(self, holder: PolicyHolder, audit: AuditSink) -> None:
        self._holder = holder
        self._audit = audit
        self._tasks: set[asyncio.Task[ReloadResult]] = set()

    def __call__(self) -> None:
        log.info("received SIGHUP: reloading the prompt policy")
        task = asyncio.get_running_loop().create_task(
            asyncio.to_thread(reload_and_audit, self._holder, self._audit, "SIGHUP")
        )
        self._tasks.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
