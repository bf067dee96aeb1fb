"""Inference service: OpenAI-compatible chat and completions, the playground, and adapter export."""
