"""`zguard doctor`'s check of `identity.ldap`: every configured directory server is reached over
verified TLS (LDAPS or StartTLS), the service account binds, and the base DNs exist.

A FAIL means directory users cannot sign in (503 `identity_provider_unavailable`); local users
still can. One failing failover server is a WARN while another answers. ldap3 is used directly
(`ops` does not import `services`), with the same TLS and timeouts as the sign-in
(zguard.security.ldap). Nothing here writes to the directory, and no password is printed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from ldap3 import BASE, SIMPLE, Connection
from ldap3.core.exceptions import LDAPException

from zguard.config.identity_ldap import LdapSettings
from zguard.ops.findings import CheckResult
from zguard.security.ldap import close_connection, endpoint, server

CHECK = "identity_ldap"
SUCCESS = 0


def _password(settings: LdapSettings) -> str:
    if settings.bind_password_file is not None:
        text = Path(settings.bind_password_file).read_text(encoding="utf-8")
        return text[:-1] if text.endswith("\n") else text
    return settings.bind_password.get_secret_value() if settings.bind_password is not None else ""


def _probe(settings: LdapSettings, url: str, password: str) -> str | None:
    """None when `url` binds as the service account and finds the base DNs; else what went wrong."""
    connection = Connection(
        server(endpoint(url), settings.ca_file, settings.timeout_s),
        user=settings.bind_dn,
        password=password,
        authentication=SIMPLE,
        read_only=True,
        auto_referrals=False,
        receive_timeout=math.ceil(settings.timeout_s),
        raise_exceptions=False,
    )
    try:
        connection.open()
        if settings.start_tls and not connection.start_tls():
            return f"StartTLS refused ({connection.result.get('description')})"
        if not connection.bind():
            return f"the service account {settings.bind_dn} cannot bind ({connection.result.get('description')})"
        for key, base in (("user_base_dn", settings.user_base_dn), ("group_base_dn", settings.group_base_dn)):
            if base is None:
                continue
            connection.search(base, "(objectClass=*)", search_scope=BASE, attributes=["1.1"], size_limit=1)
            if connection.result.get("result") != SUCCESS or not connection.response:
                return (
                    f"identity.ldap.{key} {base} is not found or not readable ({connection.result.get('description')})"
                )
    except (LDAPException, OSError) as error:
        return f"cannot connect over verified TLS: {type(error).__name__}: {str(error)[:300]}"
    finally:
        close_connection(connection)
    return None


def ldap_finding(
    settings: LdapSettings, probe: Callable[[LdapSettings, str, str], str | None] = _probe
) -> CheckResult | None:
    """The directory check; None when `identity.ldap` is off."""
    if not settings.enabled or settings.url is None:
        return None
    try:
        password = _password(settings)
    except OSError as error:
        return CheckResult(
            CHECK,
            "fail",
            f"identity.ldap.bind_password_file cannot be read: {error.strerror}",
            "point identity.ldap.bind_password_file at a file the service account can read",
        )
    urls = [settings.url, *settings.failover_urls]
    problems = {url: problem for url in urls if (problem := probe(settings, url, password)) is not None}
    if not problems:
        return CheckResult(
            CHECK,
            "pass",
            f"identity.ldap: {', '.join(urls)} bind as {settings.bind_dn} over verified TLS, base DNs found",
        )
    listed = "; ".join(f"{url}: {problem}" for url, problem in problems.items())
    fix = (
        "check the server is up and reachable from this host, that its certificate chains to identity.ldap.ca_file "
        "and names the host in the URL, and identity.ldap.bind_dn / bind_password and the base DNs (ldapsearch -H URL -D BIND_DN -W -b BASE -s base)"
    )
    if len(problems) < len(urls):
        return CheckResult(CHECK, "warn", f"identity.ldap: a failover server does not answer: {listed}", fix)
    return CheckResult(
        CHECK,
        "fail",
        f"identity.ldap: no directory server can be used, so directory users cannot sign in (503 "
        f"identity_provider_unavailable; local users still can): {listed}",
        fix,
    )
