"""The gateway's hyperparameters are the training request's fields: the same bounds, their defaults
documented from the training schema, and each one landing on its field of ``POST /train``."""

from __future__ import annotations

import ast

import pytest
from pydantic import ValidationError

from common.schemas import Customization, FinetuneHyperparameters, TrainingRequest, TuningParameters
from tests.utils.server import REPO

# What each hyperparameter is called in the training request (written out here, on purpose, to check
# the schema's own derivation of it).
LANDS = {
    "epochs": ("tuning_parameters", "num_epochs"),
    "lora_r": ("customization", "rank"),
    **{n: ("tuning_parameters", n) for n in (
        "max_steps", "learning_rate", "batch_size", "per_device_batch_size", "warmup_ratio", "weight_decay",
        "lr_scheduler_type", "gradient_checkpointing", "max_sequence_length", "logging_steps", "eval_steps",
        "save_steps", "validation_split", "assistant_only_loss", "seed", "beta", "loss_type", "max_prompt_length",
    )},
    **{n: ("customization", n) for n in (
        "method", "lora_alpha", "lora_dropout", "target_modules", "trainable_layers", "precision",
    )},
}
PARTS = {"tuning_parameters": TuningParameters, "customization": Customization}

# One value per hyperparameter, none of them the trainer's default.
VALUES = {
    "epochs": 2.0, "max_steps": 7, "learning_rate": 0.001, "batch_size": 4, "per_device_batch_size": 2,
    "warmup_ratio": 0.1, "weight_decay": 0.01, "lr_scheduler_type": "cosine", "gradient_checkpointing": True,
    "max_sequence_length": 512, "logging_steps": 1, "eval_steps": 3, "save_steps": 4, "validation_split": 0.2,
    "assistant_only_loss": False, "seed": 7, "beta": 0.2, "loss_type": "ipo", "max_prompt_length": 64,
    "method": "qlora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
    "trainable_layers": ["layers.0"], "precision": "fp32",
}


def to_request(hp: FinetuneHyperparameters) -> TrainingRequest:
    return hp.to_training_request(
        job_id="job-1", model="org/model", train_uri="file:///d/train.jsonl", validation_uri=None,
        output_uri="file:///o/job-1", log_uri="file:///l/job-1", labels={},
    )


def test_every_hyperparameter_but_training_type_is_a_training_field() -> None:
    assert set(FinetuneHyperparameters.model_fields) - set(LANDS) == {"training_type"}
    assert set(VALUES) == set(LANDS)


@pytest.mark.parametrize("name", sorted(LANDS))
def test_a_hyperparameter_takes_the_type_and_bounds_of_its_training_field(name: str) -> None:
    part, field = LANDS[name]
    source = PARTS[part].model_fields[field]
    mine = FinetuneHyperparameters.model_fields[name]
    assert mine.annotation == source.annotation | None
    assert [m for m in mine.metadata if m in source.metadata] == source.metadata
    assert mine.default is None  # unset: the trainer's default applies
    if source.default is not None:  # documented where users read it (/docs, docs/API_SPEC.md)
        assert mine.description and mine.description.endswith("].")


@pytest.mark.parametrize("name", sorted(LANDS))
def test_each_hyperparameter_lands_on_its_training_field(name: str) -> None:
    part, field = LANDS[name]
    given = to_request(FinetuneHyperparameters.model_validate({name: VALUES[name]}))
    assert getattr(getattr(given, part), field) == VALUES[name]
    assert getattr(getattr(given, part), field) != getattr(PARTS[part](), field)
    untouched = to_request(FinetuneHyperparameters())
    assert given.model_dump(exclude={part}) == untouched.model_dump(exclude={part})


def test_all_hyperparameters_at_once_and_the_rank_alias() -> None:
    request = to_request(FinetuneHyperparameters.model_validate(VALUES))
    for name, (part, field) in LANDS.items():
        assert getattr(getattr(request, part), field) == VALUES[name], name
    assert to_request(FinetuneHyperparameters.model_validate({"rank": 4})).customization.rank == 4


def test_values_the_trainer_refuses_are_refused_at_the_gateway() -> None:
    for name, bad in {"learning_rate": 1, "lora_dropout": 1.0, "validation_split": 0.5, "max_sequence_length": 4,
                      "loss_type": "nope", "seed": -1}.items():
        with pytest.raises(ValidationError):
            FinetuneHyperparameters.model_validate({name: bad})
        part, field = LANDS[name]
        with pytest.raises(ValidationError):
            PARTS[part].model_validate({field: bad})


def test_each_schema_module_imports_only_the_contracts_below_it() -> None:
    order = ["base", "training", "jobs", "validation", "gateway", "models", "inference"]
    package = REPO / "common" / "schemas"
    assert sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__") == sorted(order)
    for i, name in enumerate(order):
        tree = ast.parse((package / f"{name}.py").read_text())
        used = {n.module.split(".")[2] for n in ast.walk(tree)
                if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("common.schemas.")}
        assert used <= set(order[:i]), f"common/schemas/{name}.py imports {used - set(order[:i])}"
