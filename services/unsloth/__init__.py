"""Unsloth trainer service: LoRA/QLoRA/full SFT on Unsloth's FastLanguageModel, in its own environment."""

from common.components import Component, Kind

COMPONENT = Component("services.unsloth.app:app", 8082, Kind.trainer,
                      backend="services.unsloth.backend:UnslothBackend", training_type="sft")
