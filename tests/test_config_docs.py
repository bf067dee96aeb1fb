"""docs/configuration.md is generated from the Settings class (docs/build_config_docs.py), so every
documented setting is one that works; the docs name no TRAINYARD_ variable that nothing reads."""

from __future__ import annotations

import importlib.util
import re

from tests.utils.server import REPO


def _builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_config_docs", REPO / "docs" / "build_config_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_doc_matches_the_settings_class() -> None:
    module = _builder()
    assert module.OUT.read_text() == module.render(), (
        "docs/configuration.md is stale: run .venv/bin/python docs/build_config_docs.py"
    )


def test_docs_name_only_settings_that_exist() -> None:
    from common.jobsecrets import FILE_ENV
    from common.settings import SERVICE_URL_ENV, env_names

    known = env_names() | {
        "TRAINYARD_<FIELD>", "TRAINYARD_SERVICE_URL_<NAME>",
        FILE_ENV, "TRAINYARD_PROGRESS_URL",  # what a runner sets for a training job, not settings
        "TRAINYARD_URL", "TRAINYARD_KEY", "TRAINYARD_MODEL",  # examples/quickstart.sh's own
    }
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "k8s").rglob("*.md")),
            REPO / "postman" / "README.md"]
    unknown = {}
    for path in docs:
        if not path.exists():
            continue
        names = {n.rstrip("_") for n in re.findall(r"TRAINYARD_[A-Z0-9_]*(?:<[A-Z]+>)?", path.read_text())}
        # a prefix written before a list of suffixes ("TRAINYARD_SERVICE_URL_HUGGINGFACE / _DPO") is fine
        names = {n for n in names if n not in known and not any(k.startswith(n) for k in known)
                 and not n.startswith(SERVICE_URL_ENV)}  # read for any service name
        if names:
            unknown[path.name] = sorted(names)
    assert unknown == {}, f"documented settings that nothing reads: {unknown}"
