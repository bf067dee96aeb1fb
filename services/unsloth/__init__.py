"""Unsloth trainer service: LoRA/QLoRA/full SFT on Unsloth's FastLanguageModel, in its own environment."""
