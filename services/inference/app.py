"""Inference service: transformers + PEFT in a worker process, OpenAI-compatible routes in front."""

from services.inference.server import create_inference_app

app = create_inference_app()
