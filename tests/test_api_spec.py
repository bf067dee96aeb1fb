"""docs/API_SPEC.md is generated from the live OpenAPI of the gateway, the internal gateway and
a trainer service (docs/build_api_spec.py), so the documented contract cannot drift from the code."""

from __future__ import annotations

import importlib.util

from tests.utils.server import REPO


def test_api_spec_matches_the_live_openapi() -> None:
    spec = importlib.util.spec_from_file_location("build_api_spec", REPO / "docs" / "build_api_spec.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.OUT.read_text() == module.render(), (
        "docs/API_SPEC.md is stale: run .venv/bin/python docs/build_api_spec.py"
    )
