"""The pure parts of SCIM provisioning: filters, pages, booleans and the PATCH shapes IdPs send."""

from __future__ import annotations

from typing import Any

import pytest

from zguard.errors import ScimError
from zguard.services.scim_requests import (
    as_bool,
    parse_filter,
    parse_group,
    parse_group_patch,
    parse_page,
    parse_user,
    parse_user_patch,
)
from zguard.store.scim import UNSET

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def ops(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH], "Operations": list(operations)}


class refused:  # lower case: used like pytest.raises
    """Expect a 400 ScimError with this `scimType`."""

    def __init__(self, scim_type: str) -> None:
        self.scim_type = scim_type

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: object, _tb: object) -> bool:
        assert isinstance(error, ScimError), f"expected a ScimError ({self.scim_type}), got {error!r}"
        assert error.scim_type == self.scim_type
        assert error.status == 400
        return True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('userName eq "dana@bank.example"', ("userName", "dana@bank.example")),
        ('USERNAME EQ "Dana"', ("userName", "Dana")),
        ('externalId eq "0a21f0f2"', ("externalId", "0a21f0f2")),
        (r'userName eq "quote\"inside"', ("userName", 'quote"inside')),
        (None, None),
    ],
)
def test_user_filters_that_are_understood(text: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_filter(text, "Users", 512) == expected


@pytest.mark.parametrize(
    "text",
    [
        'userName sw "d"',
        'userName eq "a" and active eq "true"',
        'emails[type eq "work"].value eq "x"',
        "userName eq dana",
        'displayName eq "x"',
        'userName eq "bad \\u00"',
        "",
        'userName eq "' + "x" * 600 + '"',
    ],
)
def test_other_user_filters_are_invalid_filter(text: str) -> None:
    with refused("invalidFilter"):
        parse_filter(text, "Users", 512)


def test_group_filters() -> None:
    assert parse_filter('displayName eq "zg-auditors"', "Groups", 512) == ("displayName", "zg-auditors")
    with refused("invalidFilter"):
        parse_filter('userName eq "x"', "Groups", 512)


@pytest.mark.parametrize(
    ("start", "count", "expected"),
    [(None, None, (1, 100)), ("0", "-5", (1, 0)), ("3", "5000", (3, 100)), ("2", "10", (2, 10))],
)
def test_pages_follow_rfc_7644(start: str | None, count: str | None, expected: tuple[int, int]) -> None:
    page = parse_page(start, count, 100)
    assert (page.start_index, page.count) == expected


def test_a_page_that_is_not_a_number_is_invalid() -> None:
    with refused("invalidValue"):
        parse_page("one", None, 100)


@pytest.mark.parametrize(
    ("value", "expected"), [(True, True), (False, False), ("False", False), ("True", True), (" true ", True)]
)
def test_booleans_include_the_strings_entra_sends(value: object, expected: bool) -> None:
    assert as_bool(value, "active") is expected


@pytest.mark.parametrize("value", ["yes", 0, 1, None, "", [False]])
def test_anything_else_is_not_a_boolean(value: object) -> None:
    with refused("invalidValue"):
        as_bool(value, "active")


def test_a_user_body_keeps_what_zguard_uses_and_ignores_the_rest() -> None:
    name, change = parse_user(
        {
            "userName": "dana",
            "externalId": "e1",
            "displayName": "Dana",
            "active": "False",
            "password": "x",
            "emails": [],
        }
    )
    assert name == "dana"
    assert (change.external_id, change.display_name, change.active) == ("e1", "Dana", False)
    _, bare = parse_user({"username": "erin"})  # attribute names are not case-sensitive
    assert bare.active is UNSET


@pytest.mark.parametrize("body", [{}, {"userName": ""}, {"userName": " dana"}, {"userName": 7}, {"userName": "a\tb"}])
def test_a_user_needs_a_clean_user_name(body: dict[str, Any]) -> None:
    with refused("invalidValue"):
        parse_user(body)


def test_entra_patches_with_paths() -> None:
    change = parse_user_patch(
        ops(
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "x@bank.example"},
            {"op": "Replace", "path": "active", "value": "False"},
            {"op": "Add", "path": "displayName", "value": "Dana"},
            {"op": "Remove", "path": "externalId"},
        )
    )
    assert (change.active, change.display_name, change.external_id, change.user_name) == (False, "Dana", None, UNSET)


def test_okta_patches_without_a_path() -> None:
    change = parse_user_patch(ops({"op": "replace", "value": {"active": False, "userName": "dana2"}}))
    assert (change.active, change.user_name) == (False, "dana2")


@pytest.mark.parametrize(
    ("body", "scim_type"),
    [
        ({"Operations": []}, "invalidSyntax"),
        ({"Operations": "replace"}, "invalidSyntax"),
        ({"Operations": [{"op": "move", "path": "active"}]}, "invalidSyntax"),
        ({"Operations": [1]}, "invalidSyntax"),
        ({"Operations": [{"op": "remove", "path": "userName"}]}, "mutability"),
        ({"Operations": [{"op": "replace", "value": False}]}, "noTarget"),
        ({"Operations": [{"op": "replace", "path": 7, "value": False}]}, "invalidPath"),
        ({"Operations": [{"op": "replace"}] * 101}, "invalidSyntax"),
    ],
)
def test_malformed_patches_are_refused(body: dict[str, Any], scim_type: str) -> None:
    with refused(scim_type):
        parse_user_patch(body)


def test_group_patches_in_both_idps_shapes() -> None:
    entra = parse_group_patch(
        ops(
            {"op": "Add", "path": "members", "value": [{"$ref": None, "value": "u1"}, {"value": "u2"}]},
            {"op": "Remove", "path": "members", "value": [{"value": "u3"}]},
            {"op": "Replace", "path": "displayName", "value": "zg-auditors"},
        )
    )
    assert (entra.add, entra.remove, entra.display_name, entra.replace) == (["u1", "u2"], ["u3"], "zg-auditors", None)
    okta = parse_group_patch(
        ops(
            {"op": "remove", "path": 'members[value eq "u4"]'},
            {"op": "replace", "value": {"id": "g1", "displayName": "zg-viewers"}},
        )
    )
    assert (okta.remove, okta.display_name) == (["u4"], "zg-viewers")
    everyone_out = parse_group_patch(ops({"op": "remove", "path": "members"}))
    assert everyone_out.replace == []
    replaced = parse_group_patch(ops({"op": "replace", "path": "members", "value": [{"value": "u5"}]}))
    assert replaced.replace == ["u5"]


@pytest.mark.parametrize(
    ("operation", "scim_type"),
    [
        ({"op": "add", "path": 'members[value eq "u1"]'}, "invalidPath"),
        ({"op": "add", "path": "owner", "value": "x"}, "invalidPath"),
        ({"op": "add", "path": "members", "value": [{"display": "no value"}]}, "invalidValue"),
        ({"op": "add", "path": "members", "value": [{"value": "u"}] * 1001}, "tooMany"),
        ({"op": "remove", "path": "displayName"}, "mutability"),
    ],
)
def test_malformed_group_patches_are_refused(operation: dict[str, Any], scim_type: str) -> None:
    with refused(scim_type):
        parse_group_patch(ops(operation))


def test_a_group_body() -> None:
    assert parse_group({"displayName": "g", "members": [{"value": "u1"}]}) == ("g", None, ["u1"])
    with refused("invalidValue"):
        parse_group({"members": []})
