"""The training program finds catalog models: ids resolve to the catalog's files, a saved adapter
records the catalog id (so it loads again against the same base), and an adapter chain ending in a
catalog id follows it. Real tiny-model training through ``python -m common.train``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.catalog import TINY_MODEL_ID
from common.errors import Unprocessable
from common.schemas import TrainingRequest
from common.settings import get_settings
from common.train.models import GGUF_QLORA_REFUSAL, ModelLoadError, resolve_model
from services.huggingface.backend import HuggingFaceBackend
from tests.train.test_program import Job


@pytest.fixture
def catalog_env(monkeypatch: pytest.MonkeyPatch, tiny_model: Path, tmp_path: Path) -> Iterator[Path]:
    """Settings whose models_dir holds the tiny model, plus an operator GGUF entry and a missing one."""
    gguf_dir = tmp_path / "gguf"
    gguf_dir.mkdir()
    (gguf_dir / "m.Q4_0.gguf").write_bytes(b"GGUF")
    monkeypatch.setenv("TRAINYARD_MODELS_DIR", str(tiny_model.parent))
    monkeypatch.setenv("TRAINYARD_MODEL_CATALOG", json.dumps({
        "acme/gguf": {"path": str(gguf_dir), "gguf_file": "m.Q4_0.gguf"},
        "acme/missing": {"path": str(tmp_path / "nowhere")},
    }))
    get_settings.cache_clear()
    yield gguf_dir
    get_settings.cache_clear()


def request(model: str, method: str = "lora") -> TrainingRequest:
    return TrainingRequest.model_validate({
        "base_model": {"model_name": model}, "customization": {"method": method},
        "datasets": [{"source": "file:///x/train.jsonl", "split": "train"}],
    })


def test_catalog_ids_resolve_to_the_catalogs_files(catalog_env: Path, tiny_model: Path, tmp_path: Path) -> None:
    tiny = resolve_model(request(TINY_MODEL_ID), tmp_path)
    assert (tiny.name_or_path, tiny.gguf_file, tiny.reference) == (str(tiny_model), None, TINY_MODEL_ID)
    gguf = resolve_model(request("acme/gguf"), tmp_path)
    assert (gguf.name_or_path, gguf.gguf_file) == (str(catalog_env), "m.Q4_0.gguf")
    assert gguf.pretrained_kwargs(gguf.name_or_path) == {"gguf_file": "m.Q4_0.gguf"}
    with pytest.raises(ModelLoadError, match="acme/missing: its files are not at"):
        resolve_model(request("acme/missing"), tmp_path)


def test_an_adapter_whose_base_is_a_catalog_id_loads_that_base(catalog_env: Path, tiny_model: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": TINY_MODEL_ID}))
    source = resolve_model(request(str(adapter)), tmp_path)
    assert (source.name_or_path, source.adapter_dirs, source.reference) == (str(tiny_model), (adapter,), str(adapter))


def test_qlora_on_a_gguf_base_is_refused_at_request_time(catalog_env: Path) -> None:
    problems = HuggingFaceBackend().check(request("acme/gguf", "qlora"), runner="local")
    assert GGUF_QLORA_REFUSAL.format(model="acme/gguf") in problems
    with pytest.raises(Unprocessable):
        HuggingFaceBackend().validate(request("acme/gguf", "qlora"), runner="local")
    assert not any("GGUF" in p for p in HuggingFaceBackend().check(request(TINY_MODEL_ID, "qlora"), runner="local"))


def test_a_job_on_a_catalog_id_trains_and_its_adapter_names_the_id(tmp_path: Path, tiny_model: Path) -> None:
    job = Job(tmp_path / "objects", TINY_MODEL_ID)
    req = job.request(max_steps=4)
    # The job runs in the repository with default settings: the catalog's models_dir is its var/models.
    first = job.run(req)
    assert first.returncode == 0, first.stderr
    config = json.loads((job.output() / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == TINY_MODEL_ID
    # ... and the adapter is a valid base for the next job (the chain resolves through the catalog).
    follow = job.request(max_steps=2)
    follow["base_model"] = {"model_name": job.uri("outputs", "job")}
    second = job.run(follow, name="second")
    assert second.returncode == 0, second.stderr
    assert json.loads((job.output("second") / "adapter_config.json").read_text())["base_model_name_or_path"] == job.uri("outputs", "job")
