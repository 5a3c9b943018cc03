"""What the IdP's SCIM requests ask for: filters, pages, and the user and group bodies and PATCH
operations Entra ID and Okta send, read into plain values (zguard.services.scim acts on them).

Pure: no I/O. Every refusal is a `ScimError` with the RFC 7644 `scimType` (invalidFilter,
invalidValue, invalidSyntax, invalidPath, noTarget, mutability, tooMany). Attributes zguard does
not keep (emails, name, the enterprise extension) are accepted and ignored, so the IdP's updates
do not fail on them; attribute names are matched without case (RFC 7643 2.1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from zguard.config.identity_scim import SCIM_NAME_MAX
from zguard.errors import ScimError
from zguard.store.models import NAME_MAX, SCIM_EXTERNAL_ID_MAX
from zguard.store.scim import UNSET, Unset

MAX_OPERATIONS: Final = 100
MAX_MEMBERS: Final = 1000
_FILTER = re.compile(r'^\s*([A-Za-z][A-Za-z0-9._:-]*)\s+(eq)\s+"((?:[^"\\]|\\.)*)"\s*$', re.IGNORECASE)
_MEMBER_PATH = re.compile(r'^members\[\s*value\s+eq\s+"((?:[^"\\]|\\.)*)"\s*\]$', re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TRUE, _FALSE = frozenset({"true"}), frozenset({"false"})
Resource = Literal["Users", "Groups"]
Json = dict[str, Any]


@dataclass(frozen=True)
class Page:
    start_index: int  # 1-based, as SCIM counts
    count: int


@dataclass
class UserChange:
    """What a PUT or PATCH of a user asks for; UNSET: not mentioned."""

    user_name: str | Unset = UNSET
    external_id: str | Unset | None = UNSET
    display_name: str | Unset | None = UNSET
    active: bool | Unset = UNSET


@dataclass
class GroupChange:
    display_name: str | Unset = UNSET
    external_id: str | Unset | None = UNSET
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    replace: list[str] | None = None


def invalid(message: str, scim_type: str = "invalidValue") -> ScimError:
    return ScimError(message, scim_type=scim_type)


def parse_filter(text: str | None, resource: Resource, max_chars: int) -> tuple[str, str] | None:
    """(attribute, value) of `attr eq "value"`, the attribute in its canonical spelling; None for no filter."""
    if text is None:
        return None
    if len(text) > max_chars:
        raise invalid(f"the filter is longer than {max_chars} characters", "invalidFilter")
    found = _FILTER.match(text)
    allowed = ("userName", "externalId") if resource == "Users" else ("displayName", "externalId")
    if found is None:
        raise invalid(f'only filters of the form {allowed[0]} eq "value" are supported', "invalidFilter")
    attribute = next((name for name in allowed if name.lower() == found.group(1).lower()), None)
    if attribute is None:
        raise invalid(
            f"filtering on {found.group(1)[:64]!r} is not supported; use {' or '.join(allowed)}", "invalidFilter"
        )
    try:
        value = json.loads(f'"{found.group(3)}"')
    except ValueError:
        raise invalid("the filter's value is not a valid string", "invalidFilter") from None
    return attribute, value


def parse_page(start_index: str | None, count: str | None, max_page: int) -> Page:
    """RFC 7644 3.4.2.4: startIndex below 1 is 1, count below 0 is 0, above the maximum the maximum."""
    try:
        start = 1 if start_index is None else int(start_index)
        size = max_page if count is None else int(count)
    except ValueError:
        raise invalid("startIndex and count must be integers") from None
    return Page(max(1, start), min(max(0, size), max_page))


def as_bool(value: object, what: str) -> bool:
    """A SCIM boolean; also the strings "True"/"False" Entra ID sends."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise invalid(f"{what} must be true or false")


def _text(value: object, what: str, max_len: int, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not value.strip() and not optional):
        raise invalid(f"{what} must be a string")
    if len(value) > max_len or _CONTROL.search(value):
        raise invalid(f"{what} must be at most {max_len} characters, without control characters")
    return value or None


def _required_text(value: object, what: str, max_len: int) -> str:
    """`_text` of a value that must be there: a non-blank string."""
    text = _text(value, what, max_len, optional=False)
    if text is None:  # pragma: no cover - _text refuses blank required values
        raise invalid(f"{what} must be a string")
    return text


def user_name_of(value: object) -> str:
    name = _required_text(value, "userName", NAME_MAX)
    if name != name.strip():
        raise invalid("userName must not start or end with spaces")
    return name


def _get(body: Mapping[str, Any], name: str) -> Any:
    """An attribute by name without regard to case (RFC 7643 2.1), else None."""
    if name in body:
        return body[name]
    lowered = name.lower()
    return next((value for key, value in body.items() if key.lower() == lowered), None)


def parse_user(body: Json) -> tuple[str, UserChange]:
    """userName and the rest of a POST or PUT body; attributes zguard does not keep are ignored."""
    name = user_name_of(_get(body, "userName"))
    change = UserChange(
        user_name=name,
        external_id=_text(_get(body, "externalId"), "externalId", SCIM_EXTERNAL_ID_MAX),
        display_name=_text(_get(body, "displayName"), "displayName", SCIM_NAME_MAX),
    )
    active = _get(body, "active")
    if active is not None:
        change.active = as_bool(active, "active")
    return name, change


def operations_of(body: Json) -> list[Json]:
    operations = _get(body, "Operations")
    if not isinstance(operations, list) or not operations or len(operations) > MAX_OPERATIONS:
        raise invalid(f"a PATCH needs Operations: a list of 1 to {MAX_OPERATIONS} operations", "invalidSyntax")
    if not all(isinstance(op, dict) for op in operations):
        raise invalid("each operation must be an object with op, path and value", "invalidSyntax")
    return operations


def _op(operation: Json) -> tuple[str, str | None, Any]:
    op = _get(operation, "op")
    if not isinstance(op, str) or op.lower() not in ("add", "replace", "remove"):
        raise invalid("op must be add, replace or remove", "invalidSyntax")
    path = _get(operation, "path")
    if path is not None and (not isinstance(path, str) or len(path) > 512):
        raise invalid("path must be a string", "invalidPath")
    return op.lower(), path.strip() if isinstance(path, str) else None, _get(operation, "value")


_USER_ATTRIBUTES = {"active", "username", "externalid", "displayname"}


def _apply_user_attribute(change: UserChange, op: str, name: str, value: Any) -> None:
    key = name.lower()
    if key not in _USER_ATTRIBUTES:
        return  # emails, name.givenName, the enterprise extension ...: not kept, accepted
    if op == "remove":
        if key in ("active", "username"):
            raise invalid(f"{name} cannot be removed", "mutability")
        setattr(change, "external_id" if key == "externalid" else "display_name", None)
        return
    if key == "active":
        change.active = as_bool(value, "active")
    elif key == "username":
        change.user_name = user_name_of(value)
    elif key == "externalid":
        change.external_id = _text(value, "externalId", SCIM_EXTERNAL_ID_MAX)
    else:
        change.display_name = _text(value, "displayName", SCIM_NAME_MAX)


def parse_user_patch(body: Json) -> UserChange:
    """A PATCH of a user: with a `path` per attribute (Entra ID), or without one and an object of
    attributes as the value (Okta); `active` as a boolean or Entra's "True"/"False"."""
    change = UserChange()
    for operation in operations_of(body):
        op, path, value = _op(operation)
        if path is None:
            if op == "remove" or not isinstance(value, dict):
                raise invalid("an operation without a path needs an object of attributes as its value", "noTarget")
            for name, item in value.items():
                _apply_user_attribute(change, op, str(name), item)
        else:
            _apply_user_attribute(change, op, path.removeprefix("urn:ietf:params:scim:schemas:core:2.0:User:"), value)
    return change


def _member_values(value: object) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_MEMBERS:
        raise invalid(f"at most {MAX_MEMBERS} members in one request", "tooMany")
    found = []
    for item in items:
        member = _get(item, "value") if isinstance(item, dict) else None
        if not isinstance(member, str) or not 1 <= len(member) <= 64:
            raise invalid('each member must be an object {"value": "<user id>"}')
        found.append(member)
    return found


def parse_group(body: Json) -> tuple[str, str | None, list[str]]:
    """displayName, externalId and member ids of a POST or PUT body."""
    name = _required_text(_get(body, "displayName"), "displayName", SCIM_NAME_MAX)
    members = _get(body, "members")
    return (
        name,
        _text(_get(body, "externalId"), "externalId", SCIM_EXTERNAL_ID_MAX),
        ([] if members is None else _member_values(members)),
    )


def parse_group_patch(body: Json) -> GroupChange:
    """A PATCH of a group: members added or removed (by list, or Okta's `members[value eq "id"]`),
    members replaced, displayName or externalId replaced; with or without a `path`."""
    change = GroupChange()
    for operation in operations_of(body):
        op, path, value = _op(operation)
        if path is None:
            if op == "remove" or not isinstance(value, dict):
                raise invalid("an operation without a path needs an object of attributes as its value", "noTarget")
            for name, item in value.items():
                _apply_group_attribute(change, op, str(name), item)
            continue
        single = _MEMBER_PATH.match(path)
        if single is not None:
            if op != "remove":
                raise invalid('members[value eq "..."] can only be removed', "invalidPath")
            change.remove.append(json.loads(f'"{single.group(1)}"'))
        else:
            _apply_group_attribute(change, op, path, value)
    return change


def _apply_group_attribute(change: GroupChange, op: str, name: str, value: Any) -> None:
    key = name.lower()
    if key == "members":
        if op == "remove":
            if value is None:
                change.replace, change.add = [], []
            else:
                change.remove += _member_values(value)
        elif op == "add":
            change.add += _member_values(value)
        else:
            change.replace, change.add = _member_values(value), []
    elif key == "displayname":
        if op == "remove":
            raise invalid("displayName cannot be removed", "mutability")
        change.display_name = _required_text(value, "displayName", SCIM_NAME_MAX)
    elif key == "externalid":
        change.external_id = None if op == "remove" else _text(value, "externalId", SCIM_EXTERNAL_ID_MAX)
    elif key not in ("id", "schemas", "meta"):
        raise invalid(f"{name[:64]!r} is not an attribute of a group", "invalidPath")
