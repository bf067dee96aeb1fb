"""DPO trainer service: preference tuning with TRL's DPOTrainer (LoRA by default)."""

from common.components import Component, Kind

COMPONENT = Component("services.dpo.app:app", 8083, Kind.trainer,
                      backend="services.dpo.backend:DPOBackend", training_type="dpo")
