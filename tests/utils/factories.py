"""Request factories: the smallest valid payloads, overridable per test."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def random_job_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def training_request(model: str, train_uri: str, *, validation_uri: str | None = None, **tuning: Any) -> dict:
    datasets = [{"source": train_uri}]
    if validation_uri:
        datasets.append({"source": validation_uri, "split": "validation"})
    return {
        "job_id": random_job_id(),
        "base_model": {"model_name": model},
        "customization": {"method": "lora", "rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "precision": "fp32"},
        "datasets": datasets,
        "tuning_parameters": {
            "learning_rate": 3e-3, "batch_size": 8, "max_steps": 30, "logging_steps": 5,
            "max_sequence_length": 128, **tuning,
        },
    }


def place_samples(root: Path) -> dict[str, str]:
    """The shipped SFT/DPO samples copied under a file:// root, as a user would upload them;
    returns their URIs keyed '<kind>_<split>'."""
    uris = {}
    for kind in ("sft", "dpo"):
        for split in ("train", "validation"):
            dest = root / "datasets" / kind / f"{split}.jsonl"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(EXAMPLES / kind / f"{split}.jsonl", dest)
            uris[f"{kind}_{split}"] = dest.as_uri()
    return uris
