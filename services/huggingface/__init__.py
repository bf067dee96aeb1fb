"""The HuggingFace (transformers + PEFT + TRL) trainer service."""

from common.components import Component, Kind

COMPONENT = Component("services.huggingface.app:app", 8081, Kind.trainer,
                      backend="services.huggingface.backend:HuggingFaceBackend", training_type="sft")
