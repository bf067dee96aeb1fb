"""common/train/recipe.py: the arguments SFT and DPO share are the request's, each written once.

Every field is computed here from the request by hand, so a change in the shared mapping that
alters what a job trains with (and so its losses) shows up as a difference."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from common.schemas import TrainingRequest
from common.train.dpo import to_dpo_config
from common.train.recipe import batch_sizes, training_args
from common.train.sft import to_sft_config
from tests.utils.factories import training_request

REQUESTS = {
    "defaults": training_request("org/m", "file:///t.jsonl"),
    "tuned": training_request(
        "org/m", "file:///t.jsonl", batch_size=32, per_device_batch_size=4, eval_steps=10, save_steps=20,
        warmup_ratio=0.1, gradient_checkpointing=True, lr_scheduler_type="cosine", weight_decay=0.01, seed=7,
        num_epochs=3, max_steps=None, learning_rate=1e-4, logging_steps=2,
    ),
    "dpo": training_request(
        "org/m", "file:///t.jsonl", beta=0.2, max_prompt_length=64, loss_type="ipo", batch_size=3,
    ),
}


def expected_shared(tp: Any, out: Path, has_eval: bool) -> dict[str, Any]:
    per_device = tp.per_device_batch_size or min(tp.batch_size, 8)
    return {
        "output_dir": str(out),
        "learning_rate": tp.learning_rate,
        "num_train_epochs": tp.num_epochs,
        "max_steps": tp.max_steps or -1,
        "per_device_train_batch_size": per_device,
        "per_device_eval_batch_size": per_device,
        "gradient_accumulation_steps": max(1, math.ceil(tp.batch_size / per_device)),
        "warmup_steps": tp.warmup_ratio,
        "lr_scheduler_type": tp.lr_scheduler_type,
        "weight_decay": tp.weight_decay,
        "logging_steps": tp.logging_steps,
        "eval_strategy": "no" if not has_eval else "steps" if tp.eval_steps else "epoch",
        "eval_steps": tp.eval_steps,
        "save_strategy": "steps" if tp.save_steps else "no",
        "save_steps": tp.save_steps or 500,
        "bf16": False,  # fp32 requested (and no GPU here)
        "fp16": False,
        "seed": tp.seed,
        "report_to": [],
        "disable_tqdm": True,
    }


def checkpointing(config: dict[str, Any]) -> bool:
    return bool(config.get("activation_checkpointing", config.get("gradient_checkpointing")))


@pytest.mark.parametrize("has_eval", [True, False])
@pytest.mark.parametrize("name", list(REQUESTS))
def test_sft_and_dpo_configs_carry_the_request(tmp_path: Path, name: str, has_eval: bool) -> None:
    request = TrainingRequest.model_validate(REQUESTS[name])
    tp = request.tuning_parameters
    sft = to_sft_config(request, tmp_path, dataset_format="text", has_eval=has_eval).to_dict()
    dpo = to_dpo_config(request, tmp_path, has_eval=has_eval).to_dict()
    shared = expected_shared(tp, tmp_path, has_eval)
    for config in (sft, dpo):
        assert {k: config[k] for k in shared} == shared
        assert config["lr_scheduler_type"] == tp.lr_scheduler_type
        assert checkpointing(config) == tp.gradient_checkpointing
    assert sft["max_length"] == tp.max_sequence_length and sft["assistant_only_loss"] is False
    assert dpo["beta"] == tp.beta and dpo["loss_type"] == [tp.loss_type]
    assert dpo["max_length"] == (None if tp.max_prompt_length else tp.max_sequence_length)


def test_the_shared_arguments_are_equal_in_both_configs(tmp_path: Path) -> None:
    request = TrainingRequest.model_validate(REQUESTS["tuned"])
    sft = to_sft_config(request, tmp_path, dataset_format="text").to_dict()
    dpo = to_dpo_config(request, tmp_path).to_dict()
    for key in training_args(request, tmp_path, has_eval=True):
        assert sft[key] == dpo[key], key


@pytest.mark.parametrize(("batch", "per_device", "expected"), [(8, None, (8, 1)), (32, 4, (4, 8)), (20, None, (8, 3))])
def test_batch_sizes_reach_the_requested_batch(batch: int, per_device: int | None, expected: tuple[int, int]) -> None:
    request = TrainingRequest.model_validate(
        training_request("org/m", "file:///t.jsonl", batch_size=batch, per_device_batch_size=per_device)
    )
    assert batch_sizes(request) == expected
