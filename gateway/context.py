"""What every gateway operation works with, built once in the app lifespan (``app.state.gateway``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from common.secretbox import SecretBox
from common.settings import Settings
from common.storage import ObjectStore
from gateway.inference import InferenceClient
from gateway.trainers import TrainerClient


@dataclass
class Gateway:
    settings: Settings
    engine: Engine
    store: ObjectStore
    trainers: TrainerClient
    upload_secret: bytes
    inference: InferenceClient
    box: SecretBox  # seals the secret columns (finetunes.secrets)
    wake_validation: Callable[[], None] = field(default=lambda: None)

    @property
    def uses_s3(self) -> bool:
        return self.settings.object_base().startswith("s3://")
