"""Errors of the state store. Each carries the data a caller needs; none carries a secret.

ZguardError
└── StoreError                 store_error
    ├── SchemaNotCurrent       schema_not_current: `current` and `head` revisions
    ├── PrincipalExists        principal_exists: `name`
    ├── PrincipalNotFound      principal_not_found: `name` or `principal_id`
    ├── TokenExists            token_exists: the hash is already stored (never echoed)
    └── TokenNotFound          token_not_found: `token_id`
"""

from __future__ import annotations

from zguard.errors import ZguardError


class StoreError(ZguardError):
    code = "store_error"
    fix = "`zguard db current` and `zguard doctor` show the state database's state"


class SchemaNotCurrent(StoreError):
    """The database is not at the revision this build of zguard expects."""

    code = "schema_not_current"
    status = 503
    fix = "run `zguard db upgrade` (or `zguard init` on a new state directory)"

    def __init__(self, current: str | None, head: str, *, known: bool) -> None:
        at = "empty (no zguard tables)" if current is None else f"at revision {current}"
        if known:
            message = f"the state database is {at}, this zguard needs revision {head}; run `zguard db upgrade`"
        else:
            message = (
                f"the state database is {at}, which this zguard does not know (written by a newer zguard?); "
                f"it needs revision {head}: run the matching zguard version or restore a backup"
            )
        super().__init__(message)
        self.current = current
        self.head = head
        self.known = known


class PrincipalExists(StoreError):
    code = "principal_exists"
    status = 409
    fix = "choose another name, or change the existing one (`zguard user list`)"

    def __init__(self, name: str) -> None:
        super().__init__(f"a principal named {name!r} already exists")
        self.name = name


class PrincipalNotFound(StoreError):
    code = "principal_not_found"
    status = 404
    fix = "check the name with `zguard user list`"

    def __init__(self, name: str | None = None, principal_id: int | None = None) -> None:
        super().__init__(f"no principal {name!r}" if name is not None else f"no principal with id {principal_id}")
        self.name = name
        self.principal_id = principal_id


class TokenExists(StoreError):
    code = "token_exists"
    status = 409
    fix = "create a new token instead (`zguard token create`)"

    def __init__(self) -> None:
        super().__init__("an API token with this hash is already stored")


class TokenNotFound(StoreError):
    code = "token_not_found"
    status = 404
    fix = "check the prefix with `zguard token list`"

    def __init__(self, token_id: int) -> None:
        super().__init__(f"no API token with id {token_id}")
        self.token_id = token_id
