"""Published documents stay true to the code: OpenAPI, settings reference, error codes, README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.common.engines import GatedEngine
from tests.common.factories import api_client, make_settings, ready_runtime
from zguard import errors
from zguard.app.contract import declared_codes
from zguard.cli.docs import render_errors_reference, render_openapi, render_settings_reference
from zguard.config.loader import iter_settings_fields

REPO = Path(__file__).resolve().parents[2]


def test_openapi_json_matches_code() -> None:
    assert (REPO / "docs" / "openapi.json").read_text(encoding="utf-8") == render_openapi(), "run `make docs`"


def test_console_openapi_json_matches_code_and_leaves_the_pages_out() -> None:
    document = (REPO / "docs" / "console-openapi.json").read_text(encoding="utf-8")
    assert document == render_openapi("console"), "run `make docs`"
    paths = json.loads(document)["paths"]
    assert {"/console/api/session", "/console/api/sessions", "/console/api/logout"} <= set(paths)
    assert not {"/login", "/logout", "/", "/account"} & set(paths)  # pages are for people, not clients


def test_openapi_documents_the_request_and_its_errors() -> None:
    spec = json.loads(render_openapi())
    op = spec["paths"]["/v1/images/generations"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["prompt"]
    assert schema["additionalProperties"] is False
    for field in (
        "prompt",
        "n",
        "size",
        "response_format",
        "output_format",
        "seed",
        "num_inference_steps",
        "negative_prompt",
    ):
        assert field in schema["properties"]
    assert {"400", "413", "415", "503", "504"} <= set(op["responses"])
    assert {"/v1/models", "/healthz", "/readyz"} <= set(spec["paths"])


def test_settings_reference_matches_code() -> None:
    assert (REPO / "docs" / "settings.md").read_text(encoding="utf-8") == render_settings_reference(), "run `make docs`"


def test_settings_reference_shows_secret_defaults_as_they_are() -> None:
    # a default is no secret; docs/settings.md showed rate_limits.storage as "**********"
    reference = render_settings_reference()
    assert '| `rate_limits.storage` | `"memory://"` |' in reference
    assert "*****" not in reference


def test_errors_reference_matches_code() -> None:
    assert (REPO / "docs" / "errors.md").read_text(encoding="utf-8") == render_errors_reference(), "run `make docs`"


def test_every_setting_has_help_text() -> None:
    for key, _default, help_text in iter_settings_fields():
        assert help_text, f"setting {key} has no description"


def _codes() -> set[str]:
    return {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ZguardError) and cls.__module__ == errors.__name__
    } - {"invalid_request", "service_unavailable", "invalid_config", "authentication_failed", "too_many_requests"}


def test_readme_documents_every_error_code() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = sorted(code for code in _codes() if f"`{code}`" not in readme)
    assert not missing, f"README lacks error codes: {missing}"


def test_readme_links_settings_reference_and_shows_both_commands() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/settings.md" in readme
    assert "make serve" in readme
    assert "make test" in readme


@pytest.mark.anyio
@pytest.mark.parametrize("enabled", [False, True])
async def test_interactive_docs_only_when_enabled(tmp_path: Path, enabled: bool) -> None:
    settings = make_settings(tmp_path, api={"docs_enabled": enabled})
    runtime = ready_runtime(settings, GatedEngine())
    async with api_client(settings, runtime) as client:
        statuses = [(await client.get(path)).status_code for path in ("/docs", "/redoc", "/openapi.json")]
    runtime.worker.stop(timeout=5)
    assert statuses == ([200, 200, 200] if enabled else [404, 404, 404])


def test_readme_commands_name_every_subcommand() -> None:
    # the Commands list lacked `model pin|verify`, `trace`, `provenance verify|public-key`
    import argparse

    from zguard.cli.main import COMMANDS, build_parser

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Commands", 1)[1].split("```", 2)[1]

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        return dict(found[0].choices) if found else {}

    missing = []
    for name in COMMANDS:
        group = subcommands(build_parser([name]))[name]
        text = " ".join(line for line in block.splitlines() if line.startswith(f"zguard {name}"))
        if not text or any(sub not in text for sub in subcommands(group)):
            missing.append(name)
    assert not missing, f"README's Commands list lacks: {missing}"


def test_readme_request_fields_are_the_documents() -> None:
    """README's request-field table names exactly the fields of `docs/openapi.json`'s request."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("Request fields (", 1)[1].split("\n\n", 2)[1]
    listed = {name.strip(" `") for row in table.splitlines()[2:] for name in row.split("|")[1].split(",")}
    document = json.loads((REPO / "docs" / "openapi.json").read_text(encoding="utf-8"))
    schema = document["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]["application/json"]
    assert listed == set(schema["schema"]["properties"])


def test_readme_lists_every_code_the_document_declares() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    document = json.loads((REPO / "docs" / "openapi.json").read_text(encoding="utf-8"))
    declared = {
        code
        for item in document["paths"].values()
        for operation in item.values()
        for codes in declared_codes(operation).values()
        for code in codes
    }
    assert declared
    assert not {code for code in declared if f"`{code}`" not in readme}
