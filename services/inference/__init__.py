"""Inference service: OpenAI-compatible chat and completions, the playground, and adapter export."""

from common.components import Component, Kind

COMPONENT = Component("services.inference.app:app", 8084, Kind.inference)
