"""The one list of components (pyproject's ``trainyard.components`` entry points) and what derives from it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common import components
from common.components import Kind
from common.schemas import FinetuneCreate, FinetuneHyperparameters, Provider, TrainingType, service_for
from common.settings import Settings, env_names
from common.trainer import BaseTrainerBackend, class_path, load_backend
from tests.utils.server import REPO


def test_every_entry_point_declares_a_component_with_its_own_port() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"][components.GROUP]
    found = components.components()
    assert set(found) == set(declared)
    assert len({c.port for c in found.values()}) == len(found)
    assert {c.kind for c in found.values()} == set(Kind)


def test_each_trainer_names_a_backend_that_matches_it() -> None:
    for trainer in components.of_kind(Kind.trainer):
        backend = load_backend(trainer.name)
        assert isinstance(backend, BaseTrainerBackend) and backend.name == trainer.name
        assert backend.training_type == trainer.training_type
        assert class_path(backend) == trainer.backend  # what a job spec carries
        assert type(load_backend(class_path(backend))) is type(backend)


def test_the_provider_enum_and_the_service_urls_derive_from_the_list() -> None:
    trainers = components.trainer_names()
    assert [p.value for p in Provider] == trainers
    services = {c.name: f"http://127.0.0.1:{c.port}" for c in components.of_kind(Kind.trainer, Kind.inference)}
    assert Settings().service_urls == services
    assert {f"TRAINYARD_SERVICE_URL_{name.upper()}" for name in services} <= env_names()


def test_service_urls_mapping_and_per_service_names(monkeypatch: pytest.MonkeyPatch) -> None:
    name, other = components.trainer_names()[:2]
    monkeypatch.setenv("TRAINYARD_SERVICE_URLS", f'{{"{name}": "http://a:1/", "{other}": "http://b:2"}}')
    monkeypatch.setenv(f"TRAINYARD_SERVICE_URL_{other.upper()}", "http://c:3")
    urls = Settings().service_urls
    assert urls[name] == "http://a:1" and urls[other] == "http://c:3"  # the per-service name wins
    assert set(components.default_service_urls()) <= set(urls)  # the rest keep their defaults


def test_a_finetune_runs_where_its_training_type_is_trained() -> None:
    by_type = {t: [c.name for c in components.of_kind(Kind.trainer) if c.training_type == t] for t in TrainingType}
    for provider in Provider:
        own = TrainingType(components.components()[provider.value].training_type)
        assert FinetuneCreate(name="x", provider=provider, model="m").training_type() == own
        assert service_for(provider, own) == provider.value
        for other in set(TrainingType) - {own}:
            if own == TrainingType.sft:
                assert service_for(provider, other) == by_type[other][0]
            else:  # a provider that trains only its own kind of data refuses another
                hp = FinetuneHyperparameters(training_type=other)
                try:
                    FinetuneCreate(name="x", provider=provider, model="m", hyperparameters=hp)
                except ValueError as e:
                    assert f"provider '{provider}'" in str(e)
                else:
                    raise AssertionError(f"{provider} accepted {other}")


def test_default_paths_lie_under_the_configured_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    assert Settings().storage_root == REPO / "var" / "objects"
    monkeypatch.setenv("TRAINYARD_HOME", str(tmp_path / "home"))
    s = Settings()
    assert s.home == tmp_path / "home"
    for path in (s.storage_root, s.log_dir, s.models_dir, s.inference_cache_dir, *s.model_dirs):
        assert path.is_relative_to(s.home / "var"), path
    assert s.database_url == f"sqlite:///{tmp_path / 'home' / 'var' / 'trainyard.db'}"
