"""One exception tree: every class drawn in zguard.errors' docstring, a code and a fix on each."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest

import zguard
from zguard import errors
from zguard.cli.docs import ERROR_MODULES

# Importing these loads torch or diffusers at module level; no error class lives in them.
HEAVY = ("zguard.engine.pipeline", "zguard.engine.demo", "zguard.provenance.embedder", "zguard.store.migrations")


def _every_module() -> None:
    for info in pkgutil.walk_packages(zguard.__path__, "zguard."):
        if not info.name.startswith(HEAVY) and not info.name.endswith("__main__"):
            importlib.import_module(info.name)


def _drawn() -> set[str]:
    doc = errors.__doc__ or ""
    return set(re.findall(r"[├└]── ([A-Z][A-Za-z]+)", doc)) - {"HTTP"}


def test_the_drawing_names_every_error_class_and_no_other() -> None:
    _every_module()
    classes = {cls.__name__ for cls in errors.error_classes()}
    assert classes - _drawn() == set(), "draw these in zguard.errors' docstring"
    assert _drawn() - classes == set(), "the drawing names classes that do not exist"


def test_error_modules_lists_every_module_outside_errors_that_defines_one() -> None:
    _every_module()
    defining = {cls.__module__ for cls in errors.error_classes()} - {"zguard.errors"}
    assert defining == set(ERROR_MODULES)


def test_codes_are_unique() -> None:
    _every_module()
    codes = [cls.code for cls in errors.error_classes()]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)


def test_every_raised_class_carries_a_fix() -> None:
    _every_module()
    bases = {errors.OperatorError}
    missing = [cls.__name__ for cls in errors.error_classes() if cls not in bases and not cls.fix]
    assert missing == []


def test_operator_errors_exit_with_a_code_of_the_table() -> None:
    _every_module()
    table = {errors.EXIT_NO, errors.EXIT_FIX, errors.EXIT_UNAVAILABLE}
    for cls in errors.error_classes():
        if issubclass(cls, errors.OperatorError):
            assert cls.exit_code in table, cls


@pytest.mark.parametrize(("code", "words"), [("server_busy", "generation.max_queue"), ("model_not_ready", "/readyz")])
def test_fix_for_reads_the_class(code: str, words: str) -> None:
    fix = errors.fix_for(code)
    assert fix is not None
    assert words in fix
    assert errors.fix_for("no_such_code") is None


def test_an_instance_may_say_more_than_its_class() -> None:
    plain, specific = errors.InvalidValue("bad"), errors.InvalidValue("bad", fix="x")
    assert plain.fix == errors.InvalidValue.fix == errors.RequestError.fix
    assert specific.fix == "x"
